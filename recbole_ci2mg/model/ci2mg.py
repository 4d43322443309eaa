r"""
CI2MG
################################################

Reference:
    Zhenghong Lin et al. "Contrastive Intra- and Inter-Modality Generation for
    Enhancing Incomplete Multimedia Recommendation." in ACM MM 2023.

No official implementation exists. Where the paper is silent this file follows
``design/ci2mg-model.md``; each module states the decisions it takes.
"""

from functools import partial

import numpy as np
import torch
import torch.nn as nn
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_uniform_initialization
from recbole.model.loss import BPRLoss, EmbLoss
from recbole.utils import InputType

from recbole_ci2mg.data import require_modalities
from recbole_ci2mg.model.layers.augment import info_nce
from recbole_ci2mg.model.layers.content import ContentEncoder
from recbole_ci2mg.model.layers.fusion import TaskGuidedFusion
from recbole_ci2mg.model.layers.graph import ConstantSparse, MeanAggregation, lightgcn_layers, normalised_adjacency
from recbole_ci2mg.model.layers.hypergraph import PrototypeHypergraph
from recbole_ci2mg.model.layers.transport import InterModalityTransport
from recbole_ci2mg.model.settings import require_setting

SWITCHES = ("use_intra", "use_inter", "use_contrastive", "use_task_guided")


class CI2MG(GeneralRecommender):
    r"""CI²MG completes missing item modalities from items of the same prototype cluster
    (hypergraph convolution) and from the other modalities (optimal transport), aligns
    the two views contrastively, and scores users and items on their ID and completed
    modality embeddings.

    :meth:`forward` follows the paper's Figure 2 from top to bottom; each box is a
    module whose docstring gives its equations and the readings taken where the
    paper is silent:

    - projection and Eq. 1: :class:`~recbole_ci2mg.model.layers.content.ContentEncoder`
      (mask-aware; in training the batch's positive edges are left out of Eq. 1,
      ``leave_batch_edges_out``, see
      :class:`~recbole_ci2mg.model.layers.graph.MeanAggregation`);
    - Eq. 2: a LightGCN propagation, the common and stronger reading of the
      paper's per-layer :math:`\sigma(D^{-1} R X W)`;
    - Eq. 3-5: :class:`~recbole_ci2mg.model.layers.hypergraph.PrototypeHypergraph`;
    - Eq. 6-9: :class:`~recbole_ci2mg.model.layers.transport.InterModalityTransport`;
    - Eq. 10: :func:`~recbole_ci2mg.model.layers.augment.info_nce` between
      :math:`Q^m` and :math:`\hat{Q}^m` over the batch's distinct positive items
      (the others are the negatives), summed over modalities;
    - Eq. 11-12: :class:`~recbole_ci2mg.model.layers.fusion.TaskGuidedFusion`;
    - Eq. 13-15: :math:`\hat{R} = \hat{X}^U (\hat{X}^V)^T`, BPR, and ``reg_weight``
      (λ3) on the batch's ID embeddings through RecBole's ``EmbLoss``.

    Ablation (Table 3): ``use_intra``, ``use_inter``, ``use_contrastive``,
    ``use_task_guided``. A component that is off falls back to its input:
    :math:`Q^m = F^{V,m}` without intra, no :math:`\hat{Q}^m` without inter, and
    without task guidance :math:`Z^m` is the mean of the views present, with no
    reconstruction loss. All four off is LightGCN-M.

    Every setting comes from ``properties/model/CI2MG.yaml``; an unset key is an
    error. What the defaults were chosen on is in BENCHMARKS.md.
    """

    input_type = InputType.PAIRWISE
    id_readout_from = 0  # Eq. 2 averages layers 0..L (CI2MG-S's id_readout may start at layer 1)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        setting = partial(require_setting, config, model=type(self).__name__)

        # load dataset info
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)
        self.modality_names = require_modalities(dataset, type(self).__name__)
        raw_features = [dataset.modality_features[name] for name in self.modality_names]
        observed = [dataset.modality_observed[name].bool() for name in self.modality_names]
        self.n_modalities = len(self.modality_names)

        # load parameters info
        self.latent_dim = setting("embedding_size")
        self.n_layers = setting("n_layers")
        self.reg_weight = setting("reg_weight")
        self.require_pow = setting("require_pow")
        self.leave_batch_edges_out = setting("leave_batch_edges_out")
        self.use_intra, self.use_inter, self.use_contrastive, self.use_task_guided = map(setting, SWITCHES)
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
        if self.use_contrastive:
            self.cl_weight = setting("cl_weight")
            self.cl_temperature = setting("cl_temperature")
        if self.use_task_guided:
            self.rec_weight = setting("rec_weight")

        # define layers and loss: Figure 2, top to bottom
        d = self.latent_dim
        self.user_embedding = nn.Embedding(self.n_users, d)  # X^U, Eq. 2
        self.item_embedding = nn.Embedding(self.n_items, d)  # X^V, Eq. 2
        self.content = ContentEncoder(
            raw_features,
            observed,
            d,
            MeanAggregation(self.interaction_matrix, self.device),
            bias=setting("content_bias"),
        )  # projection + Eq. 1
        if self.use_intra:
            self.hypergraphs = nn.ModuleList(
                PrototypeHypergraph(d, setting("n_prototypes"), setting("hyper_layers"), setting("hyper_temperature"))
                for _ in raw_features
            )  # Eq. 3-5
        if self.use_inter:
            self.transport = InterModalityTransport(
                self.n_items,
                self.n_modalities,
                solver=setting("ot_solver"),
                reg=setting("ot_reg"),
                max_iter=setting("ot_max_iter"),
                tol=setting("ot_tol"),
                block_size=setting("ot_block_size"),
                delta_rank=setting("ot_delta_rank"),
                differentiable=setting("ot_differentiable"),
                seed=setting("seed"),
                refresh=setting("ot_plan_refresh"),
                warm_start=setting("ot_warm_start"),
                eval_plan=setting("ot_eval_plan"),
            )  # Eq. 6-9
        if self.use_task_guided:
            self.fusion = TaskGuidedFusion(
                2 * d if self.use_inter else d,
                d,
                [f.shape[1] for f in raw_features],
                running_stats=setting("bn_running_stats"),
                init_scale=setting("bn_init_scale"),
            )  # Eq. 11-12
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: the graph of the training interactions only
        self.norm_adj_matrix = ConstantSparse(normalised_adjacency(self.interaction_matrix), self.device)

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        # clear the storage variables whenever training resumes
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
        return super().train(mode)

    @property
    def score_blocks(self):
        """Names of the Eq. 13 blocks, in order, each ``d`` wide: ``id``, then every modality."""
        return ["id"] + list(self.modality_names)

    @property
    def aggregation(self):
        """Eq. 1's :class:`~recbole_ci2mg.model.layers.graph.MeanAggregation`."""
        return self.content.aggregation

    def forward(self, left_out=None):
        r"""All user and item representations, and the intermediate modality views.

        Args:
            left_out: training edges to leave out of Eq. 1
                (:meth:`~recbole_ci2mg.model.layers.graph.MeanAggregation.without`); default none.

        Returns:
            tuple: ``user_e`` ``[N_U, (M+1) d]``, ``item_e`` ``[N_V, (M+1) d]`` (Eq. 13) and a
            dict of per-modality lists ``Q`` (intra view), ``Q_hat`` (inter view or None) and
            ``Z`` (item modality embeddings), each ``[N_V, d]``.
        """
        user_id, item_id = self.id_embeddings()  # Eq. 2, X^U and X^V

        # contrastive intra- and inter-modality generation
        user_views, item_views = self.content(left_out)  # Eq. 1, F^{U,m} [N_U, d] and F^{V,m} [N_V, d]
        incidences = None
        if self.use_intra:
            Q, incidences = map(list, zip(*(hypergraph(F_v) for hypergraph, F_v in zip(self.hypergraphs, item_views))))
        else:
            Q = item_views
        Q_hat = self.transport(Q, incidences) if self.use_inter else None  # Eq. 6-9

        # enhanced multimedia recommendation
        Z = [self.generate(m, Q[m], Q_hat[m] if Q_hat else None) for m in range(self.n_modalities)]  # Eq. 11
        user_e, item_e = self.scoring_embeddings(user_id, item_id, user_views, Z)  # Eq. 13
        return user_e, item_e, {"Q": Q, "Q_hat": Q_hat, "Z": Z}

    def id_layers(self, n_layers=None, noise_eps=0.0):
        r"""Eq. 2's LightGCN layers ``0..n_layers`` (default ``n_layers`` of the config) over the
        training graph, a list of ``[N_U + N_V, d]``, users first; with ``noise_eps``, SimGCL's
        perturbed layers (:func:`~recbole_ci2mg.model.layers.graph.lightgcn_layers`)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        return lightgcn_layers(self.norm_adj_matrix, ego, self.n_layers if n_layers is None else n_layers, noise_eps)

    def id_embeddings(self, noise_eps=0.0, readout_from=None):
        r"""Eq. 2: LightGCN over the training graph, ``X^U`` ``[N_U, d]`` and ``X^V`` ``[N_V, d]``
        (a perturbed view with ``noise_eps``; the mean from layer ``readout_from``, default
        ``id_readout_from``)."""
        start = self.id_readout_from if readout_from is None else readout_from
        layers = self.id_layers(noise_eps=noise_eps)[start : self.n_layers + 1]
        return torch.split(torch.stack(layers, dim=1).mean(dim=1), [self.n_users, self.n_items])

    def scoring_embeddings(self, user_id, item_id, user_views, Z):
        r"""Eq. 13: :math:`\hat{X}^U = [X^U \| F^{U,1} \| \dots]`, :math:`\hat{X}^V = [X^V \| Z^1 \| \dots]`."""
        return torch.cat([user_id] + user_views, dim=1), torch.cat([item_id] + Z, dim=1)

    def generate(self, m, intra, inter):
        r"""Eq. 11 (task-guided generation), or the mean of the views without it. ``[N_V, d]``."""
        views = [intra] if inter is None else [intra, inter]
        if not self.use_task_guided:
            return torch.stack(views).mean(dim=0)
        return self.fusion(m, views)

    def contrastive_loss(self, Q, Q_hat, items):
        r"""Eq. 10 over the distinct ``items`` ``[B]``, summed over modalities (lists of ``[N_V, d]``)."""
        items = torch.unique(items)
        return sum(info_nce(intra[items], inter[items], self.cl_temperature) for intra, inter in zip(Q, Q_hat))

    def reconstruction_loss(self, Z):
        r"""Eq. 12, summed over modalities, on each modality's observed rows only."""
        return sum(
            self.fusion.reconstruction_loss(m, z, self.content.observed_index(m), self.content.observed_features(m))
            for m, z in enumerate(Z)
        )

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        left_out = self.aggregation.without(user, pos_item) if self.leave_batch_edges_out else None
        user_e, item_e, views = self.forward(left_out)
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
            if require_setting(config, switch, type(self).__name__):
                raise ValueError(
                    f"LightGCN-M is CI2MG with every component off, but {switch} is on; "
                    f"run ablations as --model=CI2MG --{switch}=True."
                )
        super().__init__(config, dataset)
