r"""
MILK
################################################

Reference:
    Haoyue Bai, Le Wu, Min Hou, Miaomiao Cai, Zhuangzhuang He, Yuyang Zhou, Richang Hong
    and Meng Wang. "Multimodality Invariant Learning for Multimedia-Based New Item
    Recommendation." in SIGIR 2024, doi:10.1145/3626772.3658596.

The authors' code (github.com/HaoyueBai98/MILK) was not available to read; the
readings below are from the paper's text, whose equations were not at hand, and from
the description of MILK in the DGMRec benchmark (github.com/ptkjw1997/DGMRec), which
runs it on this project's TikTok split.
"""

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_uniform_initialization
from recbole.model.loss import BPRLoss, EmbLoss
from recbole.utils import InputType

from recbole_ci2mg.data import require_modalities


class MILK(GeneralRecommender):
    r"""MILK scores items from their content only, so that items without interactions
    can be ranked, and learns user preferences that stay the same whatever share each
    modality has in an item's representation: environments that mimic missing modalities
    are built by cyclic mixup of the modality weights, and the spread of the
    recommendation loss across environments is penalised (invariant learning).

    With modality-specific extractors :math:`c_j^m = E_m(x_j^m)` (the cross-modality
    alignment module, CMAM) and environment weights :math:`\Theta_e` on the simplex,

    .. math::
        i_j^{e} = \sum_m \Theta_{e,m} c_j^m, \qquad \hat{y}_{ij}^{e} = u_i^\top i_j^{e},

    :math:`\Theta_0 = (1/M, \dots, 1/M)`, :math:`\Theta_1 \sim \mathrm{Dir}(\alpha \mathbf{1}_M)`
    and :math:`\Theta_2, \dots, \Theta_M` its cyclic shifts, redrawn every batch (the
    cross-environment invariance module, CEIM). The loss is

    .. math::
        \sum_e \mathcal{L}^{e}_{BPR}
        + \beta \, \mathrm{Var}_e\!\left(\mathcal{L}^{e}_{BPR}\right)
        + \lambda \, \mathcal{L}_{align} + \gamma \, \mathcal{L}_{reg} ,

    and items are scored at :math:`\Theta_0`.

    Readings of the paper, where it is silent or its equations were not at hand:

    - **Extractors.** One linear map ``d_m -> embedding_size`` per modality on the raw
      features (the paper: "independent extractors", each tied to one modality).
      Users have an ID embedding (the paper's embedding layer :math:`P`); items have
      none, so every item is scored from its content.
    - **Missing modalities.** As the paper (§4.4) says, an unobserved modality enters
      with the dataset's mean-imputed row, in training and at inference; the observed
      mask is used where the paper compares modalities: the alignment loss only pairs
      two modalities of an item that are both observed (an imputed mean row aligned with
      a real one would teach nothing about the item).
    - **Alignment.** :math:`\mathcal{L}_{align}` is the mean squared distance between
      :math:`c_j^m` and :math:`c_j^{m'}` over the batch's distinct items (positives and
      negatives) and every pair :math:`m < m'` both observed, as the DGMRec benchmark
      describes MILK's alignment (a mean squared error between modality representations).
    - **Invariance.** The task term sums the environments' BPR losses and the penalty is
      their population variance, the V-REx objective the paper cites (Krueger et al.,
      2021); ``invariance_weight`` is :math:`\beta`, ``align_weight`` :math:`\lambda` (the
      paper swaps the two letters between §4.4 and §5). The :math:`M + 1` environments are
      the equal-weight one and the :math:`M` cyclic shifts of one Dirichlet draw,
      ``dirichlet_alpha`` the Dirichlet's concentration (the same for every modality, as
      the paper). With one modality every environment is the same: MILK is then BPR
      on a linear map of the features.
    - **Regularisation.** :math:`\gamma` (``reg_weight``) multiplies RecBole's squared
      ``EmbLoss`` of the batch's user embeddings and equal-weight item representations.
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load dataset info
        self.modality_names = require_modalities(dataset, type(self).__name__)
        features = [dataset.modality_features[name].float() for name in self.modality_names]
        observed = [dataset.modality_observed[name].bool() for name in self.modality_names]
        self.n_modalities = len(features)

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.invariance_weight = config["invariance_weight"]
        self.align_weight = config["align_weight"]
        self.dirichlet_alpha = config["dirichlet_alpha"]
        self.reg_weight = config["reg_weight"]
        if not self.dirichlet_alpha > 0:
            raise ValueError(f"MILK: dirichlet_alpha must be > 0, got {self.dirichlet_alpha}.")

        # define layers and loss
        self.user_embedding = nn.Embedding(self.n_users, self.latent_dim)
        self.extractors = nn.ModuleList(nn.Linear(f.shape[1], self.latent_dim) for f in features)  # E_m
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data
        for m, f in enumerate(features):
            self.register_buffer(f"features_{m}", f, persistent=False)  # [N_V, d_m], mean-imputed
        self.register_buffer("observed", torch.stack(observed, dim=1), persistent=False)  # [N_V, M]

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
        return super().train(mode)

    def modality_representations(self, items=None):
        r""":math:`c_j^m` of ``items`` (default: all), ``[N, M, d]``."""
        rows = slice(None) if items is None else items
        return torch.stack(
            [extractor(getattr(self, f"features_{m}")[rows]) for m, extractor in enumerate(self.extractors)], dim=1
        )

    def environments(self):
        r"""Cyclic mixup: :math:`\Theta_0` uniform, then a Dirichlet draw and its cyclic shifts. ``[M + 1, M]``."""
        M = self.n_modalities
        uniform = torch.full((1, M), 1.0 / M, device=self.device)
        concentration = torch.full((M,), float(self.dirichlet_alpha), device=self.device)
        theta = torch.distributions.Dirichlet(concentration).sample()
        shifts = torch.stack([torch.roll(theta, shift) for shift in range(M)])
        return torch.cat([uniform, shifts])

    def alignment_loss(self, representations, observed):
        r"""Mean squared distance between the modality representations an item has observed in pairs."""
        distances, counts = 0.0, 0
        for m in range(self.n_modalities):
            for n in range(m + 1, self.n_modalities):
                both = observed[:, m] & observed[:, n]
                if both.any():
                    gap = representations[both, m] - representations[both, n]
                    distances = distances + gap.pow(2).mean(dim=1).sum()
                    counts += int(both.sum())
        return distances / counts if counts else torch.zeros((), device=self.device)

    def forward(self):
        r"""Users ``[N_U, d]`` and items at equal weights ``[N_V, d]``."""
        return self.user_embedding.weight, self.modality_representations().mean(dim=1)

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        items, position = torch.unique(torch.cat([pos_item, neg_item]), return_inverse=True)
        representations = self.modality_representations(items)  # [U, M, d]
        fused = torch.einsum("em,umd->eud", self.environments(), representations)  # [E, U, d]
        pos_position, neg_position = torch.split(position, [len(pos_item), len(neg_item)])
        u_e = self.user_embedding(user)

        env_losses = torch.stack(
            [
                self.mf_loss((u_e * items_e[pos_position]).sum(dim=1), (u_e * items_e[neg_position]).sum(dim=1))
                for items_e in fused
            ]
        )
        invariance = env_losses.var(unbiased=False)
        align = self.alignment_loss(representations, self.observed[items])
        reg = self.reg_loss(u_e, fused[0][pos_position], fused[0][neg_position], require_pow=True)
        return (
            env_losses.sum()
            + self.invariance_weight * invariance
            + self.align_weight * align
            + self.reg_weight * reg.squeeze()
        )

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        user_e, item_e = self.forward()
        return (user_e[user] * item_e[item]).sum(dim=1)

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            self.restore_user_e, self.restore_item_e = self.forward()
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
