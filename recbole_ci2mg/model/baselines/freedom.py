r"""
FREEDOM
################################################

Reference:
    Xin Zhou and Zhiqi Shen. "A Tale of Two Graphs: Freezing and Denoising Graph
    Structures for Multimodal Recommendation." in ACM MM 2023.
"""

import os
from logging import getLogger

import numpy as np
import torch
import torch.nn as nn
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_uniform_initialization
from recbole.model.loss import BPRLoss
from recbole.utils import InputType

from recbole_ci2mg.data import require_modalities
from recbole_ci2mg.model.layers.graph import binary, lightgcn_propagate, symmetric_norm_adj
from recbole_ci2mg.model.layers.item_graph import cached_knn_neighbours, knn_norm_adj


class FREEDOM(GeneralRecommender):
    r"""FREEDOM freezes an item-item kNN graph built once from the modality features and
    propagates item ID embeddings over it, while a LightGCN propagates user and item ID
    embeddings over a user-item graph whose edges are pruned, degree-sensitively, anew
    every training epoch.

    .. math::
        S = \sum_m \alpha_m \, D_m^{-1/2} A_m D_m^{-1/2}, \qquad
        \tilde{h}_i = (S^{L_{mm}} E^{V})_i, \qquad
        \hat{y}_{ui} = e_u^\top (e_i + \tilde{h}_i)

    where :math:`A_m` is the kNN graph of modality ``m`` and :math:`e_u, e_i`
    the LightGCN outputs; the loss is
    :math:`\mathcal{L}_{BPR} + \lambda \sum_m \mathcal{L}_{BPR}^m`, where
    :math:`\mathcal{L}_{BPR}^m` scores :math:`e_u` against the projected
    features :math:`W_m f_i^m + b_m`.

    Readings of the paper and its reference implementation, where the paper is silent:

    - **M modalities.** The paper weights two (image :math:`\alpha_v`, text
      :math:`1 - \alpha_v`, with :math:`\alpha_v = 0.1`). ``modality_weights``
      maps each modality name to a weight (normalised to sum to 1); unset, the
      modalities weigh the same. :math:`\lambda` (``reg_weight``, the
      reference implementation's name) multiplies the sum of the modality BPR
      terms; it is not an L2 weight, and there is no other regularisation.
    - **kNN graph.** Cosine similarity of the raw (mean-imputed) features, the
      item itself among its ``knn_k`` neighbours, :math:`D_m` the row sums
      (every value :math:`1/k`), as the reference does. RecBole's padding item
      0 has no edges. FREEDOM cannot take the observed mask: items missing a
      modality share the imputed mean row and become one another's
      neighbours. Graphs are cached under ``<dataset>/cache/`` with a key over
      features, mask and ``k`` (:mod:`recbole_ci2mg.model.layers.item_graph`).
    - **Edge pruning.** Once per training epoch (the first ``calculate_loss``
      after ``model.train()``, which RecBole's trainer calls at every epoch
      start), ``round((1 - dropout) · |E|)`` training edges are kept, drawn
      without replacement with probability proportional to
      :math:`1/\sqrt{d_u d_i}` (Efraimidis-Spirakis keys, the same
      distribution as successive multinomial draws, with no limit on the
      number of edges), and the kept graph is normalised again. Evaluation
      propagates over the full training graph.
    - **Features** enter as trainable copies (as in the reference
      implementation, which wraps them in ``nn.Embedding(freeze=False)``);
      the kNN graph is built from the raw values before training and never
      changes.
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.logger = getLogger()

        # load dataset info
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)
        self.modality_names = require_modalities(dataset, type(self).__name__)
        features = [dataset.modality_features[name].float() for name in self.modality_names]
        observed = [dataset.modality_observed[name].bool() for name in self.modality_names]
        dataset_path = getattr(dataset, "dataset_path", None)

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.n_ui_layers = config["n_ui_layers"]
        self.n_mm_layers = config["n_mm_layers"]
        self.knn_k = config["knn_k"]
        self.dropout = config["dropout"]
        self.reg_weight = config["reg_weight"]
        self.modality_weights = self._modality_weights(config["modality_weights"])
        use_cache = config["knn_cache"] is None or bool(config["knn_cache"])
        self.cache_dir = os.path.join(dataset_path, "cache") if use_cache and dataset_path else None
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FREEDOM: dropout (the share of edges pruned) must be in [0, 1), got {self.dropout}.")

        # define layers and loss
        self.user_embedding = nn.Embedding(self.n_users, self.latent_dim)
        self.item_embedding = nn.Embedding(self.n_items, self.latent_dim)
        self.features = nn.ParameterList(nn.Parameter(f.clone()) for f in features)  # f^m, [N_V, d_m]
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], self.latent_dim) for f in features)  # W_m, b_m
        self.mf_loss = BPRLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: the frozen item-item graph and the user-item graphs
        self.knn_cache_files, self.knn_cache_loaded = [], []
        self.mm_adj = self.build_item_graph(features, observed).to(self.device)  # S, [N_V, N_V]
        self.norm_adj_matrix = symmetric_norm_adj(self.interaction_matrix).to(self.device)  # [N, N]
        R = binary(self.interaction_matrix)
        self.edge_users = torch.from_numpy(R.row.astype(np.int64)).to(self.device)  # [|E|]
        self.edge_items = torch.from_numpy(R.col.astype(np.int64)).to(self.device)  # [|E|]
        user_degree = torch.bincount(self.edge_users, minlength=self.n_users).float()
        item_degree = torch.bincount(self.edge_items, minlength=self.n_items).float()
        self.edge_probs = (user_degree[self.edge_users] * item_degree[self.edge_items]).rsqrt()  # 1/sqrt(d_u d_i)
        self.masked_adj = None
        self._prune_next = True

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def _modality_weights(self, weights):
        if weights is None:
            return [1.0 / len(self.modality_names)] * len(self.modality_names)
        unknown = set(weights) - set(self.modality_names)
        missing = [name for name in self.modality_names if name not in weights]
        if unknown or missing:
            raise ValueError(
                f"FREEDOM: modality_weights must name exactly the modalities {self.modality_names}; "
                f"unknown {sorted(unknown)}, missing {missing}."
            )
        raw = [float(weights[name]) for name in self.modality_names]
        if min(raw) < 0 or sum(raw) <= 0:
            raise ValueError(f"FREEDOM: modality_weights must be non-negative with a positive sum, got {weights}.")
        return [w / sum(raw) for w in raw]

    def build_item_graph(self, features, observed):
        r"""Eq. 1-3: :math:`S = \sum_m \alpha_m D_m^{-1/2} A_m D_m^{-1/2}`, sparse ``[N_V, N_V]``."""
        graph = None
        for name, f, seen, weight in zip(self.modality_names, features, observed, self.modality_weights):
            neighbours, path, loaded = cached_knn_neighbours(f, seen, self.knn_k, self.cache_dir, name)
            self.knn_cache_files.append(path)
            self.knn_cache_loaded.append(loaded)
            adj = knn_norm_adj(neighbours, self.n_items, offset=1) * weight
            graph = adj if graph is None else graph + adj
        return graph.coalesce()

    def pruned_adj(self):
        r"""Degree-sensitive edge pruning: a normalised graph of ``(1 - dropout)`` of the edges. ``[N, N]``."""
        if self.dropout <= 0.0:
            return self.norm_adj_matrix
        n_keep = max(1, int(round(self.edge_users.numel() * (1.0 - self.dropout))))
        keys = torch.rand(self.edge_probs.shape, device=self.device).log() / self.edge_probs  # log U^(1/p)
        kept = torch.topk(keys, n_keep).indices
        users, items = self.edge_users[kept], self.edge_items[kept]
        user_degree = torch.bincount(users, minlength=self.n_users).float()
        item_degree = torch.bincount(items, minlength=self.n_items).float()
        values = (user_degree[users] * item_degree[items]).rsqrt()
        rows = torch.cat([users, items + self.n_users])
        cols = torch.cat([items + self.n_users, users])
        n_nodes = self.n_users + self.n_items
        return torch.sparse_coo_tensor(
            torch.stack([rows, cols]), torch.cat([values, values]), (n_nodes, n_nodes), check_invariants=False
        ).coalesce()

    def train(self, mode=True):
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
            self._prune_next = True  # RecBole calls model.train() at the start of every epoch
        return super().train(mode)

    def forward(self, adj):
        r"""User ``[N_U, d]`` and item ``[N_V, d]`` representations over the user-item graph ``adj``."""
        h = self.item_embedding.weight
        for _ in range(self.n_mm_layers):
            h = torch.sparse.mm(self.mm_adj, h)  # S^{L_mm} E^V
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        user_e, item_e = torch.split(lightgcn_propagate(adj, ego, self.n_ui_layers), [self.n_users, self.n_items])
        return user_e, item_e + h

    def calculate_loss(self, interaction):
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None
        if self._prune_next or self.masked_adj is None:
            self.masked_adj = self.pruned_adj()
            self._prune_next = False

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        user_all, item_all = self.forward(self.masked_adj)
        u_e = user_all[user]
        pos_scores = (u_e * item_all[pos_item]).sum(dim=1)
        neg_scores = (u_e * item_all[neg_item]).sum(dim=1)
        loss = self.mf_loss(pos_scores, neg_scores)

        modality_loss = 0.0
        for f, projection in zip(self.features, self.projections):
            pos_m = projection(f[pos_item])  # W_m f_i^m + b_m, [B, d]
            neg_m = projection(f[neg_item])
            modality_loss = modality_loss + self.mf_loss((u_e * pos_m).sum(dim=1), (u_e * neg_m).sum(dim=1))
        return loss + self.reg_weight * modality_loss

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        user_all, item_all = self.forward(self.norm_adj_matrix)
        return (user_all[user] * item_all[item]).sum(dim=1)

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            self.restore_user_e, self.restore_item_e = self.forward(self.norm_adj_matrix)
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
