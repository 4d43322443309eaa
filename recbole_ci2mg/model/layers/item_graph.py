r"""Item-item kNN graphs over modality features, cached beside the dataset.

FREEDOM (Zhou and Shen, MM '23, Eq. 1-3, after LATTICE) builds, once per
modality, the graph that links every item to the ``k`` items whose feature
rows are most similar in cosine, and freezes it. Here that graph is built in
row chunks (memory ``O(chunk · N + N · k)``, never a dense ``N × N``) and
saved under ``<dataset_path>/cache/`` with a key over everything it depends
on: the feature matrix the model receives, the observed mask, ``k`` and the
builder version, so a graph drawn under another mask is never reused.
"""

import hashlib
import os
from logging import getLogger

import numpy as np
import torch
from recbole.model.general_recommender.itemknn import ComputeSimilarity

from recbole_ci2mg.files import atomic_write

CACHE_VERSION = "knn-v1"  # bump when the builder's output changes
DENSE_BLOCK_ELEMENTS = 1 << 24  # similarity entries per chunk (64 MiB in float32)


def knn_neighbours(features, k, chunk_rows=None):
    r"""The ``k`` most cosine-similar rows of every row, the row itself included.

    .. math::
        S_{ij} = \frac{f_i^\top f_j}{\lVert f_i \rVert \lVert f_j \rVert}, \qquad
        \mathcal{N}_k(i) = \operatorname{top-}k_j \, S_{ij}

    The similarity is computed a block of rows at a time. A zero row (a
    modality missing everywhere) has similarity 0 to everything; its
    neighbours are then arbitrary but fixed.

    Args:
        features: ``[N, d]`` float tensor.
        k (int): neighbours per row; clipped to ``N``.
        chunk_rows (int): rows per block; default keeps a block at
            ``DENSE_BLOCK_ELEMENTS`` similarities.

    Returns:
        ``[N, min(k, N)]`` int64 tensor of column indices.
    """
    n = features.shape[0]
    k = min(int(k), n)
    if chunk_rows is None:
        chunk_rows = max(1, DENSE_BLOCK_ELEMENTS // max(n, 1))
    unit = torch.nn.functional.normalize(features.float(), dim=1)  # [N, d]
    out = torch.empty((n, k), dtype=torch.long)
    for start in range(0, n, chunk_rows):
        block = unit[start : start + chunk_rows] @ unit.T  # [chunk, N]
        out[start : start + chunk_rows] = torch.topk(block, k, dim=1).indices
    return out


def knn_norm_adj(neighbours, n_nodes, offset=0):
    r"""FREEDOM's normalised kNN adjacency :math:`D^{-1/2} A D^{-1/2}` (its Eq. 3).

    :math:`A_{ij} = 1` when :math:`j \in \mathcal{N}_k(i)`; :math:`D` holds the
    row sums of :math:`A` on both sides, as the paper's reference
    implementation does, so every stored value is :math:`1 / k`.

    Args:
        neighbours: ``[n, k]`` from :func:`knn_neighbours`.
        n_nodes (int): size of the square output (``n + offset`` at least).
        offset (int): added to row and column ids (1 skips RecBole's padding item 0).

    Returns:
        torch sparse COO tensor ``[n_nodes, n_nodes]``, coalesced.
    """
    n, k = neighbours.shape
    rows = torch.arange(n).repeat_interleave(k)
    cols = neighbours.reshape(-1)
    degree = torch.bincount(rows, minlength=n).float().clamp(min=1.0)
    inv_sqrt = degree.pow(-0.5)
    values = inv_sqrt[rows] * inv_sqrt[cols]
    indices = torch.stack([rows, cols]) + offset
    return torch.sparse_coo_tensor(indices, values, (n_nodes, n_nodes), check_invariants=True).coalesce()


def knn_cache_key(features, observed, k):
    """sha1 over the builder version, ``k``, the features' shape and bytes, and the observed mask."""
    digest = hashlib.sha1()
    features = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    observed = np.ascontiguousarray(np.asarray(observed, dtype=bool))
    digest.update(f"{CACHE_VERSION};k={int(k)};shape={features.shape};mask={observed.shape};".encode())
    digest.update(observed.tobytes())
    digest.update(features.tobytes())
    return digest.hexdigest()


def cached_knn_neighbours(features, observed, k, cache_dir=None, name="features"):
    r"""Item kNN neighbours (padding row 0 excluded), read from or written to ``cache_dir``.

    Args:
        features: ``[n_items, d]`` float tensor whose row 0 is RecBole's padding item.
        observed: ``[n_items]`` bool tensor, the modality's observed mask (part of the key).
        k (int): neighbours per item.
        cache_dir (str): folder of the cache; ``None`` disables caching.
        name (str): modality name, for the file name only.

    Returns:
        tuple: ``neighbours`` ``[n_items - 1, k']`` int64 in ids ``0..n_items-2``
        (add 1 for RecBole ids), ``path`` of the cache file (or ``None``) and
        ``loaded`` (True when read from the cache).
    """
    logger = getLogger()
    items = features[1:]
    path = None
    if cache_dir is not None:
        key = knn_cache_key(features.detach().cpu().numpy(), observed.detach().cpu().numpy(), k)
        safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
        path = os.path.join(cache_dir, f"knn-{safe_name}-k{int(k)}-{key}.npz")
        if os.path.isfile(path):
            try:
                with np.load(path, allow_pickle=False) as stored:
                    neighbours = torch.from_numpy(stored["neighbours"].astype(np.int64))
                if neighbours.shape[0] == items.shape[0]:
                    logger.info(f"kNN graph of {name} loaded from {path}")
                    return neighbours, path, True
                logger.warning(f"Ignoring the kNN cache {path}: it holds {neighbours.shape[0]} rows")
            except (OSError, ValueError, KeyError) as error:
                logger.warning(f"Ignoring the unreadable kNN cache {path}: {error}")

    neighbours = knn_neighbours(items, k)
    if path is not None:
        try:
            with atomic_write(path, "wb") as stream:
                np.savez(stream, neighbours=neighbours.numpy().astype(np.int64))
            logger.info(f"kNN graph of {name} cached in {path}")
        except OSError as error:
            logger.warning(f"Could not cache the kNN graph of {name} in {cache_dir}: {error}")
    return neighbours, path, False


def similarity_knn_edges(features, k, nodes=None, outsider_loops=True):
    r"""LATTICE's cosine kNN edges over the ``nodes`` only, in a fixed layout of ``k`` slots per row.

    .. math::
        A_{ij} = \max(0, S_{ij}) \;\; \text{for } j \in \mathcal{N}_k(i)

    where :math:`S` is the cosine similarity and :math:`\mathcal{N}_k(i)` the
    ``k`` most similar rows among ``nodes`` (the row itself included), as
    :func:`knn_neighbours`. A row outside ``nodes`` (e.g. an item whose
    modality is missing) has one edge, to itself with weight 1 (none with
    ``outsider_loops=False``), and is nobody's neighbour; negative
    similarities are cut at 0. Slots a row does
    not use (all but the first of an outsider's, and the last ``k - n'`` of
    every row when fewer than ``k`` rows take part) point to the row itself
    with weight 0 and are marked unused.

    Args:
        features: ``[N, d]`` float tensor.
        k (int): neighbours per row (at least 1).
        nodes: ``[N]`` bool tensor, the rows that take part; default all.
        outsider_loops (bool): whether a row outside ``nodes`` keeps its self-loop.

    Returns:
        tuple: ``neighbours`` ``[N, k]`` int64, ``weights`` ``[N, k]`` float and ``used``
        ``[N, k]`` bool, on the features' device.
    """
    n = features.shape[0]
    device = features.device
    nodes = torch.ones(n, dtype=torch.bool, device=device) if nodes is None else nodes.to(device)
    members = torch.nonzero(nodes).squeeze(1)  # [n']
    neighbours = torch.arange(n, device=device).unsqueeze(1).repeat(1, k)  # self-loops
    weights = torch.zeros(n, k, device=device)
    used = torch.zeros(n, k, dtype=torch.bool, device=device)
    if outsider_loops:
        weights[~nodes, 0], used[~nodes, 0] = 1.0, True
    if members.numel():
        unit = torch.nn.functional.normalize(features.float(), dim=1)[members]
        found = knn_neighbours(unit, k).to(device)  # [n', k'] in member positions
        width = found.shape[1]
        neighbours[members, :width] = members[found]
        weights[members, :width] = (unit.unsqueeze(1) * unit[found]).sum(dim=2).clamp(min=0.0)
        used[members, :width] = True
    return neighbours, weights, used


def co_consumption_knn_edges(interactions, k, outsider_loops=True):
    r"""A content-free item-item graph: each item's ``k`` nearest items by their training users, in
    :func:`similarity_knn_edges`' layout.

    .. math::
        A_{ij} = \frac{r_i^\top r_j}{\lVert r_i \rVert \lVert r_j \rVert} \;\; \text{for } j \in \mathcal{N}_k(i)

    with :math:`r_i` item ``i``'s column of the user-item matrix (ItemKNN's
    cosine, Aiolli, RecSys '13, computed by RecBole's ``ComputeSimilarity``).
    As in :func:`similarity_knn_edges` the row itself is its first neighbour
    (cosine 1) and ``k - 1`` others follow; an item without interactions is
    an outsider: its self-loop (weight 1) or, with ``outsider_loops=False``, an
    empty row. Slots a row does not use (an item with fewer than ``k - 1``
    co-consumed items) point to itself with weight 0.

    Args:
        interactions: ``[N_U, N_V]`` scipy sparse matrix, the training interactions.
        k (int): neighbours per row, the row itself included (at least 1).
        outsider_loops (bool): whether an item without interactions keeps its self-loop.

    Returns:
        tuple: ``neighbours`` ``[N_V, k]`` int64, ``weights`` ``[N_V, k]`` float and ``used`` ``[N_V, k]`` bool.
    """
    matrix = interactions.tocsr().astype(np.float32)
    n = matrix.shape[1]
    neighbours = torch.arange(n).unsqueeze(1).repeat(1, k)  # self-loops
    weights = torch.zeros(n, k)
    used = torch.zeros(n, k, dtype=torch.bool)
    seen = np.asarray(matrix.getnnz(axis=0) > 0)
    weights[:, 0] = torch.from_numpy(seen | outsider_loops).float()
    used[:, 0] = weights[:, 0] > 0
    if k > 1 and n > 1:
        _, similar = ComputeSimilarity(matrix, topk=min(k - 1, n - 1), method="item").compute_similarity()
        similar = similar.tocsc()  # column i: item i's neighbours (self excluded), zero cosines left out
        for item in np.flatnonzero(seen):
            start, end = similar.indptr[item], similar.indptr[item + 1]
            order = np.argsort(-similar.data[start:end], kind="stable")[: k - 1]
            found = torch.from_numpy(similar.indices[start:end][order].astype(np.int64))
            neighbours[item, 1 : 1 + found.numel()] = found
            weights[item, 1 : 1 + found.numel()] = torch.from_numpy(similar.data[start:end][order])
            used[item, 1 : 1 + found.numel()] = True
    return neighbours, weights, used


def symmetric_normalised(rows, cols, values, n):
    r"""Values of :math:`D^{-1/2} A D^{-1/2}` for the entries of ``A`` ``[n, n]``, :math:`D = \operatorname{diag}(A \mathbf{1})`.

    A row of degree 0 (an all-zero feature row) keeps value 0.
    """
    degree = torch.zeros(n, device=values.device).index_add_(0, rows, values)
    inv_sqrt = torch.where(degree > 0, degree.clamp(min=1e-12).rsqrt(), torch.zeros_like(degree))
    return values * inv_sqrt[rows] * inv_sqrt[cols]


def similarity_knn_adj(features, k, nodes=None):
    r"""LATTICE's normalised kNN graph with cosine weights, over the ``nodes`` only.

    .. math::
        \hat{A} = D^{-1/2} A D^{-1/2}, \;\; D = \operatorname{diag}(A \mathbf{1})

    with :math:`A` the edges of :func:`similarity_knn_edges` (its unused slots
    left out).

    Args:
        features: ``[N, d]`` float tensor.
        k (int): neighbours per row.
        nodes: ``[N]`` bool tensor, the rows that take part; default all.

    Returns:
        torch sparse COO tensor ``[N, N]``, coalesced, on the features' device.
    """
    n = features.shape[0]
    neighbours, weights, used = similarity_knn_edges(features, min(int(k), n), nodes)
    rows = torch.arange(n, device=features.device).unsqueeze(1).expand_as(neighbours)[used]
    cols, values = neighbours[used], weights[used]
    values = symmetric_normalised(rows, cols, values, n)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=True).coalesce()
