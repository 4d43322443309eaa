r"""
DGMRec
################################################

Reference:
    Jiwan Kim, Hongseok Kang, Sein Kim, Kibum Kim and Chanyoung Park. "Disentangling and
    Generating Modalities for Recommendation in Missing Modality Scenarios." in SIGIR 2025,
    arXiv:2504.16352.

Reference code:
    https://github.com/ptkjw1997/DGMRec (read for the paper's open points; nothing copied).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_uniform_initialization
from recbole.model.loss import BPRLoss, EmbLoss
from recbole.utils import InputType

from recbole_ci2mg.data import require_modalities
from recbole_ci2mg.model.layers.augment import info_nce
from recbole_ci2mg.model.layers.club import CLUBSample
from recbole_ci2mg.model.layers.graph import MeanAggregation, lightgcn_propagate, symmetric_norm_adj
from recbole_ci2mg.model.layers.item_graph import similarity_knn_adj


def two_layer_mlp(in_dim, out_dim):
    """``Linear -> tanh -> Linear``, the translators and generators of DGMRec."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.Tanh(), nn.Linear(out_dim, out_dim))


@dataclass
class Representations:
    r"""Every representation one DGMRec pass computes (lists hold one tensor per modality).

    Attributes:
        user_id, item_id: LightGCN outputs on the user-item graph, ``[N_U, d]``, ``[N_V, d]``.
        general, specific: encoder outputs :math:`E_g^m`, :math:`E_s^m`, ``[N_V, d]``.
        preference: item preference filters :math:`\sigma(P_{i,m})`, ``[N_V, d]``.
        item_general, item_specific: filtered features propagated on the item-item
            graph, :math:`\bar{E}_g^m`, :math:`\bar{E}_s^m`, ``[N_V, d]``.
        user_general, user_specific: the mean of a user's items' ``item_*``, ``[N_U, d]``.
    """

    user_id: torch.Tensor
    item_id: torch.Tensor
    general: list
    specific: list
    preference: list
    item_general: list
    item_specific: list
    user_general: list
    user_specific: list

    def fused(self):
        r"""User ``[N_U, d]`` and item ``[N_V, d]`` vectors.

        .. math::
            z = e + \Big(\frac{1}{M}\sum_m \bar{E}_g^m + \sum_m \bar{E}_s^m\Big) / (M + 1)
        """
        n = len(self.general)
        user = self.user_id + (sum(self.user_general) / n + sum(self.user_specific)) / (n + 1)
        item = self.item_id + (sum(self.item_general) / n + sum(self.item_specific)) / (n + 1)
        return user, item


class DGMRec(GeneralRecommender):
    r"""DGMRec splits every modality's item features into a general part (one encoder shared
    by all modalities) and a specific part (one encoder per modality), filters both by the
    modality preferences of the item's users, refines them on a per-modality item-item kNN
    graph, and adds them to LightGCN's ID embeddings. A missing modality is generated from
    the general features of the other modalities (translators) and the item's preference
    for that modality (generators), decoded back to a feature row.

    .. math::
        E_g^m = \sigma(f_g(\tanh(h_m(X^m)))), \quad E_s^m = \sigma(f_s^m(X^m)), \quad
        \tilde{E}^m = E^m \odot \sigma(P_{i,m}), \quad P_{i,m} = \tfrac{1}{|N_i|}\sum_{u \in N_i} p_{u,m},

    :math:`\bar{E}^m = (S^m)^{L} \tilde{E}^m` on the kNN graph :math:`S^m`, users take the
    mean of their items' :math:`\bar{E}^m`, and the score is the dot product of the fused
    vectors (:meth:`Representations.fused`). The loss adds to BPR: CLUB between
    :math:`\bar{E}_s^m` and :math:`\bar{E}_g^m` and InfoNCE between the general features
    of two modalities (disentangling); MSE of the translator :math:`T_m([\bar{E}_g^o]_{o \ne m})
    \approx \bar{E}_g^m`, the generator :math:`G_m(\sigma(P_{i,m})) \approx \bar{E}_s^m`
    and the decoder :math:`D_m([\bar{E}_g^m \| \bar{E}_s^m]) \approx X^m` (generation);
    InfoNCE between users and their positive items per representation (UI alignment) and
    between ID embeddings and summed general features (behaviour-modality alignment).

    Readings of the paper and its reference code, where the paper is silent or the two differ:

    - **Observed rows only.** Mean-imputed rows (``modality_observed`` False) are never a
      target or a sample: the InfoNCE over items and the translator loss take the batch's
      items observed in every modality, the generator, decoder and CLUB terms the items
      observed in that modality. The item-item graph links observed items only (the
      ``knn_k`` most similar among them, cosine weights cut at 0, LATTICE's
      :math:`D^{-1/2} A D^{-1/2}`); an item missing the modality has a self-loop and is
      nobody's neighbour, as in the reference code, which computes the neighbours over
      every row and then drops the edges of missing items.
    - **Generation.** From the second training epoch on, at the start of each epoch
      (the first ``calculate_loss`` after ``model.train()``), the decoded features
      :math:`D_m([T_m(\cdot) \| G_m(\cdot)])` are written into the feature rows of the
      items that miss modality ``m`` but have another modality observed (the reference
      code writes from the first epoch, with untrained networks). Items missing every
      modality have nothing to generate from and keep the mean row. Every
      ``graph_refresh_step`` epochs the graph rows of the generated items become
      :math:`\lambda S^m_{new} + (1 - \lambda) S^m_{old}` (``graph_blend``), where
      :math:`S^m_{new}` is the kNN graph over the observed and generated rows of that
      time. The graphs travel with the checkpoint (``other_parameter``), the written
      rows with the state dict.
    - **Fixed features.** Feature rows are buffers, changed only by generation. The
      reference code makes them trainable (``nn.Embedding``, ``freeze=False``), which lets
      BPR push down the rows of items without training interactions (they only ever
      appear as negatives), against the content path that must score them.
    - **Translator and generator targets** are the filtered, propagated features the
      decoder reads (:math:`\bar{E}^m`); the reference code fits the generator to the
      unpropagated :math:`E_s^m` and propagates its output afterwards. With more than
      two modalities the translator of ``m`` reads the concatenated general features of
      all the others; the inter-modal InfoNCE runs over the cycle of modality pairs
      (``m_1 m_2, …, m_M m_1``). DGMRec needs at least two modalities.
    - **Preferences.** :math:`p_{u,m}` are per-modality user embeddings and the filter is
      :math:`\sigma(P_{i,m})`, as the paper writes (the reference code uses
      :math:`\tanh(W_m e_u)` on the ID embedding). An item with no training interaction
      has :math:`P_{i,m} = 0`, so its features pass at half strength: it is scored from
      its content, not dropped to zero.
    - **CLUB.** The variational network :math:`q(E_g \mid E_s)`
      (:class:`~recbole_ci2mg.model.layers.club.CLUBSample`) is trained by RecBole's
      optimiser on its log-likelihood of the same (detached) pairs the bound is taken
      over, every batch (its loss enters the backward pass but adds 0 to the reported
      loss); the reference code trains it with a second Adam (lr 1e-4), five steps before
      each epoch, on unpropagated features.
    - **Batches.** UI alignment takes the batch's (user, positive) pairs (its term on
      summed general features at ``inter_modal_temperature``, as the reference code);
      the user and item terms of the other InfoNCE losses the batch's distinct users and
      items. The
      perturbation :math:`x + \epsilon\,\mathrm{sign}(x) \odot \hat{n}` (``perturb_eps``,
      :math:`\hat{n}` a row-normalised uniform noise) is applied to the inputs of the
      translators, generators and decoder in training only, so generated features are
      deterministic. With no item to generate (no missing modality), the translator and
      generator losses are off, as the reference code's full-modality setting.
    - **Regularisation.** RecBole's ``EmbLoss`` on the batch's LightGCN outputs
      (``reg_weight``, a constant 1e-5 in the reference code) and on the positive items'
      :math:`\bar{E}_g^m + \bar{E}_s^m` (``content_reg_weight``).
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load dataset info
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)
        self.modality_names = require_modalities(dataset, type(self).__name__)
        if len(self.modality_names) < 2:
            raise ValueError(
                f"DGMRec generates a missing modality from the other modalities, so it needs at least "
                f"two; the dataset declares {self.modality_names}. Add a modality to `modalities` in the "
                f"dataset's YAML, or run a model that takes one (VBPR, FREEDOM)."
            )
        features = [dataset.modality_features[name].float() for name in self.modality_names]
        observed = torch.stack([dataset.modality_observed[name].bool() for name in self.modality_names], dim=1)
        self.n_modalities = len(features)

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.n_ui_layers = config["n_ui_layers"]
        self.n_mm_layers = config["n_mm_layers"]
        self.knn_k = config["knn_k"]
        self.inter_modal_weight = config["inter_modal_weight"]
        self.inter_modal_temperature = config["inter_modal_temperature"]
        self.ui_align_weight = config["ui_align_weight"]
        self.ui_align_temperature = config["ui_align_temperature"]
        self.bm_align_weight = config["bm_align_weight"]
        self.bm_align_temperature = config["bm_align_temperature"]
        self.club_weight = config["club_weight"]
        self.club_hidden_size = config["club_hidden_size"]
        self.generation_weight = config["generation_weight"]
        self.recon_weight = config["recon_weight"]
        self.reg_weight = config["reg_weight"]
        self.content_reg_weight = config["content_reg_weight"]
        self.graph_blend = config["graph_blend"]
        self.graph_refresh_step = config["graph_refresh_step"]
        self.perturb_eps = config["perturb_eps"]
        self._check_settings()

        # define layers and loss
        d, n_mod = self.latent_dim, self.n_modalities
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        self.user_preference = nn.ModuleList(nn.Embedding(self.n_users, d) for _ in features)  # p_{u,m}
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], d) for f in features)  # h_m
        self.general_encoder = nn.Linear(d, d)  # f_g, shared by all modalities
        self.specific_encoders = nn.ModuleList(nn.Linear(f.shape[1], d) for f in features)  # f_s^m
        self.translators = nn.ModuleList(two_layer_mlp((n_mod - 1) * d, d) for _ in features)  # T_m
        self.generators = nn.ModuleList(two_layer_mlp(d, d) for _ in features)  # G_m
        self.decoders = nn.ModuleList(nn.Linear(2 * d, f.shape[1]) for f in features)  # D_m
        if self.club_weight > 0:
            self.estimators = nn.ModuleList(CLUBSample(d, d, self.club_hidden_size) for _ in features)
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: graphs of the training interactions and of the observed features
        self.norm_adj_matrix = symmetric_norm_adj(self.interaction_matrix).to(self.device)  # [N, N]
        self.mean_graph = MeanAggregation(self.interaction_matrix, self.device)  # D_U^-1 R, D_V^-1 R^T
        for m, f in enumerate(features):
            self.register_buffer(f"features_{m}", f.clone())  # X^m [N_V, d_m]; generated rows are written in
        self.register_buffer("observed", observed, persistent=False)  # [N_V, M]
        # items missing modality m with another modality observed: the rows the generator fills
        self.register_buffer("generated", ~observed & observed.any(dim=1, keepdim=True), persistent=False)
        self.generates = bool(self.generated.any())
        self.mm_adj = [
            similarity_knn_adj(f, self.knn_k, observed[:, m]).to(self.device) for m, f in enumerate(features)
        ]  # S^m, sparse [N_V, N_V]
        self.epochs_started = 0
        self._epoch_start = True

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        self.other_parameter_name = ["restore_user_e", "restore_item_e", "mm_adj", "epochs_started"]

    def _check_settings(self):
        temperatures = {
            "inter_modal_temperature": self.inter_modal_temperature,
            "ui_align_temperature": self.ui_align_temperature,
            "bm_align_temperature": self.bm_align_temperature,
        }
        for key, value in temperatures.items():
            if not value > 0:
                raise ValueError(f"DGMRec: {key} must be > 0, got {value}.")
        if not 0.0 <= self.graph_blend <= 1.0:
            raise ValueError(
                f"DGMRec: graph_blend (λ, the weight of the new kNN rows) must be in [0, 1], got {self.graph_blend}."
            )
        step = self.graph_refresh_step
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(
                f"DGMRec: graph_refresh_step must be an integer >= 0 (epochs between graph refreshes, 0 = never), "
                f"got {self.graph_refresh_step!r}."
            )
        if not isinstance(self.knn_k, int) or self.knn_k < 1:
            raise ValueError(f"DGMRec: knn_k must be a positive integer, got {self.knn_k!r}.")

    @property
    def features(self):
        r"""The feature matrices :math:`X^m`, ``[N_V, d_m]`` each, generated rows included."""
        return [getattr(self, f"features_{m}") for m in range(self.n_modalities)]

    def load_other_parameter(self, para):
        super().load_other_parameter(para)
        if para is not None and "mm_adj" in para:
            self.mm_adj = [adj.to(self.device) for adj in self.mm_adj]

    def train(self, mode=True):
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
            self._epoch_start = True  # RecBole calls model.train() at the start of every epoch
        return super().train(mode)

    def perturb(self, x):
        r""":math:`x + \epsilon\,\mathrm{sign}(x) \odot \hat{n}`, :math:`\hat{n}` row-normalised uniform noise."""
        noise = F.normalize(torch.rand_like(x), dim=-1)
        return x + self.perturb_eps * torch.sign(x) * noise

    def representations(self):
        r"""One pass of the encoders and both graphs: a :class:`Representations`."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        user_id, item_id = torch.split(
            lightgcn_propagate(self.norm_adj_matrix, ego, self.n_ui_layers), [self.n_users, self.n_items]
        )
        general, specific, preference = [], [], []
        item_general, item_specific, user_general, user_specific = [], [], [], []
        for m, features in enumerate(self.features):
            g = torch.sigmoid(self.general_encoder(torch.tanh(self.projections[m](features))))  # E_g^m
            s = torch.sigmoid(self.specific_encoders[m](features))  # E_s^m
            p = torch.sigmoid(torch.sparse.mm(self.mean_graph.item_from_users, self.user_preference[m].weight))
            h = torch.cat([g * p, s * p], dim=1)  # [N_V, 2d]
            for _ in range(self.n_mm_layers):
                h = torch.sparse.mm(self.mm_adj[m], h)
            users = torch.sparse.mm(self.mean_graph.user_from_items, h)  # [N_U, 2d]
            general.append(g)
            specific.append(s)
            preference.append(p)
            item_general.append(h[:, : self.latent_dim])
            item_specific.append(h[:, self.latent_dim :])
            user_general.append(users[:, : self.latent_dim])
            user_specific.append(users[:, self.latent_dim :])
        return Representations(
            user_id, item_id, general, specific, preference, item_general, item_specific, user_general, user_specific
        )

    def translate(self, reps, m, rows, noise=False):
        r""":math:`T_m` on the other modalities' :math:`\bar{E}_g` of ``rows``: ``[len(rows), d]``."""
        source = torch.cat([reps.item_general[o][rows] for o in range(self.n_modalities) if o != m], dim=1)
        return self.translators[m](self.perturb(source) if noise else source)

    def generate_specific(self, reps, m, rows, noise=False):
        r""":math:`G_m` on the preference filter :math:`\sigma(P_{i,m})` of ``rows``: ``[len(rows), d]``."""
        source = reps.preference[m][rows]
        return self.generators[m](self.perturb(source) if noise else source)

    @torch.no_grad()
    def generate_features(self):
        r"""Decoded features of every item for every modality, list of ``[N_V, d_m]``.

        :math:`\hat{X}^m = D_m([T_m([\bar{E}_g^o]_{o \ne m}) \| G_m(\sigma(P_{i,m}))])`;
        only the rows of :attr:`generated` are ever written into the features.
        """
        reps = self.representations()
        rows = torch.arange(self.n_items, device=self.device)
        generated = []
        for m, decoder in enumerate(self.decoders):
            general, specific = self.translate(reps, m, rows), self.generate_specific(reps, m, rows)
            generated.append(decoder(torch.cat([general, specific], dim=1)))
        return generated

    @torch.no_grad()
    def fill_missing(self):
        r"""Write the generated features into the rows of items missing a modality."""
        for m, generated in enumerate(self.generate_features()):
            rows = self.generated[:, m]
            self.features[m][rows] = generated[rows]

    @torch.no_grad()
    def refresh_graphs(self):
        r"""Blend the graph rows of generated items with a kNN graph over observed and generated rows."""
        for m, features in enumerate(self.features):
            rows = self.generated[:, m]
            if not rows.any():
                continue
            fresh = similarity_knn_adj(features.detach(), self.knn_k, self.observed[:, m] | rows)
            old_index, old_value = self.mm_adj[m].indices(), self.mm_adj[m].values()
            old_value = torch.where(rows[old_index[0]], (1.0 - self.graph_blend) * old_value, old_value)
            new_index, new_value = fresh.indices(), fresh.values()
            keep = rows[new_index[0]]
            self.mm_adj[m] = torch.sparse_coo_tensor(
                torch.cat([old_index, new_index[:, keep]], dim=1),
                torch.cat([old_value, self.graph_blend * new_value[keep]]),
                self.mm_adj[m].shape,
                check_invariants=True,
            ).coalesce()

    def start_epoch(self):
        r"""Per-epoch work: generation from the second epoch on, graph refreshes every ``graph_refresh_step``."""
        self.epochs_started += 1
        completed = self.epochs_started - 1
        if completed >= 1 and self.generates:
            self.fill_missing()
            if self.graph_refresh_step and completed % self.graph_refresh_step == 0:
                self.refresh_graphs()

    @staticmethod
    def _nce(anchor, positive, temperature):
        # InfoNCE, 0 on an empty selection (e.g. no item observed in every modality)
        if anchor.shape[0] == 0:
            return anchor.new_zeros(())
        return info_nce(anchor, positive, temperature)

    @staticmethod
    def _mse(prediction, target):
        if prediction.shape[0] == 0:
            return prediction.new_zeros(())
        return F.mse_loss(prediction, target)

    def disentangle_loss(self, reps, users, items):
        r"""InfoNCE between modalities' general features, and CLUB between general and specific ones."""
        complete = items[self.observed[items].all(dim=1)]
        pairs = [(0, 1)] if self.n_modalities == 2 else [
            (m, (m + 1) % self.n_modalities) for m in range(self.n_modalities)
        ]
        inter_modal = 0.0
        tau = self.inter_modal_temperature
        for a, b in pairs:
            inter_modal = inter_modal + self._nce(reps.general[a][complete], reps.general[b][complete], tau)
            inter_modal = inter_modal + self._nce(reps.user_general[a][users], reps.user_general[b][users], tau)
        club, estimator = 0.0, 0.0
        if self.club_weight > 0:
            for m in range(self.n_modalities):
                seen = self.observed[:, m]
                if seen.sum() < 2:
                    continue
                specific, general = reps.item_specific[m][seen], reps.item_general[m][seen]
                club = club + self.estimators[m].upper_bound(specific, general)
                nll = self.estimators[m].learning_loss(specific, general)
                estimator = estimator + (nll - nll.detach())  # trains q only; adds 0 to the reported loss
        return self.inter_modal_weight * inter_modal + self.club_weight * club + estimator

    def generation_loss(self, reps, items):
        r"""Translators and generators on the batch's observed items; decoders on every observed item."""
        loss = 0.0
        if self.generates:
            complete = items[self.observed[items].all(dim=1)]
            for m in range(self.n_modalities):
                seen = items[self.observed[items, m]]
                specific = self.generate_specific(reps, m, seen, noise=True)
                general = self.translate(reps, m, complete, noise=True)
                loss = loss + self._mse(specific, reps.item_specific[m][seen])
                loss = loss + self._mse(general, reps.item_general[m][complete])
            loss = self.generation_weight * loss
        recon = 0.0
        for m, features in enumerate(self.features):
            seen = self.observed[:, m]
            decoded_from = torch.cat([reps.item_general[m][seen], reps.item_specific[m][seen]], dim=1).detach()
            recon = recon + self._mse(self.decoders[m](self.perturb(decoded_from)), features[seen].detach())
        return loss + self.recon_weight * recon

    def alignment_loss(self, reps, user, pos_item, users, items):
        r"""UI alignment (users with their positive items) and behaviour-modality alignment (ID with general)."""
        user_general, item_general = sum(reps.user_general), sum(reps.item_general)
        ui = self._nce(reps.user_id[user], reps.item_id[pos_item], self.ui_align_temperature)
        ui = ui + self._nce(user_general[user], item_general[pos_item], self.inter_modal_temperature)
        for m in range(self.n_modalities):
            user_specific, item_specific = reps.user_specific[m][user], reps.item_specific[m][pos_item]
            ui = ui + self._nce(user_specific, item_specific, self.ui_align_temperature)
        bm = self._nce(reps.item_id[items], item_general[items], self.bm_align_temperature)
        bm = bm + self._nce(reps.user_id[users], user_general[users], self.bm_align_temperature)
        return self.ui_align_weight * ui + self.bm_align_weight * bm

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None
        if self._epoch_start:
            self._epoch_start = False
            self.start_epoch()

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        reps = self.representations()
        user_all, item_all = reps.fused()
        u_e = user_all[user]
        pos_scores = (u_e * item_all[pos_item]).sum(dim=1)
        neg_scores = (u_e * item_all[neg_item]).sum(dim=1)
        loss = self.mf_loss(pos_scores, neg_scores)

        loss = loss + self.reg_weight * self.reg_loss(
            reps.user_id[user], reps.item_id[pos_item], reps.item_id[neg_item]
        )
        for general, specific in zip(reps.item_general, reps.item_specific):
            loss = loss + self.content_reg_weight * self.reg_loss((general + specific)[pos_item])

        users = torch.unique(user)
        batch_items = torch.unique(torch.cat([pos_item, neg_item]))
        loss = loss + self.disentangle_loss(reps, users, batch_items)
        loss = loss + self.generation_loss(reps, batch_items)
        loss = loss + self.alignment_loss(reps, user, pos_item, users, torch.unique(pos_item))
        return loss

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        user_all, item_all = self.representations().fused()
        return (user_all[user] * item_all[item]).sum(dim=1)

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            self.restore_user_e, self.restore_item_e = self.representations().fused()
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
