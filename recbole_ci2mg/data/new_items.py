r"""The new-item setting: items whose training interactions are removed, drawn by training popularity.

A share ``new_item_rate`` of the items that have training interactions lose
all of them; they keep their valid and test interactions, so they are ranked
for their test users from content alone. The drawn items are a pure function
of the item tokens, their training degrees, ``new_item_rate`` and
``new_item_seed``: not of the training ``seed``, the model, the mask nor
RecBole's internal id order, so every model and rerun of a comparison sees the
same new items.

The draw is stratified by training popularity: items with training
interactions are sorted by training degree (ties by token) and cut into
:data:`POPULARITY_BINS` bins of near-equal size, and each bin gives up the
same share of its items (the counts apportioned by largest remainder, so the
total is ``round(new_item_rate * n)``). Cold and warm items are then both
among the new ones, in their proportions, instead of a draw that happens to
hit mostly the long tail.
"""

import os
import zlib

import numpy as np

from recbole_ci2mg.data.masks import _count
from recbole_ci2mg.files import atomic_write

POPULARITY_BINS = 10
FILE_HEADER = ["item_id", "train_interactions"]


def check_new_item_settings(new_item_rate, new_item_seed):
    """Raise a clear error for a bad ``new_item_rate`` or ``new_item_seed``."""
    if isinstance(new_item_rate, bool) or not isinstance(new_item_rate, (int, float)):
        raise ValueError(
            f"Config key new_item_rate = {new_item_rate!r} is not a number: give the fraction of the "
            f"items with training interactions that lose them, in [0, 1)."
        )
    if not 0.0 <= float(new_item_rate) < 1.0:
        raise ValueError(
            f"Config key new_item_rate = {new_item_rate} is outside [0, 1): it is the fraction of "
            f"items whose training interactions are removed (0.2 for 20%); at 1 nothing would be left to train on."
        )
    if isinstance(new_item_seed, bool) or not isinstance(new_item_seed, int):
        raise ValueError(f"Config key new_item_seed = {new_item_seed!r} must be an integer.")


def popularity_bins(item_tokens, train_degree, n_bins=POPULARITY_BINS):
    r"""Positions of the items with training interactions, cut into ``n_bins`` popularity bins.

    Returns:
        list: int arrays of positions into ``item_tokens``, least popular bin
        first; bins are near-equal in size (empty ones left out).
    """
    tokens = np.asarray([str(t) for t in item_tokens])
    degree = np.asarray(train_degree)
    warm = np.flatnonzero(degree > 0)
    ordered = warm[np.lexsort((tokens[warm], degree[warm]))]
    return [part for part in np.array_split(ordered, min(n_bins, max(len(ordered), 1))) if len(part)]


def draw_new_items(item_tokens, train_degree, new_item_rate, new_item_seed, n_bins=POPULARITY_BINS):
    r"""Draw the new items: a share of every popularity bin of the items with training interactions.

    Args:
        item_tokens (sequence of str): raw item tokens, any order.
        train_degree (sequence of int): each item's number of training interactions.
        new_item_rate (float): in [0, 1).
        new_item_seed (int): the only source of randomness.

    Returns:
        numpy.ndarray: bool, aligned with ``item_tokens``, True for a new item.
        Items without training interactions are never drawn (they are cold already).
    """
    check_new_item_settings(new_item_rate, new_item_seed)
    new = np.zeros(len(item_tokens), dtype=bool)
    bins = popularity_bins(item_tokens, train_degree, n_bins)
    total = _count(new_item_rate, sum(len(part) for part in bins))
    if total == 0:
        return new
    quotas = np.array([new_item_rate * len(part) for part in bins])
    counts = np.floor(quotas).astype(int)
    extra = total - counts.sum()  # largest remainders first, ties to the less popular bin
    counts[np.argsort(-(quotas - counts), kind="stable")[:extra]] += 1
    rng = np.random.default_rng([new_item_seed, zlib.crc32(b"new_items")])
    for part, count in zip(bins, counts):
        new[part[rng.permutation(len(part))[:count]]] = True
    return new


def new_item_file_name(dataset_name, new_item_rate, new_item_seed):
    """File name under which the drawn new items are saved, beside the masks."""
    return f"{dataset_name}.new-items-rate{new_item_rate:g}-seed{new_item_seed}.items"


def save_new_items(path, item_tokens, train_degree):
    r"""Write the new items as a tab-separated file: ``item_id``, then its training interactions before removal.

    Written to a temporary file then renamed, so a reader never sees half a file.
    """
    lines = ["\t".join(FILE_HEADER)] + [f"{token}\t{int(d)}" for token, d in zip(item_tokens, train_degree)]
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")


def load_new_items(path):
    r"""Read a file written by :func:`save_new_items`.

    Returns:
        dict: raw item token -> training interactions before removal.
    """
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    if not rows or rows[0] != FILE_HEADER:
        raise ValueError(
            f"New-item file {path} has no header line 'item_id<TAB>train_interactions': it was not "
            f"written by recbole_ci2mg; delete it to draw the new items again."
        )
    items = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[1].isdigit():
            raise ValueError(
                f"New-item file {path}, line {line_no}: expected an item token and its number of "
                f"training interactions, got {row!r}; delete the file to draw the new items again."
            )
        if row[0] in items:
            raise ValueError(f"New-item file {path}, line {line_no}: item {row[0]} appears twice.")
        items[row[0]] = int(row[1])
    return items


def keep_or_check_saved(path, item_tokens, train_degree):
    r"""Save the drawn new items at ``path``, or check them against the file already there.

    A saved file must list exactly the items drawn now, with the same training
    degrees: another list means the training split changed since it was drawn
    (or the file was edited), and the run stops rather than use new items that
    other runs did not see.

    Args:
        item_tokens, train_degree: the drawn new items and their training interactions before removal.

    Returns:
        bool: whether the file already existed (and matched).
    """
    drawn = {str(token): int(d) for token, d in zip(item_tokens, train_degree)}
    if not os.path.isfile(path):
        save_new_items(path, list(drawn), list(drawn.values()))
        return False
    saved = load_new_items(path)
    if saved != drawn:
        only_saved = sorted(set(saved) - set(drawn))
        only_drawn = sorted(set(drawn) - set(saved))
        changed = sorted(t for t in set(saved) & set(drawn) if saved[t] != drawn[t])
        raise ValueError(
            f"New-item file {path} lists {len(saved)} items, but new_item_rate and new_item_seed draw "
            f"{len(drawn)} from the training split now: {len(only_saved)} listed items are not drawn "
            f"(e.g. {only_saved[:3]}), {len(only_drawn)} drawn items are not listed (e.g. {only_drawn[:3]}), "
            f"{len(changed)} have another training degree (e.g. {changed[:3]}). The training split "
            f"changed since the file was written, or the file was edited. Delete it to draw the new "
            f"items again (results recorded with the old ones are then for other data)."
        )
    return True
