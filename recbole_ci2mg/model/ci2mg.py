r"""
CI2MG
################################################

Reference:
    Zhenghong Lin et al. "Contrastive Intra- and Inter-Modality Generation for
    Enhancing Incomplete Multimedia Recommendation." in ACM MM 2023.

No official implementation exists. Where the paper is silent this file follows
``design/ci2mg-model.md``; each decision is stated where it is made.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_uniform_initialization
from recbole.model.loss import BPRLoss, EmbLoss
from recbole.utils import InputType

from recbole_ci2mg.data import require_modalities
from recbole_ci2mg.model.layers.graph import (
    MeanAggregation,
    lightgcn_propagate,
    symmetric_norm_adj,
)
from recbole_ci2mg.model.layers.hypergraph import PrototypeHypergraph
from recbole_ci2mg.model.layers.transport import InterModalityTransport

SWITCHES = ("use_intra", "use_inter", "use_contrastive", "use_task_guided")


class CI2MG(GeneralRecommender):
    r"""CI²MG completes missing item modalities from items of the same prototype cluster
    (hypergraph convolution) and from the other modalities (optimal transport), aligns
    the two views contrastively, and scores users and items on their ID and completed
    modality embeddings.

    Readings of the paper, where it is silent or ambiguous:

    - **Inputs.** Each modality is standardised with its observed rows' mean
      and standard deviation; missing rows are re-imputed with the observed
      mean from the mask, so they are exactly zero after standardisation and
      the model never reads a missing row's raw values. A learnable linear map
      ``d_m -> d`` projects each modality (needed because ``d_m != d``).
    - **Eq. 1** aggregates the projected features over training interactions;
      an item without any keeps its own projected row. In training, the
      batch's positive edges are left out of this aggregation
      (``leave_batch_edges_out``, default True): with them in, a positive's
      own features sit on both sides of its Eq. 13 score, a shortcut BPR
      learns and evaluation never offers (see
      :class:`~recbole_ci2mg.model.layers.graph.MeanAggregation`).
    - **Eq. 2** is a LightGCN propagation (mean over layers of the
      symmetrically normalised graph), the common and stronger reading of the
      paper's per-layer ``σ(D^{-1} R X W)``.
    - **Eq. 3-5**: incidence by a softmax over the K prototypes of the
      cosine similarity at temperature ``hyper_temperature``
      (:class:`~recbole_ci2mg.model.layers.hypergraph.PrototypeIncidence`),
      HGNN convolution with learnable positive hyperedge weights, LeakyReLU.
    - **Eq. 6-9**: see :mod:`recbole_ci2mg.model.layers.transport`
      (``ot_solver``: ``dense`` or ``scalable`` mini-batch OT with low-rank ΔT).
    - **Eq. 10**: InfoNCE with cosine similarity at temperature
      ``cl_temperature`` between the intra view :math:`Q^m` and the inter view
      :math:`\hat{Q}^m`, over the batch's distinct positive items (the other
      items of the batch are the negatives), averaged over items, summed over
      modalities.
    - **Eq. 11**: :math:`Z^m = \mathrm{LeakyReLU}(\mathrm{BN}([Q^m \| \hat{Q}^m] W + b))`.
      Two readings of the BN, both about Eq. 13 where Z^m is concatenated
      with the ID embedding and scored against F^{U,m}:

      * *Statistics* (``bn_running_stats``, default False). Every forward
        pass, training or evaluation, normalises the whole item set at once,
        so the training "batch" is the population and its statistics are
        exact; by default evaluation uses those same exact statistics, so it
        scores the model that was trained. ``True`` is PyTorch's default
        (running statistics in evaluation); it evaluates a different model:
        the exponential average starts at variance 1 and lags the true
        variance, so after the first epoch on TikTok at 90% missing eval-mode
        Z^m was ~30x smaller than in training and the model was ranked almost
        by its ID block alone (the whole of its epoch-0 validation peak).
      * *Scale* (``bn_init_scale``, the initial BN weight γ; default 1.0,
        PyTorch's). With γ = 1 every dimension of Z^m has unit variance, so a
        row has norm ~sqrt(d) (≈ 5 after the LeakyReLU), 10-50x the ID
        embeddings, and the modality blocks dominate the dot product of
        Eq. 13. γ = 1/sqrt(d) (rows of norm ~1) or 0 (the branch starts
        switched off, as with zero-initialised BN γ in residual networks) are
        available; on TikTok at 90% missing neither improved validation
        Recall@20 (Adam grows γ back within a few epochs), so the default is
        unchanged. See benchmarks/results/ci2mg_tiktok_diagnosis.md.
    - **Eq. 12**: the reconstruction target is fixed: a linear decoder maps
      :math:`Z^m` back to ``d_m`` and is compared with the standardised raw
      features on observed rows only (mean squared error per entry, so
      ``rec_weight`` means the same for any ``d_m``; summed over modalities).
    - **Eq. 15**: ``reg_weight`` (λ3) applies RecBole's ``EmbLoss`` to the
      batch's ID embeddings, as LightGCN does.

    Ablation (paper Table 3): ``use_intra``, ``use_inter``, ``use_contrastive``,
    ``use_task_guided``. A component that is off falls back to its input:
    :math:`Q^m = F^{V,m}` without intra, no :math:`\hat{Q}^m` without inter, and
    without task guidance :math:`Z^m` is the mean of the views present, with no
    reconstruction loss. All four off is LightGCN-M.
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load dataset info
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)
        self.modality_names = require_modalities(dataset, type(self).__name__)
        raw_features = [dataset.modality_features[name] for name in self.modality_names]
        observed = [dataset.modality_observed[name].bool() for name in self.modality_names]
        self.n_modalities = len(self.modality_names)

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.require_pow = config["require_pow"] or False
        self.leave_batch_edges_out = config["leave_batch_edges_out"] is not False
        self.use_intra, self.use_inter, self.use_contrastive, self.use_task_guided = (
            bool(config[switch]) for switch in SWITCHES
        )
        if self.use_inter and self.n_modalities < 2:
            self.logger.info(
                f"{type(self).__name__}: one modality ({self.modality_names[0]}), so there is no other "
                f"modality to transport from: inter-modality generation (use_inter) is off."
            )
            self.use_inter = False
        if self.use_contrastive and not self.use_inter:
            self.logger.info(
                f"{type(self).__name__}: modality-aware contrastive learning contrasts the intra view "
                f"with the inter view; without inter-modality generation it is off (use_contrastive)."
            )
            self.use_contrastive = False
        if self.use_intra:
            self.n_prototypes = self._require(config, "n_prototypes")
            self.hyper_layers = self._require(config, "hyper_layers")
            self.hyper_temperature = self._require(config, "hyper_temperature")
        if self.use_inter:
            self.ot_solver = self._require(config, "ot_solver")
            self.ot_reg = self._require(config, "ot_reg")
            self.ot_max_iter = self._require(config, "ot_max_iter")
            self.ot_tol = self._require(config, "ot_tol")
            self.ot_block_size = self._require(config, "ot_block_size")
            self.ot_delta_rank = self._require(config, "ot_delta_rank")
            self.ot_differentiable = bool(config["ot_differentiable"])
            self.ot_plan_refresh = config["ot_plan_refresh"] or "step"
        if self.use_contrastive:
            self.cl_weight = self._require(config, "cl_weight")
            self.cl_temperature = self._require(config, "cl_temperature")
        if self.use_task_guided:
            self.rec_weight = self._require(config, "rec_weight")
            self.bn_running_stats = bool(config["bn_running_stats"])  # unset: exact statistics (see docstring)
            self.bn_init_scale = config["bn_init_scale"]
            if self.bn_init_scale is None:
                self.bn_init_scale = 1.0  # PyTorch's default γ

        # define layers and loss
        d = self.latent_dim
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], d) for f in raw_features)
        if self.use_intra:
            self.hypergraphs = nn.ModuleList(
                PrototypeHypergraph(d, self.n_prototypes, self.hyper_layers, self.hyper_temperature)
                for _ in raw_features
            )
        if self.use_inter:
            self.transport = InterModalityTransport(
                self.n_items,
                self.n_modalities,
                solver=self.ot_solver,
                reg=self.ot_reg,
                max_iter=self.ot_max_iter,
                tol=self.ot_tol,
                block_size=self.ot_block_size,
                delta_rank=self.ot_delta_rank,
                differentiable=self.ot_differentiable,
                seed=config["seed"] or 0,
                refresh=self.ot_plan_refresh,
            )
        if self.use_task_guided:
            fused_dim = 2 * d if self.use_inter else d
            self.generators = nn.ModuleList(nn.Linear(fused_dim, d) for _ in raw_features)  # W, b of Eq. 11
            self.generator_norms = nn.ModuleList(
                nn.BatchNorm1d(d, track_running_stats=self.bn_running_stats) for _ in raw_features
            )
            self.decoders = nn.ModuleList(nn.Linear(d, f.shape[1]) for f in raw_features)
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: graphs of the training interactions only
        self.norm_adj_matrix = symmetric_norm_adj(self.interaction_matrix).to(self.device)
        self.aggregation = MeanAggregation(self.interaction_matrix, self.device)  # Eq. 1
        for m, (features, seen) in enumerate(zip(raw_features, observed)):
            self.register_buffer(f"features_{m}", standardise(features, seen), persistent=False)  # [N_V, d_m]
            self.register_buffer(f"observed_{m}", seen.clone(), persistent=False)  # [N_V]

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        if self.use_task_guided:
            for norm in self.generator_norms:  # γ of Eq. 11's BN: the scale of Z^m in Eq. 13
                nn.init.constant_(norm.weight, self.bn_init_scale)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    @staticmethod
    def _require(config, key):
        value = config[key]
        if value is None:
            raise ValueError(
                f"Config key `{key}` is not set; its component is switched on. The defaults are in "
                f"properties/model/CI2MG.yaml (run ablations as --model=CI2MG --use_...=False)."
            )
        return value

    def train(self, mode=True):
        # clear the storage variables whenever training resumes
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
        return super().train(mode)

    def modality_features(self, m):
        return getattr(self, f"features_{m}")

    def modality_observed(self, m):
        return getattr(self, f"observed_{m}")

    def forward(self, graph=None):
        r"""All user and item representations, and the intermediate modality views.

        Args:
            graph: the Eq. 1 matrices to aggregate over (:meth:`MeanAggregation.without`);
                default every training interaction.

        Returns:
            tuple: ``user_e`` ``[N_U, (M+1) d]``, ``item_e`` ``[N_V, (M+1) d]`` (Eq. 13) and a
            dict of per-modality lists ``Q`` (intra view), ``Q_hat`` (inter view or None) and
            ``Z`` (item modality embeddings), each ``[N_V, d]``.
        """
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        user_id, item_id = torch.split(
            lightgcn_propagate(self.norm_adj_matrix, ego, self.n_layers), [self.n_users, self.n_items]
        )  # Eq. 2

        user_views, item_views = [], []
        for m, projection in enumerate(self.projections):
            projected = projection(self.modality_features(m))  # [N_V, d]
            user_view, item_view = self.aggregation(projected, graph)  # Eq. 1, F^{U,m} [N_U, d], F^{V,m} [N_V, d]
            user_views.append(user_view)
            item_views.append(item_view)

        if self.use_intra:
            Q = [hypergraph(F_v)[0] for hypergraph, F_v in zip(self.hypergraphs, item_views)]  # Eq. 3-5
        else:
            Q = item_views
        Q_hat = self.transport(Q) if self.use_inter else None  # Eq. 6-9
        Z = [self.generate(m, Q[m], Q_hat[m] if Q_hat else None) for m in range(self.n_modalities)]  # Eq. 11

        user_e = torch.cat([user_id] + user_views, dim=1)  # Eq. 13, X̂^U
        item_e = torch.cat([item_id] + Z, dim=1)  # Eq. 13, X̂^V
        return user_e, item_e, {"Q": Q, "Q_hat": Q_hat, "Z": Z}

    def generate(self, m, intra, inter):
        r"""Eq. 11 (task-guided generation), or the mean of the views without it. ``[N_V, d]``."""
        views = [intra] if inter is None else [intra, inter]
        if not self.use_task_guided:
            return torch.stack(views).mean(dim=0)
        fused = torch.cat(views, dim=1)  # Ψ^m, [N_V, 2d] (or [N_V, d] without inter)
        return F.leaky_relu(self.generator_norms[m](self.generators[m](fused)), 0.2)

    def contrastive_loss(self, Q, Q_hat, items):
        r"""Eq. 10: InfoNCE between intra and inter views of ``items``, other items as negatives.

        Args:
            Q, Q_hat: per-modality lists of ``[N_V, d]``.
            items: ``[B]`` item ids (made distinct here).
        """
        items = torch.unique(items)
        target = torch.arange(items.shape[0], device=items.device)
        loss = 0.0
        for intra, inter in zip(Q, Q_hat):
            q = F.normalize(intra[items], dim=1)  # [B, d]
            q_hat = F.normalize(inter[items], dim=1)  # [B, d]
            logits = q @ q_hat.T / self.cl_temperature  # [B, B]; diagonal = positives
            loss = loss + F.cross_entropy(logits, target)
        return loss

    def reconstruction_loss(self, Z):
        r"""Eq. 12 on observed rows only: decoded :math:`Z^m` against the standardised raw features."""
        loss = 0.0
        for m, z in enumerate(Z):
            seen = self.modality_observed(m)
            if seen.any():
                decoded = self.decoders[m](z[seen])  # [n_observed, d_m]
                loss = loss + F.mse_loss(decoded, self.modality_features(m)[seen])
        return loss

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        graph = self.aggregation.without(user, pos_item) if self.leave_batch_edges_out else None
        user_e, item_e, views = self.forward(graph)
        u_embeddings = user_e[user]
        pos_scores = torch.mul(u_embeddings, item_e[pos_item]).sum(dim=1)
        neg_scores = torch.mul(u_embeddings, item_e[neg_item]).sum(dim=1)
        loss = self.mf_loss(pos_scores, neg_scores)  # Eq. 14

        reg_loss = self.reg_loss(
            self.user_embedding(user),
            self.item_embedding(pos_item),
            self.item_embedding(neg_item),
            require_pow=self.require_pow,
        )
        loss = loss + self.reg_weight * reg_loss  # λ3 ||Θ||², Eq. 15
        if self.use_contrastive:
            loss = loss + self.cl_weight * self.contrastive_loss(views["Q"], views["Q_hat"], pos_item)  # λ1 L_s
        if self.use_task_guided:
            loss = loss + self.rec_weight * self.reconstruction_loss(views["Z"])  # λ2 L_rec
        return loss

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        user_e, item_e, _ = self.forward()
        return torch.mul(user_e[user], item_e[item]).sum(dim=1)

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            self.restore_user_e, self.restore_item_e, _ = self.forward()
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)  # R̂ = X̂^U (X̂^V)^T
        return scores.view(-1)


class LightGCNM(CI2MG):
    r"""LightGCN-M, the paper's baseline: LightGCN plus each modality's mean-imputed,
    projected and graph-aggregated features (CI²MG with its four components off).

    Its settings live in ``properties/model/LightGCNM.yaml``.
    """

    def __init__(self, config, dataset):
        for switch in SWITCHES:
            if config[switch]:
                raise ValueError(
                    f"LightGCN-M is CI2MG with every component off, but {switch} is on; "
                    f"run ablations as --model=CI2MG --{switch}=True."
                )
        super().__init__(config, dataset)


def standardise(features, observed):
    r"""Features standardised with the observed rows' statistics; unobserved rows set to zero.

    Zero is the observed mean after standardisation, so this is mean imputation
    done from the mask: whatever a missing row held before, it is not read.

    Args:
        features: ``[N, d_m]`` float.
        observed: ``[N]`` bool.

    Returns:
        ``[N, d_m]`` float32.
    """
    features = features.float()
    if not observed.any():
        return torch.zeros_like(features)
    seen = features[observed]
    mean = seen.mean(dim=0)
    std = seen.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    out = (features - mean) / std
    return torch.where(observed.unsqueeze(1), out, torch.zeros_like(out))
