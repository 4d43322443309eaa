"""Converting a published dataset: read its split, attach its features, write it.

``prepare_dataset`` is what ``python -m dataset_prep NAME`` runs for every
dataset except the embedded default (see ``ml100k``).
"""

import re
from pathlib import Path
from typing import Dict, Iterable, Optional

from dataset_prep.atomic import write_dataset
from dataset_prep.errors import DatasetPrepError
from dataset_prep.features import FeatureSpec, load_feature, locate_spec
from dataset_prep.known import KNOWN_DATASETS
from dataset_prep.layouts import LAYOUTS, read_layout, require_dir
from dataset_prep.properties import DEFAULT_PROPERTIES_DIR, modalities_entry, render_dataset_yaml, yaml_path

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str) -> None:
    # The name becomes a directory and file-name prefix, and RecBole's dataset.
    if not NAME_PATTERN.fullmatch(name):
        raise DatasetPrepError(
            f"dataset name {name!r}: use letters, digits, '.', '_' and '-' only "
            f"(starting with a letter or digit)"
        )


def resolve_layout(name: str, layout: Optional[str]) -> str:
    """The given layout, else the known dataset's, else an error saying what to pass."""
    if layout is None:
        if name not in KNOWN_DATASETS:
            raise DatasetPrepError(
                f"dataset {name!r} is not a known dataset ({', '.join(KNOWN_DATASETS)}); "
                f"pass --layout {'|'.join(LAYOUTS)} to say how its files are laid out"
            )
        layout = KNOWN_DATASETS[name].layout
    if layout not in LAYOUTS:
        raise DatasetPrepError(f"--layout {layout}: unknown layout; choose one of {', '.join(LAYOUTS)}")
    return layout


def resolve_features(name: str, src_dir: Path, features: Iterable[FeatureSpec]) -> Dict[str, FeatureSpec]:
    """A known dataset's default features, each replaced or joined by the given ones.

    Paths come back absolute: a relative given path is found in ``src_dir``
    first, then in the working directory (:func:`~dataset_prep.features.locate_spec`).
    """
    specs: Dict[str, FeatureSpec] = {}
    if name in KNOWN_DATASETS:
        for modality, file_name in KNOWN_DATASETS[name].features.items():
            specs[modality] = FeatureSpec(modality, Path(src_dir).absolute() / file_name)
    given = set()
    for spec in features:
        if spec.modality in given:
            raise DatasetPrepError(
                f"--feature {spec.modality}={spec.path}: modality {spec.modality!r} is given "
                f"twice; pass each modality once"
            )
        given.add(spec.modality)
        specs[spec.modality] = spec
    return {modality: locate_spec(spec, src_dir) for modality, spec in specs.items()}


def prepare_dataset(name: str, src_dir, out_dir, layout: Optional[str] = None,
                    features: Iterable[FeatureSpec] = (), properties_dir=DEFAULT_PROPERTIES_DIR,
                    allow_partial_features: bool = False) -> Path:
    """Convert a published dataset into ``out_dir/name/`` and write its YAML.

    Args:
        name: the dataset name; a key of ``KNOWN_DATASETS`` or any other name
            given ``layout``.
        src_dir: the folder holding the published files.
        out_dir: where ``name/`` is written (RecBole's ``data_path``).
        layout: ``mmrec``, ``mmssl`` or ``diffmm``; defaults to the known one.
        features: feature files to add, or to replace a known default's.
        properties_dir: the YAML goes to ``properties_dir/dataset/NAME.yaml``;
            ``None`` writes no YAML.
        allow_partial_features: accept a modality covering fewer than
            ``MIN_COVERAGE`` of the items, or a row-ordered matrix with rows
            for items no split uses (see ``dataset_prep.features``); the YAML
            then sets ``allow_partial_features: True`` where loading needs it.

    Returns:
        The dataset directory ``out_dir/name``.
    """
    check_name(name)
    layout = resolve_layout(name, layout)
    src_dir = require_dir(src_dir)
    specs = resolve_features(name, src_dir, features)
    interactions = read_layout(layout, src_dir, name)
    loaded = [load_feature(spec, interactions, allow_partial_features) for spec in specs.values()]

    out_dir = Path(out_dir).resolve()
    yaml_file = yaml_text = None
    if properties_dir is not None:
        yaml_file = yaml_path(properties_dir, name)
        yaml_text = render_dataset_yaml(name, out_dir, modalities_entry(loaded),
                                        allow_partial_features=any(f.below_coverage for f in loaded))
    return write_dataset(out_dir, name, interactions, loaded, yaml_file, yaml_text)
