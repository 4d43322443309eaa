"""Simulated missing modalities: drawing, saving and loading item-level masks.

A mask says, for every item (by raw item token) and every modality, whether
the modality is observed. Masks are a pure function of the item tokens, the
modality names, ``missing_rate``, ``missing_mode`` and ``mask_seed``: they do
not depend on the training ``seed`` nor on RecBole's internal id order, so
every model of a comparison, and every rerun, sees the same mask.
"""

import os
import zlib

import numpy as np

from recbole_ci2mg.files import atomic_write

MISSING_MODES = ("independent", "item")


def check_mask_settings(missing_rate, missing_mode, mask_seed):
    """Raise a clear error for a bad ``missing_rate``, ``missing_mode`` or ``mask_seed``."""
    if isinstance(missing_rate, bool) or not isinstance(missing_rate, (int, float)):
        raise ValueError(
            f"Config key missing_rate = {missing_rate!r} is not a number: "
            f"give the fraction of items whose modality is dropped, in [0, 1]."
        )
    if not 0.0 <= float(missing_rate) <= 1.0:
        raise ValueError(
            f"Config key missing_rate = {missing_rate} is outside [0, 1]: it is "
            f"the fraction of items whose modality is dropped (0.9 for 90%)."
        )
    if missing_mode not in MISSING_MODES:
        raise ValueError(
            f"Config key missing_mode = {missing_mode!r} is unknown: use one of "
            f"{', '.join(MISSING_MODES)}."
        )
    if isinstance(mask_seed, bool) or not isinstance(mask_seed, int):
        raise ValueError(f"Config key mask_seed = {mask_seed!r} must be an integer.")


def check_mask_source(mask_file, missing_rate):
    """Refuse a mask file together with a missing rate: the file's mask would replace the rate's."""
    if mask_file and missing_rate:
        raise ValueError(
            f"mask_file = {mask_file!r} and missing_rate = {missing_rate} are both set, but a mask "
            f"file replaces the mask drawn at missing_rate, so the rate would be ignored. Use one or "
            f"the other: drop missing_rate (--missing_rate, --missing_rates) or set it to 0 to train "
            f"on the file's mask, or drop mask_file to draw a mask at that rate."
        )


def _rng(mask_seed, stream):
    # One generator per named stream, so that adding a modality to a dataset
    # does not change the mask already drawn for another one.
    return np.random.default_rng([mask_seed, zlib.crc32(stream.encode("utf-8"))])


def _count(missing_rate, n):
    # Round half up: the drawn fraction is within half an item of the rate.
    return int(np.floor(missing_rate * n + 0.5))


def draw_observed_masks(item_tokens, modality_names, missing_rate, missing_mode, mask_seed):
    r"""Draw which (item, modality) pairs stay observed.

    Args:
        item_tokens (sequence of str): raw item tokens, any order.
        modality_names (sequence of str): the dataset's modalities.
        missing_rate (float): in [0, 1].
        missing_mode (str): ``independent``: each modality loses exactly
            ``round(missing_rate * n)`` items, drawn independently per modality.
            ``item``: ``round(missing_rate * n)`` items are hit; they are split
            into ``M + 1`` near-equal groups, group ``j < M`` loses modality
            ``j`` only (modalities in sorted name order) and the last group
            loses every modality. Each modality then misses about
            ``2 / (M + 1)`` of the hit items (all of them when ``M = 1``).
        mask_seed (int): the only source of randomness.

    Returns:
        dict: modality name -> bool array aligned with ``item_tokens``, True
        where the modality is observed.
    """
    check_mask_settings(missing_rate, missing_mode, mask_seed)
    tokens = np.asarray([str(t) for t in item_tokens])
    n = len(tokens)
    # Draw over tokens in sorted order, then map back to the caller's order.
    order = np.argsort(tokens, kind="stable")
    n_drop = _count(missing_rate, n)
    observed = {name: np.ones(n, dtype=bool) for name in modality_names}
    if n_drop == 0:
        return observed
    if missing_mode == "independent":
        for name in modality_names:
            dropped = _rng(mask_seed, f"independent/{name}").permutation(n)[:n_drop]
            observed[name][order[dropped]] = False
    else:
        names = sorted(modality_names)
        hit = _rng(mask_seed, "item").permutation(n)[:n_drop]
        groups = np.array_split(hit, len(names) + 1)
        for name, group in zip(names, groups[:-1]):
            observed[name][order[group]] = False
        for name in names:
            observed[name][order[groups[-1]]] = False
    return observed


def mask_file_name(dataset_name, missing_rate, missing_mode, mask_seed):
    """File name under which a drawn mask is saved beside the dataset."""
    return f"{dataset_name}.{missing_mode}-rate{missing_rate:g}-seed{mask_seed}.mask"


def save_masks(path, item_tokens, observed):
    r"""Write masks as a tab-separated file keyed by raw item token.

    Header ``item_id`` then one column per modality; 1 = observed, 0 = missing.
    Written to a temporary file then renamed, so a reader never sees half a file.
    """
    names = list(observed)
    lines = ["\t".join(["item_id"] + names)]
    columns = [observed[name].astype(np.int8) for name in names]
    for i, token in enumerate(item_tokens):
        lines.append("\t".join([str(token)] + [str(col[i]) for col in columns]))
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")


def load_masks(path, item_tokens, modality_names):
    r"""Read a mask file written by :func:`save_masks` (or by hand, same layout).

    The file must cover exactly the dataset's items and modalities: a mask made
    for another item set or other modalities is refused, never silently
    realigned.

    Returns:
        dict: modality name -> bool array aligned with ``item_tokens``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Mask file {path} (config key mask_file) does not exist: give the path "
            f"of a mask saved by an earlier run (under <dataset>/masks/), or remove "
            f"mask_file to draw one from missing_rate, missing_mode and mask_seed."
        )
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    if not rows or rows[0][0] != "item_id":
        raise ValueError(
            f"Mask file {path} has no header line 'item_id<TAB><modality>...': "
            f"write one column per modality with 1 = observed, 0 = missing."
        )
    header, body = rows[0], rows[1:]
    names = header[1:]
    if sorted(names) != sorted(modality_names):
        raise ValueError(
            f"Mask file {path} has modalities {names} but the dataset has "
            f"{list(modality_names)}: it was made for another dataset; regenerate it."
        )
    file_masks = {}
    for line_no, row in enumerate(body, start=2):
        if len(row) != len(header) or any(v not in ("0", "1") for v in row[1:]):
            raise ValueError(
                f"Mask file {path}, line {line_no}: expected an item token and "
                f"{len(names)} values of 0 or 1, got {row!r}."
            )
        if row[0] in file_masks:
            raise ValueError(f"Mask file {path}, line {line_no}: item {row[0]} appears twice.")
        file_masks[row[0]] = row[1:]
    tokens = [str(t) for t in item_tokens]
    absent = [t for t in tokens if t not in file_masks]
    extra = set(file_masks) - set(tokens)
    if absent or extra:
        raise ValueError(
            f"Mask file {path} was made for a different item set: {len(absent)} of "
            f"the dataset's {len(tokens)} items have no row (e.g. {absent[:3]}) and "
            f"{len(extra)} rows name items the dataset does not have (e.g. "
            f"{sorted(extra)[:3]}). Use a mask saved for this dataset, or remove "
            f"mask_file to draw a new one."
        )
    return {
        name: np.array([file_masks[t][j] == "1" for t in tokens], dtype=bool)
        for j, name in enumerate(names)
    }
