r"""
BM3
################################################

Reference:
    Xin Zhou, Hongyu Zhou, Yong Liu, Zhiwei Zeng, Chunyan Miao, Pengwei Wang, Yuan You
    and Feijun Jiang. "Bootstrap Latent Representations for Multi-modal
    Recommendation." in WWW 2023.

Reference code:
    https://github.com/enoche/BM3 (the authors'; read for the paper's open points, nothing copied).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.loss import EmbLoss
from recbole.utils import InputType

from recbole_ci2mg.data import require_modalities
from recbole_ci2mg.model.layers.graph import lightgcn_propagate, symmetric_norm_adj


def negative_cosine(online, target):
    r""":math:`C(a, b) = 1 - \cos(a, b)`, averaged over rows."""
    return 1.0 - F.cosine_similarity(online, target, dim=-1).mean()


class BM3(GeneralRecommender):
    r"""BM3 learns user and item representations without negative samples: each
    representation is passed through a shared one-layer predictor (the online view)
    and compared, by cosine, with a dropout copy of a representation that gets no
    gradient (the target view).

    With :math:`h_u, h_i` the LightGCN representations, :math:`h^m_i = W_m f^m_i + b_m`
    the projected features of modality :math:`m`, the predictor
    :math:`\tilde{h} = W_p h + b_p` and the target :math:`\dot{h} = \mathrm{sg}(h)
    \odot \mathrm{Bernoulli}(1 - p) / (1 - p)`, the loss over a batch of training
    pairs :math:`(u, i)` is

    .. math::
        \mathcal{L} = \underbrace{C(\tilde{h}_u, \dot{h}_i) + C(\tilde{h}_i, \dot{h}_u)}_{\text{graph reconstruction}}
          + \beta \sum_m \big[\underbrace{C(\tilde{h}^m_i, \dot{h}_i)}_{\text{inter-modality alignment}}
          + \underbrace{C(\tilde{h}^m_i, \dot{h}^m_i)}_{\text{intra-modality masking}}\big]
          + \lambda \, \mathcal{L}_{reg}(h_u, h_i)

    with :math:`C(a, b) = 1 - \cos(a, b)`; the score is
    :math:`\tilde{h}_u^\top \tilde{h}_i`.

    Readings of the paper and of the authors' code, where the paper is open:

    - **Encoder.** LightGCN's mean over layers :math:`0..L`; the item
      representation also adds the item's own ID embedding (a residual, in
      the authors' code).
    - **Batches.** Training pairs only, no negative sample
      (``train_neg_sample_args: ~``): the paper's point.
    - **Weights.** ``cl_weight`` (:math:`\beta`) multiplies the alignment and
      masking terms. The paper sums the three terms; the authors' code
      weighs the two modality terms by 2 (see the YAML).
      ``reg_weight`` (:math:`\lambda`) applies RecBole's ``EmbLoss`` (norms,
      divided by the batch size) to the batch's :math:`h_u` and :math:`h_i`;
      the authors' code applies the same form to every user's and item's.
    - **M modalities.** One projection :math:`(W_m, b_m)` per modality, the
      predictor shared by IDs and every modality; each modality adds its
      alignment and masking terms (the paper has two, image and text).
    - **Features and missing rows.** The dataset's mean-imputed feature rows,
      trainable (as in the authors' code, where they start from the
      extracted features); BM3 cannot take the observed mask, so an item
      missing a modality is aligned through the imputed mean row. A modality
      missing everywhere has all-zero rows (the dataset layer's convention):
      every item's projection is then the bias alone, and its terms stay finite.
    - **Content and scores.** The score reads ID representations only, and
      the stop-gradient keeps the modality terms from moving ID embeddings:
      content reaches the scores only through the predictor, which IDs and
      modalities share. An item without training interactions is scored
      from its untrained ID embedding: finite, but not placed by its content.
    - **Dropout masks.** Drawn anew for every batch row, so a user twice in a
      batch gets two target views (the authors' code drops whole matrices once
      per batch).
    - **Initialisation.** Xavier (uniform for embeddings, normal for the
      linear weights, as the authors' code); linear biases keep PyTorch's
      default.
    """

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load dataset info
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)
        self.modality_names = require_modalities(dataset, type(self).__name__)
        features = [dataset.modality_features[name].float() for name in self.modality_names]

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.dropout = config["dropout"]
        self.reg_weight = config["reg_weight"]
        self.cl_weight = config["cl_weight"]
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BM3: dropout (of the target views) must be in [0, 1), got {self.dropout}.")

        # define layers and loss
        d = self.latent_dim
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        self.features = nn.ParameterList(nn.Parameter(f.clone()) for f in features)  # f^m, [N_V, d_m]
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], d) for f in features)  # W_m, b_m
        self.predictor = nn.Linear(d, d)  # W_p, b_p
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: graph of the training interactions only
        self.norm_adj_matrix = symmetric_norm_adj(self.interaction_matrix).to(self.device)

        # parameters initialization
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        for linear in (*self.projections, self.predictor):
            nn.init.xavier_normal_(linear.weight)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
        return super().train(mode)

    def forward(self):
        r"""LightGCN representations :math:`h_u` ``[N_U, d]`` and :math:`h_i` ``[N_V, d]`` (with the ID residual)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = lightgcn_propagate(self.norm_adj_matrix, ego, self.n_layers)
        user_e, item_e = torch.split(out, [self.n_users, self.n_items])
        return user_e, item_e + self.item_embedding.weight

    def target(self, h):
        r"""The target view :math:`\dot{h}`: a dropout copy of ``h`` that carries no gradient."""
        return F.dropout(h.detach(), self.dropout, training=True)

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]

        user_all, item_all = self.forward()
        h_u, h_i = user_all[user], item_all[item]
        target_u, target_i = self.target(h_u), self.target(h_i)
        rec_loss = negative_cosine(self.predictor(h_u), target_i) + negative_cosine(self.predictor(h_i), target_u)

        modality_loss = 0.0
        for f, projection in zip(self.features, self.projections):
            h_m = projection(f[item])  # h^m_i, [B, d]
            online_m = self.predictor(h_m)
            alignment = negative_cosine(online_m, target_i)  # inter-modality: towards the item's ID target
            masking = negative_cosine(online_m, self.target(h_m))  # intra-modality: towards its own dropout copy
            modality_loss = modality_loss + alignment + masking

        reg_loss = self.reg_loss(h_u, h_i)
        return rec_loss + self.cl_weight * modality_loss + self.reg_weight * reg_loss

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        user_all, item_all = self.forward()
        return torch.mul(self.predictor(user_all[user]), self.predictor(item_all[item])).sum(dim=1)

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            user_all, item_all = self.forward()
            self.restore_user_e, self.restore_item_e = self.predictor(user_all), self.predictor(item_all)
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
