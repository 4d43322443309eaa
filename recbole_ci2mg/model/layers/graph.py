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


def row_norm_pair(inter_matrix):
    r"""The two mean-aggregation matrices of CI²MG's Eq. 1: :math:`D_U^{-1} R` and :math:`D_V^{-1} R^T`.

    Returns:
        tuple: ``user_from_items`` ``[n_users, n_items]``, ``item_from_users``
        ``[n_items, n_users]`` (torch sparse; an empty row stays empty) and
        ``item_has_neighbours`` ``[n_items]`` bool.
    """
    R = binary(inter_matrix).tocsr()
    user_degree = np.asarray(R.sum(axis=1)).ravel()
    item_degree = np.asarray(R.sum(axis=0)).ravel()

    def inverse(degree):
        out = np.zeros_like(degree)
        out[degree > 0] = 1.0 / degree[degree > 0]
        return sp.diags(out)

    user_from_items = inverse(user_degree) @ R
    item_from_users = inverse(item_degree) @ R.T.tocsr()
    return (
        to_sparse_tensor(user_from_items),
        to_sparse_tensor(item_from_users),
        torch.from_numpy(item_degree > 0),
    )


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
