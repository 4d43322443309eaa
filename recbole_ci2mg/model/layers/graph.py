r"""Normalised user-item propagation shared by the graph models.

Every graph here is built from the training split's interaction matrix
(``dataset.inter_matrix(form="coo")`` of ``train_data._dataset``): validation
and test interactions never enter it. Matrices are assembled with
``scipy.sparse`` COO arithmetic and returned as torch sparse COO tensors.
"""

import numpy as np
import scipy.sparse as sp
import torch


def to_sparse_tensor(matrix):
    """A ``scipy.sparse`` matrix as a coalesced float32 torch sparse COO tensor."""
    matrix = sp.coo_matrix(matrix)
    indices = torch.from_numpy(np.vstack([matrix.row, matrix.col]).astype(np.int64))
    values = torch.from_numpy(matrix.data.astype(np.float32))
    return torch.sparse_coo_tensor(indices, values, matrix.shape, check_invariants=True).coalesce()


def binary(inter_matrix):
    """``inter_matrix`` (users x items) with every stored entry set to 1, duplicates merged."""
    matrix = sp.coo_matrix(inter_matrix, dtype=np.float32).tocsr()
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    matrix.eliminate_zeros()
    return matrix.tocoo()


def symmetric_norm_adj(inter_matrix):
    r"""LightGCN's propagation matrix :math:`D^{-1/2} A D^{-1/2}`.

    .. math::
        A = \begin{pmatrix} 0 & R \\ R^T & 0 \end{pmatrix}

    Args:
        inter_matrix: ``[n_users, n_items]`` training interactions (scipy sparse).

    Returns:
        torch sparse tensor ``[n_users + n_items, n_users + n_items]``; rows of
        nodes without edges are empty (no division by zero).
    """
    R = binary(inter_matrix)
    n_users, n_items = R.shape
    A = sp.bmat([[None, R], [R.T, None]], format="coo", dtype=np.float32)
    A = sp.coo_matrix(A, shape=(n_users + n_items, n_users + n_items))
    degree = np.asarray(A.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    D = sp.diags(inv_sqrt)
    return to_sparse_tensor(D @ A @ D)


class MeanAggregation:
    r"""CI²MG's Eq. 1 over the training interactions, able to leave a batch's target edges out.

    Eq. 1 builds an item's modality view from the features of its users' items,
    and a user's from the features of the user's items. For a *training* pair
    (u, i) both sides therefore contain the pair itself: :math:`F^{U}_u` holds
    i's own projected features, and :math:`F^{V}_i` holds :math:`F^{U}_u / \deg(i)`.
    BPR can separate a training positive from a random negative through that
    self-term alone, a shortcut that no valid or test pair has (their edge is
    not in the graph). :meth:`without` gives the graph with the batch's positive
    edges removed, so training sees the target edge exactly as evaluation does:
    absent (the supervision/message-passing split of GNN link prediction).

    Attributes:
        user_from_items: :math:`D_U^{-1} R`, sparse ``[n_users, n_items]``.
        item_from_users: :math:`D_V^{-1} R^T`, sparse ``[n_items, n_users]``.
        item_has_neighbours: ``[n_items]`` bool.
    """

    def __init__(self, inter_matrix, device):
        R = binary(inter_matrix)
        self.n_users, self.n_items = R.shape
        users = torch.from_numpy(R.row.astype(np.int64)).to(device)
        items = torch.from_numpy(R.col.astype(np.int64)).to(device)
        self.edge_keys, order = torch.sort(users * self.n_items + items)  # one key per edge, for look-ups
        self.users, self.items = users[order], items[order]
        self.user_from_items, self.item_from_users, self.item_has_neighbours = self._normalised(self.users, self.items)

    def _normalised(self, users, items):
        user_degree = torch.bincount(users, minlength=self.n_users).float()
        item_degree = torch.bincount(items, minlength=self.n_items).float()
        user_from_items = torch.sparse_coo_tensor(
            torch.stack([users, items]), 1.0 / user_degree[users], (self.n_users, self.n_items), check_invariants=False
        ).coalesce()
        item_from_users = torch.sparse_coo_tensor(
            torch.stack([items, users]), 1.0 / item_degree[items], (self.n_items, self.n_users), check_invariants=False
        ).coalesce()
        return user_from_items, item_from_users, item_degree > 0

    def without(self, users, items):
        r"""The three Eq. 1 matrices of the training graph less the edges ``(users[k], items[k])``.

        Pairs that are not training edges are ignored.
        """
        keys = users * self.n_items + items
        position = torch.searchsorted(self.edge_keys, keys).clamp(max=self.edge_keys.numel() - 1)
        keep = torch.ones_like(self.edge_keys, dtype=torch.bool)
        keep[position[self.edge_keys[position] == keys]] = False
        return self._normalised(self.users[keep], self.items[keep])

    def __call__(self, item_features, graph=None):
        r"""Eq. 1 on ``item_features`` ``[n_items, d]`` over ``graph`` (default: every training edge).

        Returns:
            tuple: ``F^U`` ``[n_users, d]`` and ``F^V`` ``[n_items, d]``.
        """
        graph = graph or (self.user_from_items, self.item_from_users, self.item_has_neighbours)
        return mean_aggregate(*graph, item_features)


def lightgcn_propagate(norm_adj, embeddings, n_layers):
    r"""LightGCN propagation: the mean of :math:`\hat{A}^l E` for :math:`l = 0..L`.

    Args:
        norm_adj: ``[n_nodes, n_nodes]`` sparse, from :func:`symmetric_norm_adj`.
        embeddings: ``[n_nodes, d]``.
        n_layers (int): number of propagation steps :math:`L`.

    Returns:
        ``[n_nodes, d]``.
    """
    layers = [embeddings]
    for _ in range(n_layers):
        embeddings = torch.sparse.mm(norm_adj, embeddings)
        layers.append(embeddings)
    return torch.stack(layers, dim=1).mean(dim=1)


def mean_aggregate(user_from_items, item_from_users, item_has_neighbours, item_features):
    r"""CI²MG's Eq. 1: users average their items' features, items average their users'.

    .. math::
        F^{U} = D_U^{-1} R \bar{F}^{V}, \qquad F^{V} = D_V^{-1} R^T F^{U}

    An item with no training interaction has no users to average: it keeps its
    own feature row.

    Args:
        item_features: ``[n_items, d]``.

    Returns:
        tuple: ``F^U`` ``[n_users, d]`` and ``F^V`` ``[n_items, d]``.
    """
    user_features = torch.sparse.mm(user_from_items, item_features)
    aggregated = torch.sparse.mm(item_from_users, user_features)
    item_out = torch.where(item_has_neighbours.unsqueeze(1), aggregated, item_features)
    return user_features, item_out
