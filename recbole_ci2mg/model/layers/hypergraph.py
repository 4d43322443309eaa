r"""Prototype hypergraph of one modality and its convolution (CI²MG, Eq. 3-5).

The K prototypes of a modality are the hyperedges; an item belongs to each
with a soft membership from its cosine similarity to the prototype. Every
product is taken in the order ``H (B^{-1} (H^T Q))``: cost
:math:`O(N \cdot K \cdot d)`, the :math:`N \times N` matrix
:math:`H W B^{-1} H^T` is never formed.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class PrototypeIncidence(nn.Module):
    r"""Soft incidence of items on K learnable prototypes (Eq. 3-4).

    .. math::
        H[i, k] = \mathrm{softmax}_k \left( \cos(f_i, e_k) / t \right)

    The paper takes the cosine itself as the incidence (Eq. 4). A cosine can
    be negative, and a hypergraph convolution needs a non-negative incidence
    with positive node and hyperedge degrees, so the cosine is turned into a
    probability over the K prototypes (the "likelihood of item i belonging to
    cluster k" of Eq. 3) with a softmax at temperature ``t``. Every entry is
    then positive, rows sum to one, and the prototypes receive gradients.

    A row without direction (norm at most ``eps``) has cosine 0 with every
    prototype, so uniform membership, and passes no gradient back
    (:func:`unit_rows`). Such rows are common: RecBole initialises the content
    projection's bias to zero, a missing row projects to the bias, and at 90 %
    missing about 1,000 TikTok items aggregate only missing rows. Through
    ``F.normalize`` (whose gradient at a zero row is ``1/eps``, 1e12) they gave
    the bias gradients of 1e9 to 1e10 at the first step, which left Adam's
    second moment for the bias so large that the bias barely moved for the rest
    of training.

    Shapes: ``features`` ``[N, d]`` -> ``H`` ``[N, K]``.
    """

    def __init__(self, n_prototypes, dim, temperature):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"hyper_temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.prototypes = nn.Parameter(torch.empty(n_prototypes, dim))  # E^m, [K, d]
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.prototypes)

    def forward(self, features):
        cosine = unit_rows(features) @ unit_rows(self.prototypes).T  # Eq. 4, [N, K]
        return torch.softmax(cosine / self.temperature, dim=1)


def unit_rows(x, eps=1e-6):
    r"""Rows of ``x`` ``[N, d]`` scaled to unit norm; rows of norm at most ``eps`` are 0, with zero gradient.

    ``F.normalize`` divides by ``max(||x||, eps)`` instead, so an all-zero row
    gets the gradient ``1/eps``.
    """
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > eps, x / norm.clamp_min(eps), torch.zeros_like(x))


class HypergraphConv(nn.Module):
    r"""One hypergraph convolution layer (Eq. 5, HGNN form).

    .. math::
        Q^{(l+1)} = \sigma\left(D_v^{-1} H W_e B_e^{-1} H^T Q^{(l)} \Theta^{(l)}\right)

    with :math:`W_e = \mathrm{diag}(w)` positive hyperedge weights (shared by
    the layers of one modality, passed in), :math:`B_e = \mathrm{diag}(H^T
    \mathbf{1})` hyperedge degrees, :math:`D_v = \mathrm{diag}(H w)` node
    degrees, :math:`\Theta^{(l)}` a learnable ``[d, d]`` map and
    :math:`\sigma` a LeakyReLU.

    Shapes: ``Q`` ``[N, d]``, ``H`` ``[N, K]``, ``edge_weight`` ``[K]`` -> ``[N, d]``.
    """

    def __init__(self, dim, negative_slope=0.2):
        super().__init__()
        self.theta = nn.Linear(dim, dim, bias=False)
        self.negative_slope = negative_slope
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.theta.weight)

    def forward(self, Q, H, edge_weight):
        edge_degree, node_degree = hypergraph_degrees(H, edge_weight)
        edges = self.theta(H.T @ Q) / edge_degree.unsqueeze(1)  # B_e^{-1} (H^T Q) Θ, [K, d]: Θ on K rows, not N
        nodes = (H * edge_weight) @ edges / node_degree.unsqueeze(1)  # D_v^{-1} H W_e (.), [N, d]
        return F.leaky_relu(nodes, self.negative_slope)


def hypergraph_degrees(H, edge_weight, floor=1e-12):
    r"""Hyperedge degrees :math:`B_e = H^T \mathbf{1}` ``[K]`` and node degrees :math:`D_v = H w` ``[N]``.

    Both are positive for a softmax incidence and positive weights; ``floor``
    only guards against float underflow of a hyperedge nobody belongs to.
    """
    edge_degree = H.sum(dim=0).clamp_min(floor)
    node_degree = (H @ edge_weight).clamp_min(floor)
    return edge_degree, node_degree


class PrototypeHypergraph(nn.Module):
    r"""Intra-modality generation of one modality (Eq. 3-5).

    The incidence is computed once from :math:`Q^{(0)} = F^{V,m}` and shared by
    the ``n_layers`` convolutions; the output is the last layer :math:`Q^{m,(L)}`.

    Shapes: ``item_features`` ``[N, d]`` -> ``(Q [N, d], H [N, K])``.
    """

    def __init__(self, dim, n_prototypes, n_layers, temperature):
        super().__init__()
        self.incidence = PrototypeIncidence(n_prototypes, dim, temperature)
        # W_e = diag(softplus(raw)), positive; softplus(0.5413) = 1.
        self.raw_edge_weight = nn.Parameter(torch.full((n_prototypes,), 0.5413))
        self.layers = nn.ModuleList(HypergraphConv(dim) for _ in range(n_layers))

    @property
    def edge_weight(self):
        return F.softplus(self.raw_edge_weight)

    def forward(self, item_features):
        H = self.incidence(item_features)
        Q = item_features
        for layer in self.layers:
            Q = layer(Q, H, self.edge_weight)
        return Q, H
