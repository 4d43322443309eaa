r"""
SiBraR
################################################

Reference:
    Christian Ganhör, Marta Moscati, Anna Hausberger, Shah Nawaz and Markus Schedl.
    "A Multimodal Single-Branch Embedding Network for Recommendation in Cold-Start and
    Missing Modality Scenarios." in RecSys 2024, doi:10.1145/3640457.3688138.

Reference code:
    https://github.com/Tigxy/SiBraR---Single-Branch-Recommender (``SingleBranchNet`` in
    ``algorithms/sgd_alg.py`` and its configs under ``conf/``; read for the paper's open
    points, nothing copied).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_uniform_initialization
from recbole.model.loss import BPRLoss
from recbole.utils import InputType

from recbole_ci2mg.data import require_modalities
from recbole_ci2mg.model.layers.augment import info_nce
from recbole_ci2mg.model.layers.graph import binary, to_sparse_tensor


def single_branch(dim, hidden_layers, input_dropout):
    r"""The shared encoder :math:`g`: dropout, ``dim -> hidden... -> dim`` (ReLU between), BatchNorm.

    Shapes: ``[N, dim]`` -> ``[N, dim]``.
    """
    layers = [nn.Dropout(input_dropout)] if input_dropout else []
    sizes = [dim] + list(hidden_layers) + [dim]
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if k:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    layers.append(nn.BatchNorm1d(dim))
    return nn.Sequential(*layers)


def apply_branch(branch, x):
    r"""``branch(x)``; a single row in training goes through BatchNorm's running statistics (it has no batch ones)."""
    if not branch.training or x.shape[0] > 1:
        return branch(x)
    branch.eval()
    try:
        return branch(x)
    finally:
        branch.train()


class SiBraR(GeneralRecommender):
    r"""SiBraR encodes every modality of an item, its interactions included, with one
    shared network: modality-specific maps bring each input to a common size, the same
    single-branch network :math:`g` embeds whichever modality it is given, and the item
    embedding is the mean of the embeddings of the modalities it has.

    .. math::
        e_j = \frac{1}{|S_j|} \sum_{m \in S_j} g\!\left(\frac{W_m x_j^m}{\lVert W_m x_j^m \rVert}\right),
        \qquad
        e_i = h\!\left(\frac{V r_i}{\lVert V r_i \rVert}\right),
        \qquad
        \hat{y}_{ij} = e_i^\top e_j

    where :math:`x_j^0 = r_{\cdot j}` is item :math:`j`'s column of the training
    interactions, :math:`x_j^m` its features of modality :math:`m`, and :math:`r_i` user
    :math:`i`'s row (Item-SiBraR: users are encoded from their interactions by their own
    network :math:`h`). In training :math:`S_j` is a random sample of two of the item's
    available modalities (modality sampling), and a symmetric InfoNCE aligns the two
    embeddings of the same item against the other items of the batch; at evaluation
    :math:`S_j` is every modality the item has. The loss is
    :math:`\mathcal{L}_{BPR} + \lambda \mathcal{L}_{SInfoNCE}`.

    Readings of the paper and of the authors' code, where the paper is silent or the
    setting differs (the paper's full text was not at hand: its abstract, figure caption
    and the authors' code and configs were read):

    - **Available modalities.** An item's interactions are available when it has at
      least one training interaction; modality :math:`m` when the dataset's observed
      mask says so (``modality_observed``). Mean-imputed rows are never encoded: the
      authors draw among the modalities a dataset provides, and SiBraR's premise is to
      average only what an item has. An item with no training interaction and no
      observed content (nothing to encode) gets :math:`g` of its empty interaction
      column (a zero input), the same vector for every such item: finite scores, ranked
      by the users' affinity to "no content".
    - **Sampling.** Per batch, each distinct item of the batch (positives and negatives)
      draws two distinct modalities uniformly among its available ones (the authors'
      ``pairwise_single``; one when ``cl_weight`` is 0, their setting without the
      contrastive term). An item with only one available modality uses that one and
      is left out of the InfoNCE.
    - **Contrastive term.** Symmetric cosine InfoNCE at ``cl_temperature`` between the two
      sampled embeddings of each item, the other distinct items of the batch as negatives
      (the paper's figure contrasts a positive item with its sampled negatives; RecBole's
      pairwise sampler draws one negative per pair, so the whole batch serves).
    - **Inputs.** Interactions enter through a bias-free linear map (the sum of a learned
      vector per user, resp. per item, for a user's row), content through a linear map
      ``d_m -> embedding_size`` of the raw features, and every input is L2-normalised
      before :math:`g` (``normalize_single_branch_input``, set in the authors' tuned
      configs). Training interaction vectors include the pair being scored, as in the
      authors' code.
    - **Networks.** :math:`g` is input dropout (``input_dropout``), linear layers through
      ``single_branch_layers`` with ReLU between, and BatchNorm on the output (the
      authors' base item config: one hidden layer of 64, dropout 0.2); :math:`h` is one
      linear layer and BatchNorm (their user config, no hidden layer). Both are evaluated
      with BatchNorm's running statistics, as is a training batch of one row.
    - **Loss and optimiser.** BPR with one sampled negative (RecBole's pairwise protocol;
      the authors sample ten), AdamW with ``weight_decay`` (the authors' ``wd``); no
      other regularisation.
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load dataset info
        R = binary(dataset.inter_matrix(form="coo").astype(np.float32))  # [N_U, N_V]
        self.modality_names = require_modalities(dataset, type(self).__name__)
        features = [dataset.modality_features[name].float() for name in self.modality_names]
        observed = [dataset.modality_observed[name].bool() for name in self.modality_names]
        self.n_modalities = len(features)

        # load parameters info
        self.latent_dim = config["embedding_size"]
        self.single_branch_layers = list(config["single_branch_layers"] or [])
        self.input_dropout = config["input_dropout"] or 0.0
        self.normalize_input = bool(config["normalize_input"])
        self.cl_weight = config["cl_weight"] or 0.0
        self.cl_temperature = config["cl_temperature"]
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"SiBraR: input_dropout must be in [0, 1), got {self.input_dropout}.")
        if self.cl_weight and not self.cl_temperature > 0:
            raise ValueError(f"SiBraR: cl_temperature must be > 0, got {self.cl_temperature}.")

        # define layers and loss
        d = self.latent_dim
        self.item_interaction_map = nn.Embedding(self.n_users, d)  # W_0: item column r_j -> d
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], d) for f in features)  # W_m
        self.item_branch = single_branch(d, self.single_branch_layers, self.input_dropout)  # g
        self.user_interaction_map = nn.Embedding(self.n_items, d)  # V: user row r_i -> d
        self.user_branch = single_branch(d, [], 0.0)  # h
        self.mf_loss = BPRLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: interaction rows and columns, features, availability
        self.user_rows = to_sparse_tensor(R).to(self.device)  # [N_U, N_V]
        self.item_columns = to_sparse_tensor(R.T).to(self.device)  # [N_V, N_U]
        for m, f in enumerate(features):
            self.register_buffer(f"features_{m}", f, persistent=False)  # [N_V, d_m]
        has_interactions = torch.from_numpy(np.asarray(R.sum(axis=0)).ravel() > 0)
        available = torch.stack([has_interactions] + observed, dim=1)  # [N_V, 1 + M], channel 0 = interactions
        self.register_buffer("available", available, persistent=False)

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
        return super().train(mode)

    def _normalized(self, x):
        return F.normalize(x, dim=-1) if self.normalize_input else x

    def channel_inputs(self, items):
        r"""Every modality's common-size input for ``items``: ``[len(items), 1 + M, d]``."""
        interactions = torch.sparse.mm(self.item_columns, self.item_interaction_map.weight)[items]
        content = [projection(getattr(self, f"features_{m}")[items]) for m, projection in enumerate(self.projections)]
        return torch.stack([interactions] + content, dim=1)

    def encode_users(self, users):
        r""":math:`e_i = h(V r_i / \lVert V r_i \rVert)`, ``[len(users), d]``."""
        rows = torch.sparse.mm(self.user_rows, self.user_interaction_map.weight)[users]
        return apply_branch(self.user_branch, self._normalized(rows))

    def encode_items(self, inputs, use):
        r"""Mean over the used channels of :math:`g` applied to each, ``[N, C, d]`` -> ``[N, d]``.

        ``use`` ``[N, C]`` marks the channels to encode; a row with none encodes channel 0
        (then an empty interaction column, i.e. a zero input). Only the used channels pass
        through :math:`g`, so its BatchNorm statistics are over real inputs.

        Returns:
            tuple: the item embeddings ``[N, d]`` and the per-channel embeddings ``[N, C, d]``
            (zero where unused).
        """
        use = use.clone()
        use[:, 0] |= ~use.any(dim=1)
        encoded = torch.zeros_like(inputs)
        encoded[use] = apply_branch(self.item_branch, self._normalized(inputs[use]))
        weights = use.unsqueeze(-1).float()
        return (encoded * weights).sum(dim=1) / weights.sum(dim=1), encoded

    def sample_channels(self, items):
        r"""Modality sampling: per item, up to ``k`` distinct available channels drawn uniformly.

        Returns:
            tuple: channel indices ``[N, k]`` and whether each was available ``[N, k]``.
        """
        k = 2 if self.cl_weight else 1  # 1 + M >= 2 channels
        available = self.available[items]
        keys = torch.rand(available.shape, device=self.device).masked_fill(~available, -1.0)
        values, channels = torch.topk(keys, k, dim=1)
        return channels, values >= 0

    def forward(self):
        r"""Evaluation representations: every user ``[N_U, d]`` and every item ``[N_V, d]``, all channels."""
        items = torch.arange(self.n_items, device=self.device)
        item_e, _ = self.encode_items(self.channel_inputs(items), self.available)
        users = torch.arange(self.n_users, device=self.device)
        return self.encode_users(users), item_e

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        # each distinct item of the batch: its sampled channels, encoded once
        items, position = torch.unique(torch.cat([pos_item, neg_item]), return_inverse=True)
        channels, valid = self.sample_channels(items)
        inputs = self.channel_inputs(items).gather(1, channels.unsqueeze(-1).expand(-1, -1, self.latent_dim))
        inputs = inputs.masked_fill(~valid.unsqueeze(-1), 0.0)  # an item with nothing: a zero input
        item_e, sampled = self.encode_items(inputs, valid)  # [U, d], [U, k, d]

        users, user_position = torch.unique(user, return_inverse=True)
        u_e = self.encode_users(users)[user_position]
        pos_e, neg_e = torch.split(item_e[position], [len(pos_item), len(neg_item)])
        loss = self.mf_loss((u_e * pos_e).sum(dim=1), (u_e * neg_e).sum(dim=1))

        if self.cl_weight:
            pairs = valid.all(dim=1)
            if int(pairs.sum()) > 1:
                first, second = sampled[pairs, 0], sampled[pairs, 1]
                cl_loss = 0.5 * (
                    info_nce(first, second, self.cl_temperature) + info_nce(second, first, self.cl_temperature)
                )
                loss = loss + self.cl_weight * cl_loss
        return loss

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
