r"""
SLMRec
################################################

Reference:
    Zhulin Tao et al. "Self-supervised Learning for Multimedia Recommendation."
    IEEE Transactions on Multimedia 25 (2023), early access 2022, doi:10.1109/TMM.2022.3187556.

Reference code:
    https://github.com/zltao/SLMRec (read for the paper's open points; nothing copied).
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
from recbole_ci2mg.model.layers.augment import info_nce, propagate_channels
from recbole_ci2mg.model.layers.graph import symmetric_norm_adj

SSL_TASKS = ("FD", "FM", "FD+FM", "FAC")


class SLMRec(GeneralRecommender):
    r"""SLMRec propagates an ID channel and one channel per modality over the user-item
    graph (LightGCN, users shared across channels), fuses the channels with a linear
    readout, and adds a self-supervised task on augmented channel embeddings to BPR.

    The SSL task (``ssl_task``) is one of the paper's: ``FD`` feature dropout (two
    views with dropout after every propagation layer), ``FM`` feature masking (each
    view masks one random channel, the two views different ones), ``FD+FM``, or
    ``FAC`` fine-and-coarse alignment (the ID channel is aligned with modality 1 in
    a shared space, that space with modality 2 in a coarser one, and so on).

    Decisions where the paper leaves things open:

    - **Inputs.** Each modality's (mean-imputed) features are L2-normalised per row,
      then a linear map ``d_m -> d`` gives the channel's item input, as in the
      reference code. The observed mask is not used: missing rows hold the mean.
    - **Any M.** The reference code hard-codes (v, a, t) and writes the FAC chain
      for three modalities; here the chain runs over the configured modalities in
      config order, every level in ``d`` dimensions (the code halves the last of
      three levels).
    - **Similarity.** FAC uses cosine similarity at ``ssl_temperature``, like the
      other tasks (the code uses raw dot products for FAC only).
    - **Main loss.** BPR with RecBole's ``EmbLoss`` on the batch's ego embeddings
      (``reg_weight``), as the project's pairwise protocol; the reference code's
      default main loss is an in-batch softmax instead.
    - **Contrastive batch.** Views are contrasted over the batch's distinct users and
      distinct positive items (the code keeps duplicates, which become false
      negatives); the InfoNCE is averaged over rows; FD/FM add the user and item terms,
      FAC sums over modalities.
    - **Resampling.** Dropout masks and masked channels are drawn per batch, as
      the paper's feature-level augmentations are (they need no graph rebuild).
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load dataset info
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)
        self.modality_names = require_modalities(dataset, type(self).__name__)
        features = [dataset.modality_features[name].float() for name in self.modality_names]
        self.n_modalities = len(features)

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.ssl_task = config["ssl_task"]
        self.ssl_weight = config["ssl_weight"]
        self.ssl_temperature = config["ssl_temperature"]
        self.feature_dropout = config["feature_dropout"]
        if self.ssl_task not in SSL_TASKS:
            raise ValueError(f"ssl_task must be one of {SSL_TASKS}, got {self.ssl_task!r}")

        # define layers and loss
        d = self.latent_dim
        n_channels = self.n_modalities + 1  # channel 0 = ID, channel m + 1 = modality m
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], d) for f in features)
        self.user_readout = nn.Linear(n_channels * d, d)
        self.item_readout = nn.Linear(n_channels * d, d)
        if self.ssl_task == "FAC":
            self.fac_anchor = nn.ModuleList(nn.Linear(d, d) for _ in features)  # g_{prev -> level m}
            self.fac_modality = nn.ModuleList(nn.Linear(d, d) for _ in features)  # g_{m -> level m}
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: graph of the training interactions only
        self.norm_adj_matrix = symmetric_norm_adj(self.interaction_matrix).to(self.device)
        for m, f in enumerate(features):
            self.register_buffer(f"features_{m}", F.normalize(f, dim=1), persistent=False)  # [N_V, d_m]

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
        return super().train(mode)

    def item_inputs(self, masked_channel=None):
        r"""Layer-0 item embeddings of every channel; ``masked_channel`` (if any) is zeroed."""
        inputs = [self.item_embedding.weight] + [
            projection(getattr(self, f"features_{m}")) for m, projection in enumerate(self.projections)
        ]
        if masked_channel is not None:
            inputs[masked_channel] = torch.zeros_like(inputs[masked_channel])
        return inputs

    def encode(self, item_inputs, dropout=0.0):
        r"""Per-channel graph embeddings (LightGCN), with optional dropout after every layer.

        Returns:
            tuple: lists of ``M + 1`` tensors ``[N_U, d]`` and ``[N_V, d]``.
        """
        if dropout == 0.0:
            return propagate_channels(self.norm_adj_matrix, self.user_embedding.weight, item_inputs, self.n_layers)
        ego = torch.cat(
            [torch.cat([self.user_embedding.weight, items], dim=0) for items in item_inputs], dim=1
        )  # [N_U + N_V, (M+1) d]
        layers = [ego]
        for _ in range(self.n_layers):
            ego = F.dropout(torch.sparse.mm(self.norm_adj_matrix, ego), dropout, training=True)
            layers.append(ego)
        out = torch.stack(layers, dim=1).mean(dim=1)
        chunks = torch.split(out, self.latent_dim, dim=1)
        return [c[: self.n_users] for c in chunks], [c[self.n_users :] for c in chunks]

    def readout(self, user_channels, item_channels):
        r"""The concatenation fusion of the paper followed by a linear map to ``d``."""
        return self.user_readout(torch.cat(user_channels, dim=1)), self.item_readout(torch.cat(item_channels, dim=1))

    def forward(self):
        user_channels, item_channels = self.encode(self.item_inputs())
        user_e, item_e = self.readout(user_channels, item_channels)
        return user_e, item_e, item_channels

    def two_view_loss(self, users, items, dropout, mask):
        r"""FD / FM / FD+FM: InfoNCE between two augmented views of users and of items."""
        views = []
        if mask:
            first = int(torch.randint(self.n_modalities + 1, (1,), device="cpu"))
            second = (first + 1 + int(torch.randint(self.n_modalities, (1,), device="cpu"))) % (self.n_modalities + 1)
            masked = (first, second)
        else:
            masked = (None, None)
        for channel in masked:
            user_channels, item_channels = self.encode(self.item_inputs(channel), dropout)
            views.append(
                (
                    self.user_readout(torch.cat([c[users] for c in user_channels], dim=1)),
                    self.item_readout(torch.cat([c[items] for c in item_channels], dim=1)),
                )
            )
        (u1, i1), (u2, i2) = views
        return info_nce(u1, u2, self.ssl_temperature) + info_nce(i1, i2, self.ssl_temperature)

    def fac_loss(self, item_channels, items):
        r"""FAC: align the ID channel with modality 1, that space with modality 2, and so on."""
        anchor = item_channels[0][items]  # [B, d]
        loss = 0.0
        for m in range(self.n_modalities):
            anchor = self.fac_anchor[m](anchor)
            target = self.fac_modality[m](item_channels[m + 1][items])
            loss = loss + info_nce(anchor, target, self.ssl_temperature)
        return loss

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        user_e, item_e, item_channels = self.forward()
        u_embeddings = user_e[user]
        pos_scores = torch.mul(u_embeddings, item_e[pos_item]).sum(dim=1)
        neg_scores = torch.mul(u_embeddings, item_e[neg_item]).sum(dim=1)
        mf_loss = self.mf_loss(pos_scores, neg_scores)

        reg_loss = self.reg_loss(
            self.user_embedding(user), self.item_embedding(pos_item), self.item_embedding(neg_item)
        )

        users, items = torch.unique(user), torch.unique(pos_item)
        if self.ssl_task == "FAC":
            ssl_loss = self.fac_loss(item_channels, items)
        else:
            dropout = self.feature_dropout if "FD" in self.ssl_task else 0.0
            ssl_loss = self.two_view_loss(users, items, dropout, mask="FM" in self.ssl_task)
        return mf_loss + self.reg_weight * reg_loss + self.ssl_weight * ssl_loss

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        user_e, item_e, _ = self.forward()
        return torch.mul(user_e[user], item_e[item]).sum(dim=1)

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            self.restore_user_e, self.restore_item_e, _ = self.forward()
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
