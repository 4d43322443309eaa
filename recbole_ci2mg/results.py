r"""The results file of a comparison: one JSON line per finished run, per-user scores beside it.

A record holds what a run was (``dataset``, ``model``, ``seed``,
``missing_rate``, ``overrides``: the config settings that change what it
computes, ``config_files``) and what it gave (``test`` and ``valid`` metrics,
``best_epoch``, ``epochs_trained``, ``train_epoch_seconds``, ``wall_seconds``,
``machine``, ``saved_model_file``, and ``test_segments``: test Recall@k
within cold and warm items, :func:`recbole_ci2mg.trainer.segment_recall`;
absent from records written before it was kept) and what it read (``data_fingerprint``:
:func:`recbole_ci2mg.data.fingerprint.data_fingerprint`; absent from records
written before it was kept). Its per-user test scores are in a sidecar
``<results stem>.per_user/<run>.npz`` named by ``per_user_file`` (relative to
the results file's folder); records written before per-user scores existed
have none, and the tables say so.
"""

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

import numpy as np

REQUIRED_FIELDS = ("dataset", "model", "seed", "missing_rate", "test")


class ResultsFileError(ValueError):
    """A results file that cannot be used as it is: a line that is not a record, or a record of other data."""


def record_key(record):
    r"""What identifies a run: dataset, model, seed, missing rate, overrides and config files.

    Works on a planned run and on a record alike. Records written before
    ``config_files`` was recorded count as run without any.
    """
    return json.dumps(
        [
            record["dataset"],
            record["model"],
            int(record["seed"]),
            float(record["missing_rate"]),
            record.get("overrides") or {},
            list(record.get("config_files") or []),
        ],
        sort_keys=True,
    )


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_name(value):
    return isinstance(value, str) and value != ""


def _is_segments(value):
    # {"cold": {"users": int, "interactions": int, "recall@20": number or null, ...}, "warm": {...}}
    def is_count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    return isinstance(value, dict) and all(
        isinstance(segment, dict)
        and is_count(segment.get("users"))
        and is_count(segment.get("interactions"))
        and all(v is None or _is_number(v) for k, v in segment.items() if k not in ("users", "interactions"))
        for segment in value.values()
    )


# What each field of a record must hold (optional fields may also be null),
# as the runner and the tables read it.
FIELD_CHECKS = {
    "dataset": (_is_name, "a name"),
    "model": (_is_name, "a name"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "missing_rate": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "test": (lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values()),
             "metrics (a mapping of metric names to numbers)"),
    "valid": (lambda v: isinstance(v, dict), "a mapping of metric names to numbers"),
    "overrides": (lambda v: isinstance(v, dict), "a mapping of config keys to values"),
    "config_files": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of file names"),
    "per_user_file": (_is_name, "a file name"),
    "data_fingerprint": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                         "a mapping of data files to their hashes"),
    "best_epoch": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "train_epoch_seconds": (_is_number, "a number"),
    "test_segments": (_is_segments, "segment -> {users, interactions, recall@<k>} (numbers; recalls may be null)"),
}
JSON_TYPES = {int: "number", float: "number", str: "string", list: "array", bool: "boolean", type(None): "null"}


def check_record(record, where):
    r"""Raise :class:`ResultsFileError`, naming ``where`` (file and line), unless ``record`` is a well-formed record."""
    fix = "correct or delete that line (a deleted run is trained again)"
    if not isinstance(record, dict):
        raise ResultsFileError(
            f"{where}, is a JSON {JSON_TYPES.get(type(record), type(record).__name__)}, not a record: each "
            f"line of a results file is a JSON object with {', '.join(REQUIRED_FIELDS)}; {fix}."
        )
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise ResultsFileError(
            f"{where}, lacks the field(s) {', '.join(missing)} every record "
            f"needs ({', '.join(REQUIRED_FIELDS)}); it was not written by recbole_ci2mg.compare: {fix}."
        )
    for field, (valid, expected) in FIELD_CHECKS.items():
        value = record.get(field)
        if (value is not None or field in REQUIRED_FIELDS) and not valid(value):
            raise ResultsFileError(f"{where}: {field} is {value!r}, not {expected}; {fix}.")


def read_records(path):
    r"""The records of the results file ``path``, in file order; [] when it does not exist yet.

    Raises:
        ResultsFileError: a line is not a record (naming the file, the line and what is wrong).
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, record in json_lines(path, "a run"):
        check_record(record, f"{path}, line {number}")
        records.append(record)
    return records


def json_lines(path, what):
    r"""``(line number, object)`` for every non-blank line of the JSON-lines file ``path``.

    Raises:
        ResultsFileError: a line is not JSON; the message names the file and line and says
            that ``what`` (e.g. "a run") it recorded will be run again once the line is deleted.
    """
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise ResultsFileError(
                f"{path}, line {number}, is not a JSON record ({error.msg}). Delete that line "
                f"({what} cut off while writing it); it will be run again."
            ) from None


@contextlib.contextmanager
def locked(path):
    r"""Hold an exclusive ``flock`` of the results file ``path`` (created empty if absent).

    Comparison processes sharing a results file take it to read the file and
    claim a run (:mod:`recbole_ci2mg.claims`), and to append a record, so that
    what one sees is never half of another's change. Not re-entrant.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def append_record(path, record):
    r"""Add one record to the results file, as soon as its run is done.

    The line is written whole by one ``os.write`` in append mode, under
    :func:`locked`; a record of the same run (same :func:`record_key`) already
    in the file is kept and this one is not written.

    Returns:
        bool: whether the record was written.
    """
    line = (json.dumps(record) + "\n").encode()
    key = record_key(record)
    with locked(path) as fd:
        if any(record_key(other) == key for other in read_records(path)):
            return False
        if os.write(fd, line) != len(line):
            raise OSError(f"{path}: the record of {record['model']} seed {record['seed']} was cut off while writing.")
    return True


def per_user_folder(results):
    """``runs.jsonl`` -> ``runs.per_user/``."""
    results = Path(results)
    return results.with_name(results.stem + ".per_user")


def save_per_user(results, record, per_user):
    r"""Write a run's per-user scores beside the results file; returns the name to record.

    ``per_user``: ``{"user_id": raw tokens, "<metric>@<k>": values}``, as
    :class:`recbole_ci2mg.trainer.PerUserScoresMixin` keeps them. The file is
    named by the run's key, so a rerun of a run whose record was deleted
    replaces it. A file that a record of the results file still names is never
    replaced: that record's key was edited after it ran (a setting written
    into ``overrides`` when a default changed), and the run now being saved
    has that record's old key; it gets a name of its own instead.
    """
    folder = per_user_folder(results)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(record_key(record).encode()).hexdigest()[:10]
    stem = f"{record['model']}-seed{record['seed']}-rate{record['missing_rate']}-{digest}"
    with locked(results):
        taken = {other.get("per_user_file") for other in read_records(results)}
    name, attempt = f"{stem}.npz", 1
    while f"{folder.name}/{name}" in taken:
        name, attempt = f"{stem}-{attempt}.npz", attempt + 1
    np.savez_compressed(folder / name, **per_user)
    return f"{folder.name}/{name}"


def load_per_user(record, results):
    r"""A record's per-user scores as arrays, or None when it has none.

    Raises:
        FileNotFoundError: the record names a per-user file that is gone.
    """
    if not record.get("per_user_file"):
        return None
    path = Path(results).parent / record["per_user_file"]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}, the per-user scores of {record['model']} (seed {record['seed']}, missing rate "
            f"{record['missing_rate']}) in {results}, is missing. Restore it, or delete that record "
            f"from {results} to train the run again."
        )
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}
