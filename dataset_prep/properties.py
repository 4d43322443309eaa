"""The RecBole dataset YAML written beside each converted dataset.

It points RecBole at the benchmark files (``NAME.train/valid/test.inter``),
turns off everything that would drop rows from them, and lists the item
feature matrices under ``modalities`` for the plugin's data layer.
"""

from pathlib import Path
from typing import Dict, Iterable, Optional

import yaml

from dataset_prep.features import Feature

DEFAULT_PROPERTIES_DIR = Path(__file__).resolve().parents[1] / "properties"

SPLIT_SETTINGS = """\
benchmark_filename: [train, valid, test]
USER_ID_FIELD: user_id
ITEM_ID_FIELD: item_id
load_col:
  inter: [user_id, item_id]
# With benchmark_filename RecBole keeps each file's row count from load time:
# anything that drops rows would silently shift the split, so all of it stays off.
rm_dup_inter: ~
val_interval: ~
filter_inter_by_user_or_item: False
user_inter_num_interval: "[0,inf)"
item_inter_num_interval: "[0,inf)"
"""


def yaml_path(properties_dir, name: str) -> Path:
    """Where the YAML of dataset ``name`` goes: ``<properties_dir>/dataset/NAME.yaml``."""
    return Path(properties_dir) / "dataset" / f"{name}.yaml"


def generated_header(name: str) -> str:
    return f"# Written by python -m dataset_prep {name}; rerun it to regenerate.\n"


def modalities_entry(features: Iterable[Feature]) -> Dict[str, dict]:
    """``modality -> {file, keys?}``, paths relative to ``data_path/NAME/``."""
    entry = {}
    for feature in features:
        entry[feature.modality] = {"file": feature.file_name}
        if feature.keys_name is not None:
            entry[feature.modality]["keys"] = feature.keys_name
    return entry


def _dump(mapping: dict, flow_leaves: bool = False) -> str:
    # Flow style for the innermost mappings keeps one modality per line; an
    # unbounded width stops long paths being folded over two lines.
    return yaml.safe_dump(mapping, default_flow_style=None if flow_leaves else False,
                          sort_keys=False, width=float("inf"))


def render_dataset_yaml(name: str, data_path: Optional[Path], modalities: Dict[str, dict],
                        header: Optional[str] = None, allow_partial_features: bool = False) -> str:
    """The YAML text for dataset ``name``.

    Args:
        name: the dataset name (RecBole's ``dataset``).
        data_path: the folder holding ``NAME/``; ``None`` leaves ``data_path``
            out, for a caller that sets it at run time.
        modalities: ``modality -> {file, keys?}``, see :func:`modalities_entry`.
        header: leading comment lines; by default the "rerun to regenerate" line.
        allow_partial_features: write ``allow_partial_features: True``, for a
            modality that covers fewer items than the data layer accepts by default.
    """
    text = generated_header(name) if header is None else header
    if data_path is not None:
        text += _dump({"data_path": str(data_path)}).rstrip("\n")
        text += f"  # RecBole reads data_path/{name}/\n"
    text += SPLIT_SETTINGS
    text += f"# Item feature matrices, paths relative to data_path/{name}/. With a keys\n"
    text += "# file, its line i is the raw item token of row i; without one, row i is item i.\n"
    text += _dump({"modalities": modalities}, flow_leaves=True)
    if allow_partial_features:
        text += "# Converted with --allow-partial-features: a modality's keys cover under half the items.\n"
        text += "allow_partial_features: True\n"
    return text
