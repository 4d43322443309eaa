r"""
VBPR
################################################

Reference:
    Ruining He and Julian McAuley. "VBPR: Visual Bayesian Personalized Ranking
    from Implicit Feedback." in AAAI 2016.
"""

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.model.loss import BPRLoss, EmbLoss
from recbole.utils import InputType

from recbole_ci2mg.data import require_modalities


class VBPR(GeneralRecommender):
    r"""VBPR extends matrix-factorisation BPR with a content term: a learned linear map
    projects each item's features into a content-factor space that users also have
    factors in, and a content bias scores the features directly.

    With modalities :math:`m = 1..M` (the paper has one, visual), the score is

    .. math::
        \hat{x}_{ui} = \beta_i + \gamma_u^\top \gamma_i
            + \sum_m \theta_u^{m\top} (E_m f_i^m) + \sum_m \beta'^{\top}_m f_i^m

    (the paper's Eq. 2; :math:`\alpha` and :math:`\beta_u` are left out because
    they cancel in every BPR difference and do not change a user's ranking).

    Readings of the paper, where it is silent or where the setting differs:

    - **M modalities.** Each modality has its own projection :math:`E_m`
      (``d_m -> embedding_size``, no bias), its own user factors
      :math:`\theta_u^m` and its own content bias :math:`\beta'_m`; the user
      vector is :math:`[\gamma_u \| \theta_u^1 \| \dots \| \theta_u^M]`. ID and
      content factors all have ``embedding_size`` dimensions (the paper splits
      one budget into :math:`K` and :math:`K'`; the comparison protocol fixes
      64 per embedding, as for CI²MG and LightGCN-M).
    - **Features.** The raw (mean-imputed) feature rows of the dataset, not
      rescaled, as the paper feeds raw CNN features. VBPR has no notion of a
      missing row: items whose modality is unobserved get the observed mean,
      like every baseline that cannot take the mask.
    - **Biases.** :math:`\beta_i` and :math:`\beta'_m` are kept and start at
      zero (a non-zero :math:`\beta'^\top f` would rank items by raw feature
      magnitude before any training).
    - **Regularisation.** :math:`\lambda_\Theta` (``reg_weight``) applies
      RecBole's ``EmbLoss`` with squared norms to the batch's
      :math:`\gamma_u, \theta_u, \gamma_i, \beta_i` (positive and negative
      items); :math:`\lambda_E` (``content_reg_weight``) to the squared norms
      of :math:`E_m` and :math:`\beta'_m`. The authors leave them unregularised
      (:math:`\lambda_E = 0`), with SGD. Training here uses RecBole's optimiser
      (Adam), under which the content parameters move much faster than the ID
      factors; with :math:`\lambda_E = 0` VBPR fell below BPR on TikTok, so the
      default is 0.1, chosen on validation (the YAML gives the numbers).
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load dataset info
        self.modality_names = require_modalities(dataset, type(self).__name__)
        features = [dataset.modality_features[name].float() for name in self.modality_names]

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.reg_weight = config["reg_weight"]
        self.content_reg_weight = config["content_reg_weight"] or 0.0

        # define layers and loss
        d = self.latent_dim
        n_factors = d * (1 + len(features))
        self.user_embedding = nn.Embedding(self.n_users, n_factors)  # [γ_u ‖ θ_u^1 ‖ … ‖ θ_u^M]
        self.item_embedding = nn.Embedding(self.n_items, d)  # γ_i
        self.item_bias = nn.Embedding(self.n_items, 1)  # β_i
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], d, bias=False) for f in features)  # E_m
        self.content_biases = nn.ModuleList(nn.Linear(f.shape[1], 1, bias=False) for f in features)  # β'_m
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data
        for m, f in enumerate(features):
            self.register_buffer(f"features_{m}", f.clone(), persistent=False)  # [N_V, d_m]

        # parameters initialization
        self.apply(xavier_normal_initialization)  # as RecBole's BPR
        nn.init.zeros_(self.item_bias.weight)
        for bias in self.content_biases:
            nn.init.zeros_(bias.weight)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
        return super().train(mode)

    def modality_features(self, m):
        return getattr(self, f"features_{m}")

    def item_content(self, item=None):
        r"""Content factors :math:`[E_1 f_i^1 \| \dots]` ``[B, M d]`` and content bias ``[B]`` of ``item`` (all items if None)."""
        factors, bias = [], 0.0
        for m, (projection, content_bias) in enumerate(zip(self.projections, self.content_biases)):
            f = self.modality_features(m)
            f = f if item is None else f[item]  # [B, d_m]
            factors.append(projection(f))
            bias = bias + content_bias(f).squeeze(-1)
        return torch.cat(factors, dim=-1), bias

    def forward(self, user, item):
        r"""Eq. 2 without :math:`\alpha, \beta_u`: scores of the pairs ``(user[k], item[k])``. ``[B]``."""
        user_e = self.user_embedding(user)  # [B, (M+1) d]
        content, content_bias = self.item_content(item)
        item_e = torch.cat([self.item_embedding(item), content], dim=-1)  # [B, (M+1) d]
        return (user_e * item_e).sum(dim=-1) + self.item_bias(item).squeeze(-1) + content_bias

    def calculate_loss(self, interaction):
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        pos_scores = self.forward(user, pos_item)
        neg_scores = self.forward(user, neg_item)
        loss = self.mf_loss(pos_scores, neg_scores)

        reg_loss = self.reg_loss(
            self.user_embedding(user),
            self.item_embedding(pos_item),
            self.item_embedding(neg_item),
            self.item_bias(pos_item),
            self.item_bias(neg_item),
            require_pow=True,
        )
        loss = loss + self.reg_weight * reg_loss  # λ_Θ ||Θ||²
        if self.content_reg_weight:
            content_norm = sum(p.pow(2).sum() for p in (*self.projections.parameters(), *self.content_biases.parameters()))
            loss = loss + self.content_reg_weight * content_norm  # λ_E ||E||²
        return loss

    def predict(self, interaction):
        return self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            content, content_bias = self.item_content()
            ones = torch.ones(self.n_users, 1, device=self.device)
            self.restore_user_e = torch.cat([self.user_embedding.weight, ones], dim=1)  # [N_U, (M+1) d + 1]
            bias = (self.item_bias.weight.squeeze(-1) + content_bias).unsqueeze(1)
            self.restore_item_e = torch.cat([self.item_embedding.weight, content, bias], dim=1)  # [N_V, (M+1) d + 1]
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
