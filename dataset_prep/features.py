"""Item feature matrices: loading, validation and how their rows map to items.

A feature matrix is written as ``<stem>.npy``, a 2-D float32 array with one row
per item. Its rows map to items in one of two ways:

- row ordered: the dataset's item ids (over all splits) are exactly
  ``0 .. rows-1`` and row ``i`` is raw item token ``"i"``; no keys file;
- keyed: ``<stem>.keys`` beside it, plain text, line ``i`` the raw item token
  of row ``i``. Written whenever the ids are not exactly ``0 .. rows-1`` (then
  row ``i`` is still item ``i``, but some rows belong to no item in the split
  files), or copied from the keys file the user gave.

Coverage: rows that name no item, and items that have no row, are logged as
warnings with their counts. Two cases are refused unless the user passes
``allow_partial`` (``--allow-partial-features``), saying the missingness is
real: a keys file whose rows cover fewer than ``MIN_COVERAGE`` of the
dataset's items (a keys file of another release or id space looks like this),
and a row-ordered matrix with rows for items no split file uses, where the
source declares no item count (the matrix of another release looks like this).
"""

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from dataset_prep.errors import DatasetPrepError, one_line
from dataset_prep.layouts import SplitInteractions

MODALITY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Below this share of the dataset's items with a row, a modality is refused
# unless allow_partial says the missingness is real; the data layer
# (recbole_ci2mg.data.features) applies the same threshold at load.
MIN_COVERAGE = 0.5
ALLOW_FLAG = "--allow-partial-features"
PATH_RULE = "a relative path is looked up in --src first, then in the current directory"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSpec:
    """A feature file the user asked for: ``--feature MODALITY=PATH[:KEYS_PATH]``."""

    modality: str
    path: Path
    keys_path: Optional[Path] = None


@dataclass(frozen=True)
class Feature:
    """A validated feature matrix, ready to write.

    ``matrix`` is ``[n_rows, dim]`` float32; ``keys`` holds the raw item token of
    each row, or is ``None`` when the matrix is row ordered.
    """

    modality: str
    stem: str
    matrix: np.ndarray
    keys: Optional[List[str]]
    # Keys cover under MIN_COVERAGE of the items (accepted by allow_partial only):
    # loading needs allow_partial_features too.
    below_coverage: bool = False

    @property
    def file_name(self) -> str:
        return f"{self.stem}.npy"

    @property
    def keys_name(self) -> Optional[str]:
        return None if self.keys is None else f"{self.stem}.keys"


def candidate_paths(path: Path, src_dir: Optional[Path] = None) -> List[Path]:
    """Where a ``--feature`` path may be: itself if absolute, else under ``src_dir``, then the cwd."""
    path = Path(path)
    if path.is_absolute():
        return [path]
    candidates = [] if src_dir is None else [Path(src_dir).absolute() / path]
    return list(dict.fromkeys(candidates + [Path.cwd() / path]))


def parse_feature_arg(text: str, src_dir: Optional[Path] = None) -> FeatureSpec:
    """Parse ``MOD=FILE[:KEYS]`` from the command line (paths as given, see :func:`locate_spec`)."""
    modality, sep, files = text.partition("=")
    if not sep or not files:
        raise DatasetPrepError(
            f"--feature {text}: expected MOD=FILE or MOD=FILE:KEYSFILE, e.g. v=image_feat.npy"
        )
    check_modality(modality, f"--feature {text}")
    # A path may itself hold ':'; split off a keys file only when the whole is no file.
    path, keys_path = files, None
    if ":" in files and not any(candidate.exists() for candidate in candidate_paths(Path(files), src_dir)):
        path, _, keys_path = files.rpartition(":")
    return FeatureSpec(modality, Path(path), Path(keys_path) if keys_path else None)


def _locate(path: Path, src_dir: Path, what: str, fix: str) -> Path:
    candidates = candidate_paths(path, src_dir)
    found = [candidate for candidate in candidates if candidate.is_file()]
    if not found:
        raise DatasetPrepError(
            f"{path}: {what} not found (tried {' and '.join(map(str, candidates))}); pass "
            f"{fix} ({PATH_RULE})"
        )
    if len(found) > 1 and not found[0].samefile(found[1]):
        logger.warning(f"{path}: using {found[0]}; {found[1]} is ignored ({PATH_RULE}; "
                       f"give an absolute path to choose)")
    return found[0]


def locate_spec(spec: FeatureSpec, src_dir: Path) -> FeatureSpec:
    """``spec`` with absolute paths: a relative one is found in ``src_dir`` first, then the cwd."""
    path = _locate(spec.path, src_dir, f"feature file for modality {spec.modality!r}",
                   f"--feature {spec.modality}=FILE with an existing .npy file")
    keys_path = None
    if spec.keys_path is not None:
        keys_path = _locate(spec.keys_path, src_dir, f"keys file for modality {spec.modality!r}",
                            f"--feature {spec.modality}=FILE:KEYSFILE with an existing keys file")
    return FeatureSpec(spec.modality, path, keys_path)


def check_modality(modality: str, where: str) -> None:
    if not MODALITY_PATTERN.fullmatch(modality):
        raise DatasetPrepError(
            f"{where}: modality name {modality!r} must be letters, digits and _ "
            f"(not starting with a digit), e.g. v, a, t"
        )


def load_matrix(path: Path, modality: str) -> np.ndarray:
    """Load a ``.npy`` feature file without allowing pickled objects."""
    if not path.is_file():
        raise DatasetPrepError(
            f"{path}: feature file for modality {modality!r} not found; pass "
            f"--feature {modality}=FILE with an existing .npy file"
        )
    if path.suffix != ".npy":
        raise DatasetPrepError(
            f"{path}: feature files must be NumPy .npy arrays (np.save); convert it first"
        )
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetPrepError(
            f"{path}: not a readable .npy array ({one_line(exc)}); re-save it with np.save"
        ) from None
    if not isinstance(matrix, np.ndarray):
        # np.load returns an NpzFile for zip archives, whatever their suffix.
        raise DatasetPrepError(
            f"{path}: is an .npz archive, not one .npy array; save the matrix itself with np.save"
        )
    return matrix


def check_matrix(matrix: np.ndarray, source: str) -> np.ndarray:
    """Return ``matrix`` as float32 ``[rows, dim]``, or raise naming ``source``."""
    if matrix.ndim != 2:
        raise DatasetPrepError(
            f"{source}: feature array has shape {matrix.shape}; it must be 2-D, "
            f"one row per item (reshape it to [n_items, dim])"
        )
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise DatasetPrepError(f"{source}: feature array has shape {matrix.shape}; it holds no values")
    if not (np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.floating)
            or matrix.dtype == np.bool_):
        raise DatasetPrepError(
            f"{source}: feature array has dtype {matrix.dtype}; it must be real numbers"
        )
    # Models consume float32; a value too large for it becomes inf and is caught below.
    with np.errstate(over="ignore"):
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    finite = np.isfinite(matrix)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise DatasetPrepError(
            f"{source}: feature array holds {int((~finite).sum())} NaN or infinite values "
            f"(as float32; first in row {row}); fix or impute them before converting"
        )
    return matrix


def read_keys(path: Path, modality: str) -> List[str]:
    """Read a keys file: one raw item token per line, line i for row i."""
    if not path.is_file():
        raise DatasetPrepError(
            f"{path}: keys file for modality {modality!r} not found; pass "
            f"--feature {modality}=FILE:KEYSFILE with an existing keys file"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DatasetPrepError(f"{path}: keys file is not UTF-8 text; write one item token per line") from None
    keys = [line.strip() for line in lines]
    if "" in keys:
        raise DatasetPrepError(
            f"{path}: keys file line {keys.index('') + 1} is empty; write exactly one raw "
            f"item token per line, line i for row i"
        )
    return keys


def check_keys(keys: List[str], n_rows: int, item_tokens: set, source: str) -> None:
    """Keys must name each row once and reach at least one item of the dataset."""
    if len(keys) != n_rows:
        raise DatasetPrepError(
            f"{source}: keys file has {len(keys)} lines but the feature matrix has {n_rows} "
            f"rows; it needs one raw item token per row"
        )
    if len(set(keys)) != len(keys):
        seen = set()
        duplicate = next(key for key in keys if key in seen or seen.add(key))
        raise DatasetPrepError(
            f"{source}: keys file names item {duplicate!r} more than once; each row needs "
            f"its own item token"
        )
    if item_tokens.isdisjoint(keys):
        raise DatasetPrepError(
            f"{source}: keys file matches none of the dataset's item ids (e.g. "
            f"{keys[0]!r} vs {sorted(item_tokens)[0]!r}); it must list the raw item ids "
            f"used in the interaction files"
        )


def check_key_coverage(modality: str, keys: List[str], item_tokens: set, source: str,
                       allow_partial: bool) -> bool:
    """Warn with counts when keys and items differ; refuse low coverage unless allowed.

    Returns whether the coverage is below ``MIN_COVERAGE`` (accepted by ``allow_partial``).
    """
    matched = len(item_tokens.intersection(keys))
    unmatched, without = len(keys) - matched, len(item_tokens) - matched
    counts = (f"{matched} of its {len(keys)} rows match an item, {unmatched} name no item of "
              f"the dataset, {without} of the dataset's {len(item_tokens)} items have no row")
    below = matched < MIN_COVERAGE * len(item_tokens)
    if below and not allow_partial:
        raise DatasetPrepError(
            f"{source}: modality {modality!r} covers {matched / len(item_tokens):.0%} of the "
            f"items ({counts}), below the {MIN_COVERAGE:.0%} minimum: this is usually a keys "
            f"file of another release or id space; fix it, or pass {ALLOW_FLAG} if these "
            f"items really lack the modality"
        )
    if unmatched or without:
        logger.warning(f"{source}: modality {modality!r}: {counts} (those items count as "
                       f"missing the modality)")
    return below


def row_keys(interactions: SplitInteractions, n_rows: int, source: str, modality: str = "",
             allow_partial: bool = False) -> Optional[List[str]]:
    """Keys for a matrix whose row i is item i: ``None`` when exactly row ordered.

    Rows for items no split file uses are refused unless the source declares
    that many items or ``allow_partial`` is given; either way they are logged.
    """
    item_ids = interactions.item_ids()
    declared = interactions.n_items
    if declared is not None and n_rows != declared:
        raise DatasetPrepError(
            f"{source}: feature matrix has {n_rows} rows but the source declares "
            f"{declared} items; use the feature file of the same release"
        )
    if item_ids[-1] >= n_rows:
        raise DatasetPrepError(
            f"{source}: feature matrix has {n_rows} rows but item id {int(item_ids[-1])} "
            f"appears in the interactions; row i must be item i for every item, or "
            f"give a keys file (--feature MOD=FILE:KEYSFILE)"
        )
    if len(item_ids) == n_rows:
        return None
    counts = (f"{n_rows} rows for {len(item_ids)} items (ids 0..{int(item_ids[-1])}): "
              f"{n_rows - len(item_ids)} rows belong to no item of the split files")
    if declared is None and not allow_partial:
        raise DatasetPrepError(
            f"{source}: modality {modality!r} has {counts}; row i is item i, so a row count "
            f"that differs from the item count usually means the matrix of another release; "
            f"use the matching file, give a keys file (--feature MOD=FILE:KEYSFILE), or pass "
            f"{ALLOW_FLAG} if those rows really are items without interactions"
        )
    logger.warning(f"{source}: modality {modality!r} has {counts} (kept in its keys file, "
                   f"unused by RecBole)")
    return [str(row) for row in range(n_rows)]


def make_feature(modality: str, stem: str, matrix: np.ndarray, keys: Optional[List[str]],
                 interactions: SplitInteractions, source: str, allow_partial: bool = False) -> Feature:
    """Validate ``matrix`` (and ``keys`` if given) against the dataset's items.

    ``allow_partial`` accepts the coverage problems described in the module docstring.
    """
    matrix = check_matrix(matrix, source)
    below = False
    if keys is None:
        keys = row_keys(interactions, matrix.shape[0], source, modality, allow_partial)
    else:
        item_tokens = {str(item) for item in interactions.item_ids().tolist()}
        check_keys(keys, matrix.shape[0], item_tokens, source)
        below = check_key_coverage(modality, keys, item_tokens, source, allow_partial)
    return Feature(modality, stem, matrix, keys, below)


def load_feature(spec: FeatureSpec, interactions: SplitInteractions, allow_partial: bool = False) -> Feature:
    """Load and validate the feature file (and keys file) of ``spec``."""
    check_modality(spec.modality, str(spec.path))
    matrix = load_matrix(spec.path, spec.modality)
    keys = None if spec.keys_path is None else read_keys(spec.keys_path, spec.modality)
    source = str(spec.path) if spec.keys_path is None else f"{spec.path} with {spec.keys_path}"
    return make_feature(spec.modality, spec.path.stem, matrix, keys, interactions, source, allow_partial)
