"""Writing a converted dataset so that nobody ever reads half of it.

Everything is built in a hidden staging directory inside the output folder
(``OUT/.NAME.tmp-XXXX``, on the same file system so renames are atomic), then
swapped in: an existing ``OUT/NAME`` is renamed aside, the new one renamed in,
and the old one deleted. The dataset YAML is staged as a temporary file before
the swap and moved over the old one with ``os.replace`` last. On any error the
staging files are removed and the previous ``OUT/NAME`` and YAML stay as they
were.
"""

import contextlib
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from dataset_prep.errors import DatasetPrepError
from dataset_prep.features import Feature
from dataset_prep.layouts import SplitInteractions
from recbole_ci2mg.files import atomic_write

INTER_HEADER = "user_id:token\titem_id:token\n"


def write_inter(path: Path, pairs: np.ndarray) -> None:
    """One RecBole atomic ``.inter`` file: a row per (user, item) pair, in order."""
    rows = "".join(f"{user}\t{item}\n" for user, item in pairs.tolist())
    path.write_text(INTER_HEADER + rows, encoding="utf-8")


def write_feature(directory: Path, feature: Feature) -> None:
    """``<stem>.npy`` (float32) and, for a keyed matrix, ``<stem>.keys``."""
    np.save(directory / feature.file_name, feature.matrix)
    if feature.keys is not None:
        (directory / feature.keys_name).write_text("\n".join(feature.keys) + "\n", encoding="utf-8")


def check_file_names(features: Iterable[Feature]) -> None:
    """Two modalities must not write the same file."""
    owner = {}
    for feature in features:
        if feature.file_name in owner:
            raise DatasetPrepError(
                f"{feature.file_name}: modalities {owner[feature.file_name]!r} and "
                f"{feature.modality!r} both come from a file of this name; rename one of them"
            )
        owner[feature.file_name] = feature.modality


def _swap_in(staging: Path, target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise DatasetPrepError(f"{target}: exists and is not a directory; remove it or choose another --out")
    if not target.exists():
        staging.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_dataset(out_dir, name: str, interactions: SplitInteractions, features: Iterable[Feature] = (),
                  yaml_file: Optional[Path] = None, yaml_text: Optional[str] = None) -> Path:
    """Write ``OUT/NAME/`` (and the YAML, if given) atomically; return ``OUT/NAME``.

    Writes ``NAME.train.inter``, ``NAME.valid.inter``, ``NAME.test.inter`` and
    each feature's ``.npy`` (and ``.keys``) into ``out_dir/name``.
    """
    features = list(features)
    check_file_names(features)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    staged_yaml = atomic_write(yaml_file, encoding="utf-8") if yaml_file is not None else contextlib.nullcontext()
    try:
        with staged_yaml as yaml_stream:
            for split, pairs in interactions.splits().items():
                write_inter(staging / f"{name}.{split}.inter", pairs)
            for feature in features:
                write_feature(staging, feature)
            staging.chmod(0o755)  # mkdtemp makes it private; the dataset is not
            if yaml_stream is not None:
                yaml_stream.write(yaml_text)
            _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once swapped in
        raise
    return target
