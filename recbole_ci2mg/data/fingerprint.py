r"""What a run was trained on: content hashes of the dataset's files and how its mask was made.

A comparison keeps this fingerprint in each record (``data_fingerprint``), so
that a run recorded before the dataset was converted again (other split,
features, keys or mask) is never taken for a run on the data as it is now.
"""

import hashlib
import os

from recbole_ci2mg.data.features import parse_modality_specs

# The atomic files RecBole's Dataset reads beside the interactions, when present.
OPTIONAL_ATOMIC_SUFFIXES = ("user", "item", "kg", "link", "net")
ABSENT = "absent"

_hashes = {}  # (path, inode, size, mtime) -> sha256, so that a comparison hashes each file once


def file_hash(path):
    """``sha256:<hex>`` of the file's bytes, or ``absent``."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return ABSENT
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = f"sha256:{digest.hexdigest()}"
    return _hashes[key]


def data_fingerprint(config):
    r"""The fingerprint of the data a RecBole ``config`` reads.

    Returns:
        dict: ``{role: hash}``, the roles being the atomic files by suffix
        (``train.inter``, ``valid.inter``, ``test.inter`` for a benchmark
        split, else ``inter``; ``item``, ``user``, ... where present),
        ``features <modality>`` and ``keys <modality>``, and ``mask``: the
        hash of ``mask_file``, or how the mask is drawn (``missing_mode`` and
        ``mask_seed``; ``missing_rate`` is part of the run itself), and, with
        a ``new_item_rate`` above 0, ``new items``: how they are drawn. Roles,
        not paths, so that the same data in another folder has the same
        fingerprint.
    """
    folder, name = config["data_path"], config["dataset"]
    benchmark = config["benchmark_filename"]
    files = {suffix: os.path.join(folder, f"{name}.{suffix}")
             for suffix in ([f"{split}.inter" for split in benchmark] if benchmark else ["inter"])}
    for suffix in OPTIONAL_ATOMIC_SUFFIXES:
        path = os.path.join(folder, f"{name}.{suffix}")
        if os.path.isfile(path):
            files[suffix] = path
    specs = parse_modality_specs(config["modalities"], folder)
    for spec in specs:
        files[f"features {spec.name}"] = spec.file
        if spec.keys is not None:
            files[f"keys {spec.name}"] = spec.keys
    fingerprint = {role: file_hash(path) for role, path in files.items()}
    if specs:
        mask_file = config["mask_file"]
        if mask_file:
            fingerprint["mask"] = file_hash(mask_file if os.path.isabs(mask_file) else os.path.join(folder, mask_file))
        else:
            fingerprint["mask"] = f"drawn: missing_mode {config['missing_mode']}, mask_seed {config['mask_seed']}"
    if config["new_item_rate"]:  # absent at 0, so that records from before the setting keep their fingerprint
        fingerprint["new items"] = f"drawn: new_item_rate {config['new_item_rate']:g}, new_item_seed {config['new_item_seed']}"
    return fingerprint


def fingerprint_changes(recorded, current):
    """The roles whose hash differs between two fingerprints, as ``role (then -> now)`` phrases."""
    def short(value):
        return value[:15] if value and value.startswith("sha256:") else (value or ABSENT)

    return [f"{role} ({short(recorded.get(role))} -> {short(current.get(role))})"
            for role in sorted(set(recorded) | set(current)) if recorded.get(role) != current.get(role)]
