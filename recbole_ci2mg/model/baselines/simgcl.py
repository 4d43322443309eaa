r"""
SimGCL
################################################

Reference:
    Junliang Yu, Hongzhi Yin, Xin Xia, Tong Chen, Lizhen Cui and Quoc Viet Hung Nguyen.
    "Are Graph Augmentations Necessary? Simple Graph Contrastive Learning for
    Recommendation." in SIGIR 2022.

Reference code:
    https://github.com/Coder-Yu/SELFRec (the authors'; read for the paper's open points, nothing copied).
"""

import numpy as np
import torch
import torch.nn as nn
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_uniform_initialization
from recbole.model.loss import BPRLoss, EmbLoss
from recbole.utils import InputType

from recbole_ci2mg.model.layers.augment import info_nce
from recbole_ci2mg.model.layers.graph import lightgcn_layers, symmetric_norm_adj


class SimGCL(GeneralRecommender):
    r"""SimGCL trains LightGCN with BPR plus an InfoNCE between two views of every user
    and item that differ only by random noise added to the embeddings after each
    propagation layer; it reads no content.

    .. math::
        E'^{(l)} = \hat{A} E'^{(l-1)} + \Delta^{(l)}, \qquad
        \Delta^{(l)}_n = \epsilon \, \frac{\bar{\Delta}_n}{\|\bar{\Delta}_n\|_2} \odot \operatorname{sign}(E'^{(l)}_n),
        \quad \bar{\Delta}_n \sim U(0, 1)^d

    with :math:`\hat{A}` LightGCN's normalised adjacency and
    :math:`e'_n = \frac{1}{L} \sum_{l=1}^{L} E'^{(l)}_n`. The loss is
    :math:`\mathcal{L}_{BPR} + \lambda (\mathcal{L}^{U}_{cl} + \mathcal{L}^{V}_{cl}) + \mu \mathcal{L}_{reg}`,
    where :math:`\mathcal{L}_{cl}` is the InfoNCE (cosine, temperature
    :math:`\tau`) between two independently perturbed views; scores are
    :math:`e_u^\top e_i` of the unperturbed encoder.

    Readings of the paper, where it leaves things open:

    - **Noise.** A fresh :math:`\bar{\Delta}` for every node, layer, view and
      batch; the sign is that of the propagated embedding it is added to
      (a zero entry gets no noise), and the noise enters the next layer's
      propagation, as the paper's perturbed encoder chains them.
    - **Readout.** The mean of layers :math:`1..L`, the input embeddings
      :math:`E^{(0)}` left out in all three encoders, as the paper states
      (so ``n_layers`` must be at least 1). A node without training
      interactions therefore has a zero representation: an item no user
      trained on scores 0 for everyone (SimGCL has no content to place it).
    - **Contrastive batch.** The InfoNCE runs over the batch's distinct users
      and distinct positive items (the other rows are the negatives), averaged
      over rows, user and item terms added, as the authors' code does.
    - **Regularisation.** ``reg_weight`` applies RecBole's ``EmbLoss`` to the
      batch's input embeddings (users, positive and negative items), as
      RecBole's LightGCN, which SimGCL extends, does; the authors' code puts its
      L2 term on the propagated embeddings instead.
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load dataset info
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.cl_weight = config["cl_weight"]
        self.cl_temperature = config["cl_temperature"]
        self.eps = config["eps"]
        if self.n_layers < 1:
            raise ValueError(
                f"SimGCL: n_layers must be at least 1 (the readout leaves layer 0 out), got {self.n_layers}."
            )
        if self.eps < 0:
            raise ValueError(f"SimGCL: eps (the noise magnitude) must be non-negative, got {self.eps}.")
        if self.cl_temperature <= 0:
            raise ValueError(f"SimGCL: cl_temperature must be positive, got {self.cl_temperature}.")

        # define layers and loss
        self.user_embedding = nn.Embedding(self.n_users, self.latent_dim)
        self.item_embedding = nn.Embedding(self.n_items, self.latent_dim)
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: graph of the training interactions only
        self.norm_adj_matrix = symmetric_norm_adj(self.interaction_matrix).to(self.device)

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
        return super().train(mode)

    def forward(self, perturbed=False):
        r"""User ``[N_U, d]`` and item ``[N_V, d]`` representations, with noise after every layer if ``perturbed``."""
        embeddings = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        layers = lightgcn_layers(self.norm_adj_matrix, embeddings, self.n_layers, self.eps if perturbed else 0.0)
        out = torch.stack(layers[1:], dim=1).mean(dim=1)  # layer 0 left out of the readout
        return torch.split(out, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        user_all, item_all = self.forward()
        u_e = user_all[user]
        pos_scores = torch.mul(u_e, item_all[pos_item]).sum(dim=1)
        neg_scores = torch.mul(u_e, item_all[neg_item]).sum(dim=1)
        mf_loss = self.mf_loss(pos_scores, neg_scores)

        reg_loss = self.reg_loss(
            self.user_embedding(user), self.item_embedding(pos_item), self.item_embedding(neg_item)
        )

        users, items = torch.unique(user), torch.unique(pos_item)
        user_1, item_1 = self.forward(perturbed=True)
        user_2, item_2 = self.forward(perturbed=True)
        cl_loss = info_nce(user_1[users], user_2[users], self.cl_temperature) + info_nce(
            item_1[items], item_2[items], self.cl_temperature
        )
        return mf_loss + self.cl_weight * cl_loss + self.reg_weight * reg_loss

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        user_all, item_all = self.forward()
        return torch.mul(user_all[user], item_all[item]).sum(dim=1)

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            self.restore_user_e, self.restore_item_e = self.forward()
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
