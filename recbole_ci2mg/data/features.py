"""Reading item feature matrices and aligning their rows to the dataset's items.

A modality is declared in the config as ``name: {file: F}`` (rows in raw item
order: row ``i`` belongs to raw item token ``"i"``) or ``name: {file: F, keys:
K}`` (``K`` is a text file, one raw item token per line, line ``i`` naming the
item of row ``i``). Paths are relative to the dataset folder unless absolute.
With a keys file, an item the file has no row for is *really* missing that
modality; that is the incompleteness this project exists for, so it is
recorded in the observed mask. Rows that name no item and items without a row
are logged as a warning with their counts, and a keys file covering fewer
than ``MIN_COVERAGE`` of the items (the mark of a keys file of another release
or id space) is refused unless ``allow_partial_features`` says the
missingness is real.
"""

import logging
import os
from dataclasses import dataclass

import numpy as np

from dataset_prep.features import MIN_COVERAGE

logger = logging.getLogger(__name__)


@dataclass
class ModalitySpec:
    """Where one modality's features live."""

    name: str
    file: str
    keys: str = None


def parse_modality_specs(modalities, dataset_dir):
    r"""Turn the ``modalities`` config value into :class:`ModalitySpec` objects.

    Accepts ``{name: {file: F[, keys: K]}}`` and the shorthand ``{name: F}``.
    """
    if modalities is None:
        return []
    if not isinstance(modalities, dict):
        raise ValueError(
            f"Config key modalities = {modalities!r} must map each modality name to "
            f"{{file: <features.npy>[, keys: <keys file>]}}."
        )

    def resolve(path):
        return path if path is None or os.path.isabs(path) else os.path.join(dataset_dir, path)

    specs = []
    for name, entry in modalities.items():
        if isinstance(entry, str):
            entry = {"file": entry}
        if not isinstance(entry, dict) or "file" not in entry or set(entry) - {"file", "keys"}:
            raise ValueError(
                f"Config key modalities.{name} = {entry!r}: expected "
                f"{{file: <features.npy>}} or {{file: <features.npy>, keys: <keys file>}}."
            )
        specs.append(ModalitySpec(str(name), resolve(entry["file"]), resolve(entry.get("keys"))))
    return specs


def read_feature_matrix(spec):
    """The raw matrix of one modality, float32, checked to be 2-D and finite."""
    if not os.path.isfile(spec.file):
        raise FileNotFoundError(
            f"Feature file {spec.file} of modality '{spec.name}' does not exist: fix "
            f"modalities.{spec.name}.file in the dataset's YAML (paths are relative "
            f"to the dataset folder), or rerun python -m dataset_prep."
        )
    try:
        matrix = np.load(spec.file, allow_pickle=False)
    except ValueError as error:
        raise ValueError(
            f"Feature file {spec.file} of modality '{spec.name}' is not a plain .npy "
            f"array ({error}): save it with numpy.save(file, array)."
        ) from None
    if not isinstance(matrix, np.ndarray):  # an .npz archive
        matrix.close()
        raise ValueError(
            f"Feature file {spec.file} of modality '{spec.name}' is an .npz archive, not a "
            f"plain .npy array: save the matrix with numpy.save(file, array)."
        )
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise ValueError(
            f"Feature file {spec.file} of modality '{spec.name}' holds a "
            f"{matrix.ndim}-D {matrix.dtype} array; it must be a 2-D numeric matrix, "
            f"one row per item."
        )
    matrix = matrix.astype(np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad_rows):
        raise ValueError(
            f"Feature file {spec.file} of modality '{spec.name}' has NaN or inf in "
            f"{len(bad_rows)} rows (first: row {bad_rows[0]}). Clean those rows, or "
            f"leave them out of the matrix and list the kept rows' items in a keys "
            f"file: items without a row count as missing the modality."
        )
    return matrix


def read_keys(spec, n_rows):
    """Raw item tokens of a keys file, one per matrix row."""
    if not os.path.isfile(spec.keys):
        raise FileNotFoundError(
            f"Keys file {spec.keys} of modality '{spec.name}' does not exist: fix "
            f"modalities.{spec.name}.keys, or drop it if rows are in raw item order."
        )
    with open(spec.keys) as f:
        keys = [line.strip() for line in f if line.strip()]
    if len(keys) != n_rows:
        raise ValueError(
            f"Keys file {spec.keys} names {len(keys)} items but feature file "
            f"{spec.file} has {n_rows} rows: line i of the keys file must name the "
            f"item of row i."
        )
    if len(set(keys)) != len(keys):
        raise ValueError(f"Keys file {spec.keys} names some item more than once.")
    return keys


def check_coverage(spec, n_rows, matched, n_items, allow_partial):
    r"""Warn with counts when a keyed file's rows and the items differ; refuse low coverage.

    Args:
        spec (ModalitySpec): the modality (with a keys file).
        n_rows (int): rows of the feature file.
        matched (int): rows whose key is an item of the dataset.
        n_items (int): items of the dataset.
        allow_partial (bool): the ``allow_partial_features`` setting: accept
            coverage below ``MIN_COVERAGE``.
    """
    unmatched, without = n_rows - matched, n_items - matched
    counts = (f"{matched} of its {n_rows} rows match an item, {unmatched} name no item of "
              f"the dataset, {without} of the dataset's {n_items} items have no row")
    if matched < MIN_COVERAGE * n_items and not allow_partial:
        raise ValueError(
            f"Keys file {spec.keys} of modality '{spec.name}' covers {matched / n_items:.0%} "
            f"of the items ({counts}), below the {MIN_COVERAGE:.0%} minimum: this is usually "
            f"a keys file of another release or id space. Fix it, or set "
            f"allow_partial_features: True (dataset YAML or --allow_partial_features=True) "
            f"if these items really lack the modality."
        )
    if unmatched or without:
        logger.warning(
            f"Modality '{spec.name}' ({spec.file} with {spec.keys}): {counts}; those items "
            f"count as missing the modality."
        )


def align_rows(spec, matrix, item_tokens, allow_partial=False):
    r"""Place feature rows at the dataset's item positions.

    Args:
        spec (ModalitySpec): the modality.
        matrix (np.ndarray): ``[n_rows, d]`` features.
        item_tokens (list of str): raw token of each item, in internal id order
            (without RecBole's padding id 0).
        allow_partial (bool): accept a keys file covering fewer than
            ``MIN_COVERAGE`` of the items (see :func:`check_coverage`).

    Returns:
        tuple: ``features`` ``[n_items, d]`` (zeros where missing) and
        ``present`` ``[n_items]`` bool, True where the file has a row.
    """
    n_items, n_rows = len(item_tokens), matrix.shape[0]
    if spec.keys is None:
        if n_rows != n_items:
            raise ValueError(
                f"Feature file {spec.file} of modality '{spec.name}' has {n_rows} rows "
                f"but the dataset has {n_items} items. Rows in raw item order need "
                f"exactly one row per item (row i = item 'i'); otherwise give a keys "
                f"file (modalities.{spec.name}.keys) naming the item of each row."
            )
        try:
            rows = np.array([int(t) for t in item_tokens])
        except ValueError:
            rows = np.array([-1])
        if rows.min() < 0 or rows.max() >= n_rows:
            raise ValueError(
                f"Feature file {spec.file} of modality '{spec.name}' is in raw item "
                f"order, which needs raw item ids 0..{n_rows - 1}, but the dataset's "
                f"item ids are not (e.g. {item_tokens[:3]}). Give a keys file "
                f"(modalities.{spec.name}.keys) naming the item of each row."
            )
        return matrix[rows], np.ones(n_items, dtype=bool)

    key_to_row = {key: row for row, key in enumerate(read_keys(spec, n_rows))}
    rows = np.array([key_to_row.get(t, -1) for t in item_tokens])
    present = rows >= 0
    if not present.any():
        raise ValueError(
            f"Keys file {spec.keys} of modality '{spec.name}' matches none of the "
            f"dataset's {n_items} items (keys look like {list(key_to_row)[:3]}, items "
            f"like {item_tokens[:3]}): it must hold raw item tokens as written in the "
            f".inter files."
        )
    check_coverage(spec, n_rows, int(present.sum()), n_items, allow_partial)
    features = np.zeros((n_items, matrix.shape[1]), dtype=np.float32)
    features[present] = matrix[rows[present]]
    return features, present


def mean_impute(features, observed):
    r"""Fill unobserved rows with the mean of observed rows (paper §3.1, after AGCN).

    With no observed row at all there is no mean to take; rows become zeros.
    """
    filled = features.copy()
    if observed.any():
        filled[~observed] = features[observed].mean(axis=0)
    else:
        filled[:] = 0.0
    return filled
