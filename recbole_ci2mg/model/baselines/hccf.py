r"""
HCCF
################################################

Reference:
    Lianghao Xia, Chao Huang, Yong Xu, Jiashu Zhao, Dawei Yin and Jimmy Xiangji
    Huang. "Hypergraph Contrastive Collaborative Filtering." in SIGIR 2022.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_uniform_initialization
from recbole.model.loss import BPRLoss
from recbole.utils import InputType

from recbole_ci2mg.model.layers.graph import symmetric_norm_adj


class HCCF(GeneralRecommender):
    r"""HCCF encodes users and items twice per layer, locally by graph convolution on the
    user-item graph and globally through a learnable hypergraph whose user and item
    incidence matrices are low-rank products of the embeddings, and aligns the two views
    with a cross-view InfoNCE. It reads interactions only, no item content.

    Per layer :math:`l = 1..L`:

    .. math::
        z^{(l)} = \bar{A} E^{(l-1)}, \qquad
        \Gamma^{(l)} = H \, (H^\top E^{(l-1)}), \quad H_U = E_U W_U,\; H_V = E_V W_V, \qquad
        E^{(l)} = z^{(l)} + \Gamma^{(l)}, \qquad E = \sum_{l=0}^{L} E^{(l)}

    with :math:`\bar{A}` the symmetrically normalised user-item graph and
    :math:`W_U, W_V \in \mathbb{R}^{d \times K}` (``hyper_num`` hyperedges). The loss is
    :math:`\mathcal{L}_{BPR} + \lambda_1 \sum_l (\mathcal{L}^{U}_{l} + \mathcal{L}^{V}_{l})
    + \lambda_2 \lVert \Theta \rVert^2`.

    Readings of the paper, where it is silent or its two released versions differ
    (this follows the authors' PyTorch release, which they describe as improved):

    - **No activations**: neither the local convolution nor the hypergraph
      layer applies the LeakyReLU of the paper's equations, and the
      hierarchical (multi-layer) hyperedge mapping is left out.
    - **Dropout**: during training the normalised graph's edges are kept with
      probability ``keep_rate`` (kept values scaled by ``1/keep_rate``) and
      the incidence matrices :math:`H_U, H_V` get dropout ``1 - keep_rate``,
      redrawn every batch; evaluation uses the full graph and no dropout.
    - **InfoNCE** (``ssl_reg`` :math:`\lambda_1`, ``ssl_temp`` τ): per layer,
      between the local view :math:`z^{(l)}` (gradient stopped) and the global
      view :math:`\Gamma^{(l)}`, cosine similarity, over the batch's distinct
      users and distinct positive items, the other nodes of the batch as
      negatives.
    - **Weight decay** (``reg_weight`` :math:`\lambda_2`): the squared norm of
      every parameter (embedding tables and hyperedge matrices), added to the
      loss of every batch. The release's default, 1e-7, lies outside the grid
      its README tunes over ({1e-2, 1e-3, 1e-4, 1e-5}); the default here, 1e-3,
      is the best of that grid's values tried on TikTok's validation set (the YAML gives the
      numbers). The authors suggest a simplified model for sparse data
      (``Model_sparse.py``); this is their full model.
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load dataset info
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.hyper_num = config["hyper_num"]
        self.keep_rate = config["keep_rate"]
        self.ssl_temp = config["ssl_temp"]
        self.ssl_reg = config["ssl_reg"]
        self.reg_weight = config["reg_weight"]
        if not 0.0 < self.keep_rate <= 1.0:
            raise ValueError(f"HCCF: keep_rate must be in (0, 1], got {self.keep_rate}.")

        # define layers and loss
        self.user_embedding = nn.Embedding(self.n_users, self.latent_dim)
        self.item_embedding = nn.Embedding(self.n_items, self.latent_dim)
        self.user_hyper = nn.Parameter(torch.empty(self.latent_dim, self.hyper_num))  # W_U
        self.item_hyper = nn.Parameter(torch.empty(self.latent_dim, self.hyper_num))  # W_V
        self.mf_loss = BPRLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data
        self.norm_adj_matrix = symmetric_norm_adj(self.interaction_matrix).to(self.device)  # Ā, [N, N]

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        nn.init.xavier_uniform_(self.user_hyper)
        nn.init.xavier_uniform_(self.item_hyper)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
        return super().train(mode)

    def drop_edges(self, adj):
        """``adj`` with each stored edge kept with probability ``keep_rate``, rescaled; ``adj`` in eval."""
        if not self.training or self.keep_rate >= 1.0:
            return adj
        keep = torch.rand(adj._nnz(), device=adj.device) < self.keep_rate
        return torch.sparse_coo_tensor(
            adj._indices()[:, keep], adj._values()[keep] / self.keep_rate, adj.shape, check_invariants=False, is_coalesced=True
        )

    @staticmethod
    def hyper_conv(incidence, embeddings):
        r""":math:`H (H^\top E)`: ``[n, K]`` incidence, ``[n, d]`` embeddings -> ``[n, d]``."""
        return incidence @ (incidence.T @ embeddings)

    def forward(self):
        r"""Final embeddings ``[N_U, d]``, ``[N_V, d]`` and the per-layer local and global views ``[N, d]``."""
        user_0, item_0 = self.user_embedding.weight, self.item_embedding.weight
        dropout = 1.0 - self.keep_rate if self.training else 0.0
        user_incidence = F.dropout(user_0 @ self.user_hyper, p=dropout, training=self.training)  # H_U, [N_U, K]
        item_incidence = F.dropout(item_0 @ self.item_hyper, p=dropout, training=self.training)  # H_V, [N_V, K]

        layers = [torch.cat([user_0, item_0])]
        local_views, global_views = [], []
        for _ in range(self.n_layers):
            previous = layers[-1]
            local = torch.sparse.mm(self.drop_edges(self.norm_adj_matrix), previous)  # z^(l)
            glob = torch.cat(
                [
                    self.hyper_conv(user_incidence, previous[: self.n_users]),
                    self.hyper_conv(item_incidence, previous[self.n_users :]),
                ]
            )  # Γ^(l)
            local_views.append(local)
            global_views.append(glob)
            layers.append(local + glob)
        final = torch.stack(layers).sum(dim=0)
        user_e, item_e = torch.split(final, [self.n_users, self.n_items])
        return user_e, item_e, local_views, global_views

    def info_nce(self, local, glob, nodes):
        r"""InfoNCE between the two views of ``nodes`` (distinct ids), in-batch negatives."""
        a = F.normalize(local[nodes], dim=1)  # [B, d]
        b = F.normalize(glob[nodes], dim=1)  # [B, d]
        logits = a @ b.T / self.ssl_temp  # [B, B]; diagonal = positives
        return F.cross_entropy(logits, torch.arange(nodes.shape[0], device=nodes.device))

    def calculate_loss(self, interaction):
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        user_e, item_e, local_views, global_views = self.forward()
        u_e = user_e[user]
        pos_scores = (u_e * item_e[pos_item]).sum(dim=1)
        neg_scores = (u_e * item_e[neg_item]).sum(dim=1)
        loss = self.mf_loss(pos_scores, neg_scores)

        users, items = torch.unique(user), torch.unique(pos_item) + self.n_users
        ssl_loss = 0.0
        for local, glob in zip(local_views, global_views):
            local = local.detach()
            ssl_loss = ssl_loss + self.info_nce(local, glob, users) + self.info_nce(local, glob, items)
        reg_loss = sum(p.pow(2).sum() for p in self.parameters())
        return loss + self.ssl_reg * ssl_loss + self.reg_weight * reg_loss

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        user_e, item_e, _, _ = self.forward()
        return (user_e[user] * item_e[item]).sum(dim=1)

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            self.restore_user_e, self.restore_item_e, _, _ = self.forward()
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
