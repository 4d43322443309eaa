r"""
MMGCL
################################################

Reference:
    Zixuan Yi, Xi Wang, Iadh Ounis and Craig Macdonald. "Multi-modal Graph Contrastive
    Learning for Micro-video Recommendation." in SIGIR 2022, doi:10.1145/3477495.3532027.

No official implementation was published with the paper; the decisions taken
where the paper is silent are listed in the class docstring.
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
from recbole_ci2mg.model.layers.augment import edge_dropout, info_nce, propagate_channels
from recbole_ci2mg.model.layers.graph import lightgcn_propagate, symmetric_norm_adj


class MMGCL(GeneralRecommender):
    r"""MMGCL encodes every modality with its own LightGCN channel on the user-item graph,
    fuses the channels, and adds to BPR a contrastive loss between two augmented views of
    each user and item: modality edge dropout and modality masking, with a negative
    sampled by swapping one modality of the positive for another node's.

    Decisions where the paper leaves things open:

    - **Encoder.** An ID channel (LightGCN on ID embeddings, the model the paper
      extends) plus one channel per modality whose item input is a linear map
      ``d_m -> d`` of the L2-normalised (mean-imputed) features; users have one
      embedding shared by all channels. The channels are concatenated and a linear
      readout maps them to ``d`` (users and items have their own readout).
    - **Views.** View 1 is *modality edge dropout*: every channel propagates on its own
      copy of the graph with ``edge_drop_ratio`` of the edges removed (the ID channel
      too, so each modality sees a different neighbourhood). View 2 is *modality
      masking*: one modality, drawn uniformly, has its item inputs zeroed on the full
      graph; the ID channel is never masked.
    - **Negative sampling.** For each node of the batch the hard negative is its view-2
      representation with one modality channel (drawn per node) replaced by that
      channel of another node of the batch (a random permutation); it is added to the
      InfoNCE denominator beside the in-batch negatives.
    - **Loss.** Cosine InfoNCE at ``ssl_temperature``, view 1 as anchor, over the batch's
      distinct users and distinct positive items (mean over rows, user and item terms
      added), weighted by ``ssl_weight``; RecBole's ``EmbLoss`` on the ego embeddings
      of the batch (``reg_weight``).
    - **Resampling.** The edge-dropped graphs are redrawn once per epoch (in ``train()``,
      as RecBole's SGL does); the masked modality and the swapped channels per batch,
      since they cost nothing to draw.
    - **Defaults.** No official code exists and the paper's text was not at hand when
      this file was written: the values in ``properties/model/MMGCL.yaml`` (with their
      grid) follow its SLMRec/SGL lineage and could not be checked against the paper,
      except ``ssl_weight`` (0.01), chosen on TikTok's validation set because at 0.1
      the contrastive loss kept BPR from learning (the YAML gives the numbers).
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
        self.ssl_weight = config["ssl_weight"]
        self.ssl_temperature = config["ssl_temperature"]
        self.edge_drop_ratio = config["edge_drop_ratio"]

        # define layers and loss
        d = self.latent_dim
        n_channels = self.n_modalities + 1  # channel 0 = ID, channel m + 1 = modality m
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], d) for f in features)
        self.user_readout = nn.Linear(n_channels * d, d)
        self.item_readout = nn.Linear(n_channels * d, d)
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: graphs of the training interactions only
        self.norm_adj_matrix = symmetric_norm_adj(self.interaction_matrix).to(self.device)
        self.dropped_adjs = None  # one edge-dropped graph per channel, redrawn every epoch
        for m, f in enumerate(features):
            self.register_buffer(f"features_{m}", F.normalize(f, dim=1), persistent=False)  # [N_V, d_m]

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        # clear the storage variables and redraw view 1's graphs for the new epoch
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
            self.dropped_adjs = None
        return super().train(mode)

    def draw_dropped_graphs(self):
        r"""Modality edge dropout: an independent edge-dropped graph for every channel."""
        self.dropped_adjs = [
            symmetric_norm_adj(edge_dropout(self.interaction_matrix, self.edge_drop_ratio)).to(self.device)
            for _ in range(self.n_modalities + 1)
        ]

    def item_inputs(self, masked_channel=None):
        r"""Layer-0 item embeddings of every channel; ``masked_channel`` (if any) is zeroed."""
        inputs = [self.item_embedding.weight] + [
            projection(getattr(self, f"features_{m}")) for m, projection in enumerate(self.projections)
        ]
        if masked_channel is not None:
            inputs[masked_channel] = torch.zeros_like(inputs[masked_channel])
        return inputs

    def readout(self, user_channels, item_channels):
        r"""Concatenated channels ``[*, (M+1) d]`` mapped to ``[*, d]``."""
        return self.user_readout(torch.cat(user_channels, dim=1)), self.item_readout(torch.cat(item_channels, dim=1))

    def forward(self):
        user_channels, item_channels = propagate_channels(
            self.norm_adj_matrix, self.user_embedding.weight, self.item_inputs(), self.n_layers
        )
        return self.readout(user_channels, item_channels)

    def edge_dropout_view(self, inputs):
        r"""View 1: each channel on its own edge-dropped graph. Lists of ``[N_U, d]`` / ``[N_V, d]``."""
        if self.dropped_adjs is None:
            self.draw_dropped_graphs()
        users, items = [], []
        for adj, item_input in zip(self.dropped_adjs, inputs):
            out = lightgcn_propagate(adj, torch.cat([self.user_embedding.weight, item_input]), self.n_layers)
            users.append(out[: self.n_users])
            items.append(out[self.n_users :])
        return users, items

    def swapped_negatives(self, channels):
        r"""Negative sampling: per row, one modality channel replaced by another row's.

        Args:
            channels: list of ``M + 1`` tensors ``[B, d]`` (view 2 of the batch's nodes).

        Returns:
            list of ``M + 1`` tensors ``[B, d]``.
        """
        n_rows = channels[0].shape[0]
        swapped = 1 + torch.randint(self.n_modalities, (n_rows,), device=channels[0].device)  # [B]
        partner = torch.randperm(n_rows, device=channels[0].device)  # [B]
        return [
            torch.where((swapped == c).unsqueeze(1), channel[partner], channel) if c > 0 else channel
            for c, channel in enumerate(channels)
        ]

    def ssl_loss(self, users, items):
        inputs = self.item_inputs()
        ed_users, ed_items = self.edge_dropout_view(inputs)
        masked = 1 + int(torch.randint(self.n_modalities, (1,), device="cpu"))
        inputs[masked] = torch.zeros_like(inputs[masked])
        mm_users, mm_items = propagate_channels(
            self.norm_adj_matrix, self.user_embedding.weight, inputs, self.n_layers
        )

        loss = 0.0
        for ids, ed, mm, readout in (
            (users, ed_users, mm_users, self.user_readout),
            (items, ed_items, mm_items, self.item_readout),
        ):
            view_1 = readout(torch.cat([c[ids] for c in ed], dim=1))  # [B, d]
            mm_rows = [c[ids] for c in mm]
            view_2 = readout(torch.cat(mm_rows, dim=1))  # [B, d]
            negative = readout(torch.cat(self.swapped_negatives(mm_rows), dim=1))  # [B, d]
            loss = loss + info_nce(view_1, view_2, self.ssl_temperature, hard_negatives=negative)
        return loss

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        user_e, item_e = self.forward()
        u_embeddings = user_e[user]
        pos_scores = torch.mul(u_embeddings, item_e[pos_item]).sum(dim=1)
        neg_scores = torch.mul(u_embeddings, item_e[neg_item]).sum(dim=1)
        mf_loss = self.mf_loss(pos_scores, neg_scores)

        reg_loss = self.reg_loss(
            self.user_embedding(user), self.item_embedding(pos_item), self.item_embedding(neg_item)
        )
        ssl_loss = self.ssl_loss(torch.unique(user), torch.unique(pos_item))
        return mf_loss + self.reg_weight * reg_loss + self.ssl_weight * ssl_loss

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        item = interaction[self.ITEM_ID]
        user_e, item_e = self.forward()
        return torch.mul(user_e[user], item_e[item]).sum(dim=1)

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        if self.restore_user_e is None or self.restore_item_e is None:
            self.restore_user_e, self.restore_item_e = self.forward()
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
