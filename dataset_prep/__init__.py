"""Convert published multimodal-recommendation datasets into RecBole atomic files.

``python -m dataset_prep NAME --src DIR --out DIR`` reads a dataset in the
layout it is published in (``layouts``), copies its item feature matrices
(``features``), writes ``OUT/NAME/NAME.{train,valid,test}.inter`` keeping the
published split exactly, all atomically (``atomic``), and writes the RecBole
dataset YAML (``properties``). ``ml100k`` builds the embedded default dataset
from the ml-100k copy inside the recbole package.
"""

from dataset_prep.convert import prepare_dataset
from dataset_prep.errors import DatasetPrepError
from dataset_prep.features import Feature, FeatureSpec, parse_feature_arg
from dataset_prep.known import KNOWN_DATASETS, KnownDataset
from dataset_prep.layouts import LAYOUTS, SPLITS, SplitInteractions, read_layout
from dataset_prep.ml100k import ML100K_MM, build_ml100k_mm, bundled_ml100k_dir
from dataset_prep.properties import DEFAULT_PROPERTIES_DIR, render_dataset_yaml

__all__ = [
    "DEFAULT_PROPERTIES_DIR",
    "DatasetPrepError",
    "Feature",
    "FeatureSpec",
    "KNOWN_DATASETS",
    "KnownDataset",
    "LAYOUTS",
    "ML100K_MM",
    "SPLITS",
    "SplitInteractions",
    "build_ml100k_mm",
    "bundled_ml100k_dir",
    "parse_feature_arg",
    "prepare_dataset",
    "read_layout",
    "render_dataset_yaml",
]
