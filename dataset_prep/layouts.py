"""Readers for the layouts that multimodal-recommendation datasets are published in.

Each reader takes the source directory and returns a :class:`SplitInteractions`:
the published train / valid / test split as ``(user, item)`` pairs of the
source's integer ids, in source order, with nothing deduplicated or filtered,
plus the number of items the source declares when it declares one.

- ``mmrec`` (MMRec): one tab-separated ``.inter`` file whose header holds
  ``userID``, ``itemID`` and ``x_label`` (0 train, 1 valid, 2 test); other
  columns are ignored.
- ``mmssl`` (MMSSL): ``train.json``, ``val.json`` and ``test.json``, each
  ``{user_id: [item_id, ...]}``.
- ``diffmm`` (DiffMM): ``trnMat.pkl``, ``valMat.pkl`` and ``tstMat.pkl``,
  pickled SciPy sparse users x items matrices, all of one shape.
"""

import json
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp

from dataset_prep.errors import DatasetPrepError, one_line

SPLITS = ("train", "valid", "test")

MMREC_COLUMNS = ("userID", "itemID", "x_label")
MMSSL_FILES = ("train.json", "val.json", "test.json")
DIFFMM_FILES = ("trnMat.pkl", "valMat.pkl", "tstMat.pkl")


@dataclass(frozen=True)
class SplitInteractions:
    """A published split: per split an int64 array ``[n_rows, 2]`` of (user, item).

    ``n_items`` is the item count the source declares (the matrix width of the
    ``diffmm`` layout), or ``None`` where the layout declares none.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    n_items: Optional[int] = None

    def splits(self) -> Dict[str, np.ndarray]:
        """Split name -> pairs, in ``SPLITS`` order."""
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def item_ids(self) -> np.ndarray:
        """Sorted distinct item ids over all splits."""
        return np.unique(np.concatenate([pairs[:, 1] for pairs in self.splits().values()]))

    def user_ids(self) -> np.ndarray:
        """Sorted distinct user ids over all splits."""
        return np.unique(np.concatenate([pairs[:, 0] for pairs in self.splits().values()]))


def require_dir(src_dir) -> Path:
    """Return ``src_dir`` as a Path, or raise if it is not an existing directory."""
    path = Path(src_dir)
    if not path.is_dir():
        raise DatasetPrepError(
            f"{path}: source directory not found; pass --src pointing at the folder "
            f"that holds the published files"
        )
    return path


def _require_file(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise DatasetPrepError(
            f"{path}: file not found; the {layout} layout needs it in the source "
            f"directory (check --src and --layout)"
        )
    return path


def _pairs(users, items) -> np.ndarray:
    """Stack ids into an int64 ``[n, 2]`` array, shape kept for empty input."""
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    return np.stack([users, items], axis=1)


def _check_not_empty(splits: Dict[str, np.ndarray], files: Dict[str, str]) -> None:
    # RecBole cannot train or evaluate on an empty benchmark file, and an empty
    # split in a published release means the wrong file or layout was given.
    for split, pairs in splits.items():
        if len(pairs) == 0:
            raise DatasetPrepError(
                f"{files[split]}: the {split} split has no interactions; every split "
                f"needs at least one (check that this is the published file and --layout)"
            )


# ---------------------------------------------------------------------- mmrec


def find_inter_file(src_dir: Path, name: Optional[str]) -> Path:
    """``NAME.inter`` in ``src_dir``, else the only ``*.inter`` there."""
    if name is not None and (src_dir / f"{name}.inter").is_file():
        return src_dir / f"{name}.inter"
    candidates = sorted(src_dir.glob("*.inter"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        missing = src_dir / (f"{name}.inter" if name else "*.inter")
        raise DatasetPrepError(
            f"{missing}: file not found; the mmrec layout needs the dataset's .inter file "
            f"in the source directory (check --src and --layout)"
        )
    raise DatasetPrepError(
        f"{src_dir}: holds {len(candidates)} .inter files and none is named {name}.inter; "
        f"keep one, or name the dataset after the one to convert"
    )


INT64_MAX = int(np.iinfo(np.int64).max)
ID_FIX = "ids must be integers below 2**63 (remap them to 0..n-1 first)"


def _above_int64(digits: str) -> bool:
    # Compares the digit string itself: int() of a very long string raises.
    digits = digits.lstrip("0")
    return len(digits) > len(str(INT64_MAX)) or (len(digits) == len(str(INT64_MAX)) and digits > str(INT64_MAX))


def _shown(digits: str) -> str:
    return digits if len(digits) <= 24 else f"{digits[:20]}... ({len(digits)} digits)"


def integer_column(frame: pd.DataFrame, column: str, path: Path, fix: str) -> np.ndarray:
    """Column ``column`` of a text table as int64, or raise naming its first bad line.

    Line numbers count the header as line 1. ``fix`` ends the message.
    """
    values = frame[column].str.strip()
    bad = ~values.str.fullmatch(r"[0-9]+")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetPrepError(
            f"{path}: column {column!r} line {row + 2} holds {frame[column].iloc[row]!r}, "
            f"not a non-negative integer; {fix}"
        )
    too_large = values.map(_above_int64)
    if too_large.any():
        row = int(np.flatnonzero(too_large.to_numpy())[0])
        raise DatasetPrepError(
            f"{path}: column {column!r} line {row + 2} holds {_shown(values.iloc[row])}, above "
            f"{INT64_MAX}, the largest int64; {fix}"
        )
    return values.astype(np.int64).to_numpy()


def _id_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    return integer_column(frame, column, path, ID_FIX)


def read_mmrec(src_dir, name: Optional[str] = None) -> SplitInteractions:
    """Read MMRec's ``NAME.inter`` (``userID``, ``itemID``, ``x_label``)."""
    path = find_inter_file(require_dir(src_dir), name)
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetPrepError(
            f"{path}: file is empty; it needs a header with {', '.join(MMREC_COLUMNS)} and "
            f"one row per interaction"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetPrepError(
            f"{path}: not a tab-separated table ({one_line(exc)}); "
            f"the mmrec layout needs userID<TAB>itemID<TAB>x_label rows"
        ) from None
    missing = [column for column in MMREC_COLUMNS if column not in frame.columns]
    if missing:
        raise DatasetPrepError(
            f"{path}: header lacks column(s) {', '.join(missing)} (found "
            f"{', '.join(map(str, frame.columns))}); the mmrec layout needs a tab-separated "
            f"header with {', '.join(MMREC_COLUMNS)}"
        )
    if frame.empty:
        raise DatasetPrepError(
            f"{path}: has a header but no rows; it needs one row per interaction"
        )

    labels = frame["x_label"].str.strip()
    bad_labels = sorted(set(labels.unique()) - {"0", "1", "2"})
    if bad_labels:
        raise DatasetPrepError(
            f"{path}: column 'x_label' holds {', '.join(map(repr, bad_labels[:5]))}; "
            f"it must be 0 (train), 1 (valid) or 2 (test) on every row"
        )
    pairs = _pairs(_id_column(frame, "userID", path), _id_column(frame, "itemID", path))
    labels = labels.astype(np.int64).to_numpy()
    # Boolean masks keep the file's row order inside each split.
    splits = {split: pairs[labels == code] for code, split in enumerate(SPLITS)}
    _check_not_empty(splits, {split: f"{path} (x_label={code})" for code, split in enumerate(SPLITS)})
    return SplitInteractions(**splits)


# ---------------------------------------------------------------------- mmssl


def _is_id(value) -> bool:
    # JSON true/false load as bool, a subclass of int: not an id.
    return type(value) is int and value >= 0


def _unique_keys(path: Path):
    """A json ``object_pairs_hook`` refusing a key twice in one object.

    ``json.load`` keeps the last value of a repeated key: a user listed twice
    would silently lose the items of the first list.
    """
    def build(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DatasetPrepError(
                    f"{path}: key {key!r} appears twice in one object; JSON keeps only "
                    f"the last, so the items of the first would be lost; merge them into "
                    f"one list (or re-download the published file)"
                )
            seen.add(key)
        return dict(pairs)

    return build


def _read_user_lists(path: Path) -> np.ndarray:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle, object_pairs_hook=_unique_keys(path))
    except json.JSONDecodeError as exc:
        raise DatasetPrepError(
            f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f"re-download the published file"
        ) from None
    except UnicodeDecodeError:
        raise DatasetPrepError(f"{path}: not UTF-8 text; re-download the published JSON file") from None
    except DatasetPrepError:
        raise
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise DatasetPrepError(f"{path}: unreadable JSON ({one_line(exc)}); {ID_FIX}") from None
    if not isinstance(data, dict):
        raise DatasetPrepError(
            f"{path}: holds a JSON {type(data).__name__}, not an object; the mmssl layout "
            f"needs {{\"user_id\": [item_id, ...], ...}}"
        )
    users, items, key_of = [], [], {}
    for user, user_items in data.items():
        if not re.fullmatch(r"[0-9]+", user.strip()):
            raise DatasetPrepError(
                f"{path}: key {user!r} is not a non-negative integer user id; the mmssl "
                f"layout needs {{\"user_id\": [item_id, ...], ...}} with integer ids"
            )
        if not isinstance(user_items, list) or not all(_is_id(item) for item in user_items):
            raise DatasetPrepError(
                f"{path}: user {user!r} maps to {str(user_items)[:60]}, not a list of "
                f"non-negative integer item ids; the mmssl layout needs "
                f"{{\"user_id\": [item_id, ...], ...}}"
            )
        too_large = [str(item) for item in user_items if item > INT64_MAX]
        if _above_int64(user.strip()) or too_large:
            field = "its key" if not too_large else f"item {_shown(too_large[0])}"
            raise DatasetPrepError(
                f"{path}: user {_shown(user)!r}: {field} is above {INT64_MAX}, the largest "
                f"int64; {ID_FIX}"
            )
        user_id = int(user)
        if user_id in key_of:
            raise DatasetPrepError(
                f"{path}: keys {key_of[user_id]!r} and {user!r} are both user {user_id}; "
                f"give each user one key and one list"
            )
        key_of[user_id] = user
        users.extend([user_id] * len(user_items))
        items.extend(user_items)
    return _pairs(users, items)


def read_mmssl(src_dir, name: Optional[str] = None) -> SplitInteractions:
    """Read MMSSL's ``train.json``, ``val.json`` and ``test.json``.

    Rows follow the JSON files' user order, then each user's list order.
    """
    src_dir = require_dir(src_dir)
    paths = {split: _require_file(src_dir / file, "mmssl") for split, file in zip(SPLITS, MMSSL_FILES)}
    splits = {split: _read_user_lists(path) for split, path in paths.items()}
    _check_not_empty(splits, {split: str(path) for split, path in paths.items()})
    return SplitInteractions(**splits)


# --------------------------------------------------------------------- diffmm


# What a pickled SciPy sparse matrix (or array) of NumPy arrays names: its class,
# in SciPy's private module (1.8 and later) or the public one older SciPy wrote
# (the published DiffMM files name scipy.sparse.coo), and NumPy's array
# rebuilding, in NumPy 1's module and NumPy 2's.
_SPARSE_FORMATS = ("coo", "csr", "csc", "bsr", "dia")
PICKLE_GLOBALS = frozenset(
    [(f"scipy.sparse{sep}{fmt}", f"{fmt}_{kind}")
     for fmt in _SPARSE_FORMATS for sep in (".", "._") for kind in ("matrix", "array")]
    + [(f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
)


class _RefusedGlobal(Exception):
    """A pickle names a global outside :data:`PICKLE_GLOBALS`."""


class _SparseUnpickler(pickle.Unpickler):
    """Unpickles only what :data:`PICKLE_GLOBALS` names, so a crafted file cannot call anything else."""

    def find_class(self, module, name):
        if (module, name) not in PICKLE_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _load_matrix(path: Path):
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            # The published pickles name scipy.sparse.coo, a namespace that newer
            # SciPy deprecates; they still load, so the warning is only noise.
            warnings.simplefilter("ignore", DeprecationWarning)
            matrix = _SparseUnpickler(handle).load()
    except _RefusedGlobal as refused:
        raise DatasetPrepError(
            f"{path}: refused: the pickle names {refused}, which unpickling would call; the "
            f"diffmm layout builds only scipy.sparse {'/'.join(_SPARSE_FORMATS)} matrices of "
            f"NumPy arrays and stopped before calling anything else. Use the published file, "
            f"or pickle the split as a scipy.sparse.coo_matrix"
        ) from None
    except Exception as exc:  # unpickling can fail with almost any exception type
        raise DatasetPrepError(
            f"{path}: cannot be unpickled ({one_line(exc)}); re-download the "
            f"published file"
        ) from None
    if not sp.issparse(matrix):
        raise DatasetPrepError(
            f"{path}: holds a {type(matrix).__module__}.{type(matrix).__name__}, not a SciPy "
            f"sparse matrix; the diffmm layout needs each split pickled as a scipy.sparse "
            f"users x items matrix"
        )
    if matrix.ndim != 2:
        raise DatasetPrepError(f"{path}: sparse array of {matrix.ndim} dimensions; it must be users x items")
    # COO keeps the order the entries were stored in; other formats come out
    # row-major, which is their own storage order.
    return matrix if matrix.format == "coo" else matrix.tocoo()


def read_diffmm(src_dir, name: Optional[str] = None) -> SplitInteractions:
    """Read DiffMM's ``trnMat.pkl``, ``valMat.pkl`` and ``tstMat.pkl``.

    Every stored non-zero entry ``(u, i)`` is one interaction, in storage order;
    duplicate entries stay duplicate rows, and explicitly stored zeros are not
    interactions. ``n_items`` is the matrices' column count.

    The pickles are read by an unpickler that builds only scipy.sparse matrices
    and NumPy arrays (:data:`PICKLE_GLOBALS`): a file naming anything else (a
    function to call, another class) is refused before any of it runs.
    """
    src_dir = require_dir(src_dir)
    paths = {split: _require_file(src_dir / file, "diffmm") for split, file in zip(SPLITS, DIFFMM_FILES)}
    matrices = {split: _load_matrix(path) for split, path in paths.items()}
    shapes = {split: matrix.shape for split, matrix in matrices.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{paths[split].name} {shape[0]}x{shape[1]}" for split, shape in shapes.items())
        raise DatasetPrepError(
            f"{src_dir}: the split matrices differ in shape ({listed}); all three must be "
            f"users x items over the same users and items (use the files of one release)"
        )
    splits = {}
    for split, matrix in matrices.items():
        stored = matrix.data != 0
        splits[split] = _pairs(matrix.row[stored], matrix.col[stored])
    _check_not_empty(splits, {split: str(path) for split, path in paths.items()})
    return SplitInteractions(**splits, n_items=int(shapes["train"][1]))


LAYOUTS: Dict[str, Callable[..., SplitInteractions]] = {
    "mmrec": read_mmrec,
    "mmssl": read_mmssl,
    "diffmm": read_diffmm,
}


def read_layout(layout: str, src_dir, name: Optional[str] = None) -> SplitInteractions:
    """Read ``src_dir`` with the reader of ``layout`` (a key of ``LAYOUTS``)."""
    if layout not in LAYOUTS:
        raise DatasetPrepError(
            f"--layout {layout}: unknown layout; choose one of {', '.join(LAYOUTS)}"
        )
    return LAYOUTS[layout](src_dir, name)
