r"""Normalised user-item propagation shared by the graph models.

Every graph here is built from the training split's interaction matrix
(``dataset.inter_matrix(form="coo")`` of ``train_data._dataset``): validation
and test interactions never enter it. Matrices are assembled with
``scipy.sparse`` COO arithmetic and returned as torch sparse COO tensors, or held as :class:`ConstantSparse`
for products that backpropagate cheaply.
"""

import warnings
from dataclasses import dataclass

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
    r"""LightGCN's propagation matrix :math:`D^{-1/2} A D^{-1/2}` as a torch sparse COO tensor.

    See :func:`normalised_adjacency`.
    """
    return to_sparse_tensor(normalised_adjacency(inter_matrix))


def normalised_adjacency(inter_matrix):
    r"""LightGCN's propagation matrix :math:`D^{-1/2} A D^{-1/2}`.

    .. math::
        A = \begin{pmatrix} 0 & R \\ R^T & 0 \end{pmatrix}

    Args:
        inter_matrix: ``[n_users, n_items]`` training interactions (scipy sparse).

    Returns:
        ``scipy.sparse`` matrix ``[n_users + n_items, n_users + n_items]``; rows
        of nodes without edges are empty (no division by zero).
    """
    R = binary(inter_matrix)
    n_users, n_items = R.shape
    A = sp.bmat([[None, R], [R.T, None]], format="coo", dtype=np.float32)
    A = sp.coo_matrix(A, shape=(n_users + n_items, n_users + n_items))
    degree = np.asarray(A.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    D = sp.diags(inv_sqrt)
    return (D @ A @ D).tocoo()


class ConstantSparse:
    r"""A constant sparse matrix :math:`A` for products :math:`A X` that backpropagate to :math:`X`.

    Held in CSR on ``device`` together with its transpose, built once. The
    backward of :math:`A X` is then one more sparse product,
    :math:`A^T \nabla`; torch's own backward of ``torch.sparse.mm`` transposes
    (and, for COO, coalesces) :math:`A` at every call, which made it most of
    the cost of LightGCN-M's graph products (see BENCHMARKS.md, issue 11).

    Args:
        matrix: ``scipy.sparse`` matrix ``[n, n']``.
        device: where the products run.
    """

    def __init__(self, matrix, device):
        self.matrix = _csr(matrix, device)  # [n, n']
        self.transposed = _csr(sp.coo_matrix(matrix).T, device)  # [n', n]

    @property
    def shape(self):
        return tuple(self.matrix.shape)

    @property
    def T(self):
        """The transpose, sharing storage."""
        transposed = object.__new__(ConstantSparse)
        transposed.matrix, transposed.transposed = self.transposed, self.matrix
        return transposed

    def __matmul__(self, values):
        """:math:`A X` for dense ``values`` ``[n', d]``, ``[n, d]``."""
        return _ConstantSparseProduct.apply(values, self.matrix, self.transposed)

    def to_coo(self):
        """The matrix as a coalesced torch sparse COO tensor (for inspection)."""
        return self.matrix.to_sparse_coo().coalesce()


def _csr(matrix, device):
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.sum_duplicates()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data),
            matrix.shape,
        ).to(device)


class _ConstantSparseProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, matrix, transposed):
        ctx.transposed = transposed
        return matrix @ values.contiguous()

    @staticmethod
    def backward(ctx, grad):
        return ctx.transposed @ grad.contiguous(), None, None


@dataclass
class LeftOutEdges:
    r"""Training edges left out of CI²MG's Eq. 1 for one batch (:meth:`MeanAggregation.without`).

    Attributes:
        users, items: ``[E']`` the distinct left-out edges.
        user_degree: ``[n_users]`` float, each user's degree without them.
        item_degree: ``[n_items]`` float, each item's degree without them.
    """

    users: torch.Tensor
    items: torch.Tensor
    user_degree: torch.Tensor
    item_degree: torch.Tensor


class MeanAggregation:
    r"""CI²MG's Eq. 1 over the training interactions, able to leave a batch's target edges out.

    .. math::
        F^{U} = D_U^{-1} R \bar{F}^{V}, \qquad F^{V} = D_V^{-1} R^T F^{U}

    Eq. 1 builds an item's modality view from the features of its users' items,
    and a user's from the features of the user's items. For a *training* pair
    (u, i) both sides therefore contain the pair itself: :math:`F^{U}_u` holds
    i's own projected features, and :math:`F^{V}_i` holds :math:`F^{U}_u / \deg(i)`.
    BPR can separate a training positive from a random negative through that
    self-term alone, a shortcut that no valid or test pair has (their edge is
    not in the graph). :meth:`without` names the batch's positive edges, and
    the products leave them out, so training sees the target edge exactly as
    evaluation does: absent (the supervision/message-passing split of GNN link
    prediction).

    Eq. 1 is linear, so the graph less a few edges is never built: the sums
    over the whole graph (one product with the constant :math:`R`) lose the
    left-out edges' terms, :math:`O(B d)`, and are divided by the degrees
    without them.

    Attributes:
        interactions: :class:`ConstantSparse` binary :math:`R` ``[n_users, n_items]``.
        users, items: ``[E]`` the edges, sorted by ``users * n_items + items``.
        user_degree, item_degree: ``[n_users]``, ``[n_items]`` float.
    """

    def __init__(self, inter_matrix, device):
        R = binary(inter_matrix)
        self.n_users, self.n_items = R.shape
        self.interactions = ConstantSparse(R, device)
        users = torch.from_numpy(R.row.astype(np.int64)).to(device)
        items = torch.from_numpy(R.col.astype(np.int64)).to(device)
        self.edge_keys, order = torch.sort(users * self.n_items + items)  # one key per edge, for look-ups
        self.users, self.items = users[order], items[order]
        self.user_degree = torch.bincount(self.users, minlength=self.n_users).float()
        self.item_degree = torch.bincount(self.items, minlength=self.n_items).float()

    @property
    def item_has_neighbours(self):
        """``[n_items]`` bool: items with a training interaction."""
        return self.item_degree > 0

    def without(self, users, items):
        r"""The batch's edges ``(users[k], items[k])`` to leave out, as :class:`LeftOutEdges`.

        Pairs that are not training edges are ignored; a pair given twice is left out once.
        """
        keys = users * self.n_items + items
        position = torch.searchsorted(self.edge_keys, keys).clamp(max=self.edge_keys.numel() - 1)
        position = torch.unique(position[self.edge_keys[position] == keys])
        out_users, out_items = self.users[position], self.items[position]
        return LeftOutEdges(
            users=out_users,
            items=out_items,
            user_degree=self.user_degree - torch.bincount(out_users, minlength=self.n_users),
            item_degree=self.item_degree - torch.bincount(out_items, minlength=self.n_items),
        )

    def user_mean(self, item_values, left_out=None):
        r""":math:`D_U^{-1} R X` ``[n_users, d]`` for ``item_values`` ``[n_items, d]``; 0 for a user without items."""
        sums = self.interactions @ item_values
        if left_out is None:
            return _mean(sums, self.user_degree)
        sums = sums.index_add(0, left_out.users, item_values[left_out.items], alpha=-1)
        return _mean(sums, left_out.user_degree)

    def item_mean(self, user_values, left_out=None):
        r""":math:`D_V^{-1} R^T Y` ``[n_items, d]`` for ``user_values`` ``[n_users, d]``; 0 for an item without users."""
        sums = self.interactions.T @ user_values
        if left_out is None:
            return _mean(sums, self.item_degree)
        sums = sums.index_add(0, left_out.items, user_values[left_out.users], alpha=-1)
        return _mean(sums, left_out.item_degree)

    def __call__(self, item_features, left_out=None):
        r"""Eq. 1 on ``item_features`` ``[n_items, d]``, less ``left_out`` (default: every training edge).

        An item with no (remaining) training interaction has no users to
        average: it keeps its own feature row.

        Returns:
            tuple: ``F^U`` ``[n_users, d]`` and ``F^V`` ``[n_items, d]``.
        """
        user_features = self.user_mean(item_features, left_out)
        aggregated = self.item_mean(user_features, left_out)
        degree = self.item_degree if left_out is None else left_out.item_degree
        return user_features, torch.where((degree > 0).unsqueeze(1), aggregated, item_features)

    @property
    def user_from_items(self):
        r""":math:`D_U^{-1} R` as a torch sparse COO tensor (for inspection)."""
        return self._normalised(self.users, self.items, self.user_degree, (self.n_users, self.n_items))

    @property
    def item_from_users(self):
        r""":math:`D_V^{-1} R^T` as a torch sparse COO tensor (for inspection)."""
        return self._normalised(self.items, self.users, self.item_degree, (self.n_items, self.n_users))

    @staticmethod
    def _normalised(rows, cols, degree, shape):
        values = 1.0 / degree[rows]
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False).coalesce()


def _mean(sums, degree):
    """Rows of ``sums`` divided by ``degree``; rows of degree 0 are 0 (not the round-off of a cancelled sum)."""
    return torch.where((degree > 0).unsqueeze(1), sums / degree.clamp_min(1).unsqueeze(1), 0.0)


def lightgcn_layers(norm_adj, embeddings, n_layers, noise_eps=0.0):
    r"""The LightGCN layers :math:`\hat{A}^l E` for :math:`l = 0..L`, a list of ``L + 1`` ``[n_nodes, d]``.

    With ``noise_eps`` :math:`\epsilon > 0`, SimGCL's perturbed encoder (Yu et al., SIGIR '22):
    after every propagation step each row gets
    :math:`\Delta_n = \epsilon \, \bar{\Delta}_n / \|\bar{\Delta}_n\|_2 \odot \operatorname{sign}(E^{(l)}_n)`,
    :math:`\bar{\Delta}_n \sim U(0, 1)^d` drawn afresh (torch's generator), and the noise enters
    the next step. Layer 0 is left as it is.

    Args: as :func:`lightgcn_propagate`, and ``noise_eps`` (float, :math:`\ge 0`).
    """
    layers = [embeddings]
    for _ in range(n_layers):
        embeddings = norm_adj @ embeddings
        if noise_eps:
            noise = torch.nn.functional.normalize(torch.rand_like(embeddings), dim=1) * noise_eps
            embeddings = embeddings + torch.sign(embeddings) * noise
        layers.append(embeddings)
    return layers


def lightgcn_propagate(norm_adj, embeddings, n_layers):
    r"""LightGCN propagation: the mean of :math:`\hat{A}^l E` for :math:`l = 0..L`.

    Args:
        norm_adj: ``[n_nodes, n_nodes]``, a torch sparse tensor from :func:`symmetric_norm_adj`
            or a :class:`ConstantSparse` of :func:`normalised_adjacency`.
        embeddings: ``[n_nodes, d]``.
        n_layers (int): number of propagation steps :math:`L`.

    Returns:
        ``[n_nodes, d]``.
    """
    return torch.stack(lightgcn_layers(norm_adj, embeddings, n_layers), dim=1).mean(dim=1)
