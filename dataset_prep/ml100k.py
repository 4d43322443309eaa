"""The embedded default dataset ``ml-100k-mm``: MovieLens-100K with two content modalities.

Built offline from the ml-100k copy that ships inside the recbole package, so
every installation can run the models without downloading anything. It is
deterministic: the same source gives byte-identical files.

- Interactions: every rating is one implicit interaction. Each user's ratings
  are ordered by timestamp (ties by item id); the last ``round(n/10)`` form the
  test split, the ``round(n/10)`` before them the valid split (at least one
  each), the rest train.
- ``genre``: multi-hot of the 19 ml-100k genres (``genre.npy``, float32).
- ``text``: TF-IDF of the lower-cased title words plus a year and a decade
  token, feature-hashed into 128 dimensions with CRC-32 and L2-normalised
  (``text.npy``, float32).

Item ids run from 1 to 1682, so both matrices come with keys files.
"""

import re
import zlib
from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd

from dataset_prep.atomic import write_dataset
from dataset_prep.errors import DatasetPrepError
from dataset_prep.features import Feature, make_feature
from dataset_prep.layouts import SplitInteractions, integer_column, require_dir
from dataset_prep.properties import modalities_entry, render_dataset_yaml, yaml_path

ML100K_MM = "ml-100k-mm"

# ml-100k's genre list, in the order of its u.genre file.
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
TEXT_DIM = 128
# What ml100k_features writes; the committed YAML lists it without building anything.
ML100K_MODALITIES = {
    "genre": {"file": "genre.npy", "keys": "genre.keys"},
    "text": {"file": "text.npy", "keys": "text.keys"},
}

COMMITTED_HEADER = f"""\
# The embedded default dataset: built on first use from the ml-100k copy inside
# the recbole package (recbole/dataset_example/ml-100k) by
# dataset_prep.build_ml100k_mm. No data_path here: the data layer sets the folder
# it builds the dataset in. By hand: python -m dataset_prep {ML100K_MM} --out DIR,
# then run with --data_path=DIR.
"""


def bundled_ml100k_dir() -> Path:
    """The ml-100k folder inside the installed recbole package."""
    import recbole  # here, not at the top: other conversions need no torch import

    return Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"


def _read_atomic(path: Path, fields: List[str]) -> pd.DataFrame:
    """Columns ``fields`` of a RecBole atomic file, named without their ``:type``."""
    if not path.is_file():
        raise DatasetPrepError(f"{path}: file not found; the ml-100k source folder needs it")
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [column.split(":")[0] for column in frame.columns]
    missing = [field for field in fields if field not in frame.columns]
    if missing:
        raise DatasetPrepError(
            f"{path}: header lacks field(s) {', '.join(missing)}; expected RecBole's "
            f"ml-100k atomic file with {', '.join(fields)}"
        )
    if frame.empty:
        raise DatasetPrepError(f"{path}: has a header but no rows")
    return frame[fields]


def _integers(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    return integer_column(frame, column, path, "expected RecBole's ml-100k")


def chronological_split(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> SplitInteractions:
    """Per-user 80/10/10 split by time, rows ordered by user then time.

    For a user with ``n`` interactions, valid and test get ``round(n/10)`` each
    (halves rounded up), at least one each while there are interactions left,
    test taking the latest.
    """
    order = np.lexsort((items, timestamps, users))
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    position = np.arange(len(users)) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    tenth = np.maximum(1, (n + 5) // 10)  # integer half-up rounding of n / 10
    n_test = np.minimum(n, tenth)
    n_valid = np.minimum(n - n_test, tenth)
    is_test = position >= n - n_test
    is_valid = ~is_test & (position >= n - n_test - n_valid)
    is_train = ~is_test & ~is_valid
    pairs = np.stack([users, items], axis=1)
    return SplitInteractions(train=pairs[is_train], valid=pairs[is_valid], test=pairs[is_test])


def genre_matrix(classes: List[str], path: Path) -> np.ndarray:
    """Multi-hot ``[n_items, 19]`` over ``GENRES`` from the ``class`` token lists."""
    index = {genre: column for column, genre in enumerate(GENRES)}
    matrix = np.zeros((len(classes), len(GENRES)), dtype=np.float32)
    for row, genres in enumerate(classes):
        # An item that lists no genre is ml-100k's "unknown" genre, not a zero row.
        for genre in genres.split() or ["unknown"]:
            if genre not in index:
                raise DatasetPrepError(
                    f"{path}: genre {genre!r} is not one of ml-100k's 19 genres; use "
                    f"RecBole's ml-100k.item"
                )
            matrix[row, index[genre]] = 1.0
    return matrix


def title_tokens(title: str, year: str) -> List[str]:
    """Lower-cased title words plus ``year:YYYY`` and ``decade:YYY0s`` tokens."""
    tokens = re.findall(r"[^\W_]+", title.lower())
    if re.fullmatch(r"\d{4}", year.strip()):
        tokens += [f"year:{year.strip()}", f"decade:{year.strip()[:3]}0s"]
    # Keeps every row non-zero, so cosine similarities stay defined.
    return tokens or ["<untitled>"]


def text_matrix(documents: List[List[str]], dim: int = TEXT_DIM) -> np.ndarray:
    """Hashed TF-IDF, ``[n_docs, dim]`` float32, rows L2-normalised.

    ``idf(t) = ln((1 + N) / (1 + df(t))) + 1``; token ``t`` lands in column
    ``crc32(t) mod dim``. CRC-32 is stable across runs, unlike Python's salted
    ``hash``.
    """
    document_frequency = {}
    for tokens in documents:
        for token in set(tokens):
            document_frequency[token] = document_frequency.get(token, 0) + 1
    n_docs = len(documents)
    matrix = np.zeros((n_docs, dim), dtype=np.float64)
    for row, tokens in enumerate(documents):
        for token in tokens:  # a repeated token adds its idf again: tf is the count
            idf = np.log((1 + n_docs) / (1 + document_frequency[token])) + 1.0
            matrix[row, zlib.crc32(token.encode("utf-8")) % dim] += idf
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def read_ml100k(src_dir) -> SplitInteractions:
    """The chronological split of ``ml-100k.inter`` in ``src_dir``."""
    path = require_dir(src_dir) / "ml-100k.inter"
    ratings = _read_atomic(path, ["user_id", "item_id", "timestamp"])
    return chronological_split(
        _integers(ratings, "user_id", path),
        _integers(ratings, "item_id", path),
        _integers(ratings, "timestamp", path),
    )


def ml100k_features(src_dir, interactions: SplitInteractions) -> List[Feature]:
    """The ``genre`` and ``text`` matrices of ``ml-100k.item``, rows in item id order."""
    path = require_dir(src_dir) / "ml-100k.item"
    table = _read_atomic(path, ["item_id", "movie_title", "release_year", "class"])
    item_ids = _integers(table, "item_id", path)
    order = np.argsort(item_ids, kind="stable")
    table, item_ids = table.iloc[order], item_ids[order]
    unrated = np.setdiff1d(interactions.item_ids(), item_ids)
    if len(unrated):
        raise DatasetPrepError(
            f"{path}: lacks item {int(unrated[0])} (and {len(unrated) - 1} more) that "
            f"ml-100k.inter rates; use the .item file of the same ml-100k copy"
        )
    keys = [str(item) for item in item_ids.tolist()]
    documents = [title_tokens(title, year) for title, year
                 in zip(table["movie_title"], table["release_year"])]
    return [
        make_feature("genre", "genre", genre_matrix(list(table["class"]), path), keys, interactions, str(path)),
        make_feature("text", "text", text_matrix(documents), keys, interactions, str(path)),
    ]


def committed_yaml_text() -> str:
    """The text of the committed ``properties/dataset/ml-100k-mm.yaml`` (no ``data_path``)."""
    return render_dataset_yaml(ML100K_MM, None, ML100K_MODALITIES, header=COMMITTED_HEADER)


def build_ml100k_mm(out_dir, src_dir=None, *, properties_dir: Optional[Path] = None) -> Path:
    """Build ``out_dir/ml-100k-mm/`` atomically and return that directory.

    Args:
        out_dir: the folder to build in (RecBole's ``data_path``).
        src_dir: a folder with RecBole's ``ml-100k.inter`` and ``ml-100k.item``;
            defaults to the copy inside the recbole package.
        properties_dir: also write ``properties_dir/dataset/ml-100k-mm.yaml``
            with this ``data_path``; ``None`` (default) writes no YAML.
    """
    src_dir = bundled_ml100k_dir() if src_dir is None else Path(src_dir)
    interactions = read_ml100k(src_dir)
    features = ml100k_features(src_dir, interactions)
    out_dir = Path(out_dir).resolve()
    yaml_file = yaml_text = None
    if properties_dir is not None:
        yaml_file = yaml_path(properties_dir, ML100K_MM)
        yaml_text = render_dataset_yaml(ML100K_MM, out_dir, modalities_entry(features))
    return write_dataset(out_dir, ML100K_MM, interactions, features, yaml_file, yaml_text)
