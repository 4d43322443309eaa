r"""
MMSSL
################################################

Reference:
    Wei Wei, Chao Huang, Lianghao Xia and Chuxu Zhang. "Multi-Modal Self-Supervised
    Learning for Recommendation." in WWW 2023, doi:10.1145/3543507.3583206.

Reference code:
    https://github.com/HKUDS/MMSSL (read for the paper's open points; nothing copied).
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
from recbole_ci2mg.model.layers.augment import info_nce
from recbole_ci2mg.model.layers.graph import MeanAggregation, binary, lightgcn_propagate, symmetric_norm_adj

STRUCTURE_CHUNK = 1024  # users scored at once when the modality graphs are regenerated


class GraphDiscriminator(nn.Module):
    r"""MMSSL's discriminator: an MLP that scores one user's row of a user-item graph.

    .. math::
        D(\mathbf{a}_u) = 100 \cdot \sigma(\mathrm{MLP}(\mathbf{a}_u)), \qquad
        \mathrm{MLP}: n \to h_1 \to h_2 \to 1

    with LeakyReLU, BatchNorm and dropout after each hidden layer. The reference code
    uses :math:`h_1 = n/4, h_2 = n/8`, which is quadratic in the catalogue; here
    :math:`h_1 = \min(n/4, h)` and :math:`h_2 = \min(n/8, h/2)`, so the weights
    (:math:`n h_1 + h_1 h_2`) grow linearly with :math:`n`.

    Args:
        n_columns (int): :math:`n`, the item columns a row holds.
        hidden (int): :math:`h`, the cap on the first hidden width.
        dropout (tuple): dropout after the first and second hidden layers.

    Shapes: input ``[B, n]``, output ``[B]``.
    """

    def __init__(self, n_columns, hidden=512, dropout=(0.31, 0.5)):
        super().__init__()
        hidden_1 = max(min(n_columns // 4, hidden), 1)
        hidden_2 = max(min(n_columns // 8, hidden // 2), 1)
        self.net = nn.Sequential(
            nn.Linear(n_columns, hidden_1),
            nn.LeakyReLU(0.2),
            nn.BatchNorm1d(hidden_1),
            nn.Dropout(dropout[0]),
            nn.Linear(hidden_1, hidden_2),
            nn.LeakyReLU(0.2),
            nn.BatchNorm1d(hidden_2),
            nn.Dropout(dropout[1]),
            nn.Linear(hidden_2, 1),
        )

    def reset_parameters(self):
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm1d):
                module.reset_parameters()

    def forward(self, rows):
        return 100.0 * torch.sigmoid(self.net(rows)).view(-1)


class ModalityAttention(nn.Module):
    r"""Multi-head self-attention across the M modality views of every node (MMSSL §3.2).

    For node :math:`n` with views :math:`e^1_n, \dots, e^M_n`, head :math:`h` attends with
    :math:`\alpha^h_{ab} = \mathrm{softmax}_b(\langle W_Q^h e^a_n, W_K^h e^b_n \rangle / \sqrt{d/H})`,
    gives :math:`z^{a,h}_n = \sum_b \alpha^h_{ab} e^b_n`, and the heads are concatenated
    and mapped back to ``d``; the output is the mean over the M views.

    Shapes: input ``[M, N, d]``, output ``[N, d]``.
    """

    def __init__(self, dim, n_heads):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"embedding_size ({dim}) must be a multiple of head_num ({n_heads})")
        self.n_heads = n_heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(n_heads * dim, dim, bias=False)

    def forward(self, views):
        M, N, d = views.shape
        d_head = d // self.n_heads
        q = self.query(views).view(M, N, self.n_heads, d_head)
        k = self.key(views).view(M, N, self.n_heads, d_head)
        attention = torch.einsum("anhk,bnhk->nhab", q, k) / d_head**0.5  # [N, H, M, M]
        attention = attention.softmax(dim=-1)
        z = torch.einsum("nhab,bnd->anhd", attention, views)  # [M, N, H, d]
        return self.out(z.reshape(M, N, self.n_heads * d)).mean(dim=0)


class MMSSL(GeneralRecommender):
    r"""MMSSL learns modality-specific user-item graphs adversarially (a generator of
    modality-aware user-item affinities against a discriminator of real, Gumbel-softened
    interactions), propagates ID embeddings over each generated graph, fuses the modality
    views with self-attention, contrasts each modality's user view with the fused user
    representation, and trains all of it with BPR.

    Decisions where the paper leaves things open, and memory:

    - **Modality features.** Item input :math:`f^m_i = \mathrm{Dropout}(W^m x^m_i)` from the
      (mean-imputed, unnormalised) features; users average their training items and items
      average their users (one round, the paper's default; mean normalisation
      :math:`D^{-1}R` where the reference code uses :math:`D_U^{-1/2}R`). An item without
      training interactions keeps its own :math:`f^m_i` (the code would give it zeros).
    - **Generator and discriminator.** The generated row of user :math:`u` for modality
      :math:`m` is :math:`\mathrm{norm}((f^m_u \cdot f^m_i)_i \odot (1 - r_u))` (training
      items removed, L2-normalised). The real row is the Gumbel-softened interaction row
      :math:`\mathrm{softmax}((r_u + s_g g)/\tau_r)` plus ``real_id_scale`` times the same
      normalised row of the final (ID) embeddings, L2-normalised. WGAN-GP objective:
      :math:`L_D = \mathbb{E}D(\hat a) - \mathbb{E}D(\tilde a) + \lambda_{gp} GP`,
      :math:`L_G = -\mathbb{E}D(\hat a)` weighted by ``g_weight``.
    - **Memory of the adversarial part.** No users x items matrix is formed. Rows are
      built for at most ``adv_max_users`` distinct users of the batch (the paper's batch of
      1024) over a fixed set :math:`S` of item columns: all items (the paper), or, when
      ``disc_max_items`` is set and smaller, a random subset of that size drawn once from
      ``seed``. The discriminator's hidden widths are capped by ``disc_hidden`` (see
      :class:`GraphDiscriminator`): the reference code's :math:`|S|/4, |S|/8` make its
      weights quadratic (12.7M on TikTok's 6,710 items, 2.8G for 100k items); capped,
      they are :math:`|S| h_1 + h_1 h_2` (3.6M on TikTok with the default 512). Cost per
      batch: :math:`O(\min(B, \text{adv\_max\_users}) \cdot M \cdot |S| \cdot h_1)`.
    - **Discriminator training.** :math:`D` has its own Adam (``d_learning_rate``,
      betas (0.5, 0.9), as the reference code) and takes one step inside every
      training call of ``calculate_loss``, on detached inputs. Its parameters are
      frozen during the generator term, so RecBole's optimiser never moves them. Its
      optimiser state is not saved in checkpoints. LeakyReLU slope 0.2 (the code passes
      ``True`` as the slope, which makes it the identity).
    - **Modality-aware structure.** The modality graph :math:`\hat A^m` keeps, for every
      user, the ``structure_topk`` items of highest :math:`f^m_u \cdot f^m_i` (row-normalised;
      items average the users whose lists hold them). It is regenerated once per epoch,
      from the second on, in chunks of users (memory :math:`O(\text{chunk} \cdot N_V)`); the
      first epoch uses the real graph, as the reference code starts from it. The top-k
      lists are a persistent buffer, so a checkpoint restores the graph of its epoch.
      ``structure_refresh: False`` keeps the real graph throughout (higher on TikTok at
      90% missing, BENCHMARKS.md; the default follows the paper). The
      released code, at its defaults ``T`` 1 and ``m_topk_rate`` 1e-4, rebuilds the
      modality graphs after every batch from an index list that stays empty, so from its
      second or third batch on they hold no edges.
    - **Fusion.** :math:`\bar e^m_u = \hat A^m E_I`, :math:`\bar e^m_i = \hat A^{mT} E_U`;
      :class:`ModalityAttention` fuses them; the ID embeddings get ``id_cat_rate`` times the
      L2-normalised fusion, are propagated by LightGCN on the real graph (``n_layers``; the
      code's softmax on the last layer is left out), and the final representations add
      ``model_cat_rate`` times each L2-normalised :math:`f^m`.
    - **Cross-modal contrast.** GRACE-style InfoNCE (``cl_temperature``; in-view and
      cross-view negatives) between :math:`\bar e^m_u` and the final user representation,
      over the batch's distinct users, summed over modalities, weighted by ``cl_weight``.
    - **Regularisation.** ``reg_weight`` on the batch's final embeddings and
      ``feat_reg_weight`` on all modality features (:math:`\frac{1}{2}\|\cdot\|^2`, as the code).
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
        self.feat_dropout = config["feat_dropout"]
        self.head_num = config["head_num"]
        self.id_cat_rate = config["id_cat_rate"]
        self.model_cat_rate = config["model_cat_rate"]
        self.reg_weight = config["reg_weight"]
        self.feat_reg_weight = config["feat_reg_weight"]
        self.cl_weight = config["cl_weight"]
        self.cl_temperature = config["cl_temperature"]
        self.structure_topk = config["structure_topk"]
        self.structure_refresh = config["structure_refresh"] is not False  # unset: True, the paper
        self.g_weight = config["g_weight"]
        self.d_learning_rate = config["d_learning_rate"]
        self.gp_weight = config["gp_weight"]
        self.real_tau = config["real_tau"]
        self.gumbel_scale = config["gumbel_scale"]
        self.real_id_scale = config["real_id_scale"]
        self.adv_max_users = config["adv_max_users"]
        self.disc_max_items = config["disc_max_items"]
        self.disc_hidden = config["disc_hidden"]
        d_dropout = tuple(config["d_dropout"])

        # define layers and loss
        d = self.latent_dim
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], d) for f in features)
        self.attention = ModalityAttention(d, self.head_num)
        n_real_items = self.n_items - 1  # id 0 is padding
        n_columns = min(n_real_items, self.disc_max_items or n_real_items)
        self.discriminator = GraphDiscriminator(n_columns, self.disc_hidden, d_dropout)
        self.d_optimizer = None  # built at the first discriminator step
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()

        # storage variables for full sort evaluation acceleration
        self.restore_user_e = None
        self.restore_item_e = None

        # generate intermediate data: graphs of the training interactions only
        self.norm_adj_matrix = symmetric_norm_adj(self.interaction_matrix).to(self.device)
        self.aggregation = MeanAggregation(self.interaction_matrix, self.device)  # D_U^{-1} R and D_V^{-1} R^T
        for m, f in enumerate(features):
            self.register_buffer(f"features_{m}", f, persistent=False)  # [N_V, d_m]
        if n_columns < n_real_items:  # a fixed subset, the same for every model built from this config
            generator = torch.Generator().manual_seed(config["seed"] or 0)
            columns = 1 + torch.randperm(n_real_items, generator=generator)[:n_columns].sort().values
        else:
            columns = torch.arange(1, self.n_items)
        self.register_buffer("disc_columns", columns, persistent=False)  # S, [|S|]
        self.real_rows = binary(self.interaction_matrix).tocsr()[:, columns.numpy()]  # R[:, S], scipy CSR
        self.register_buffer(
            "structure_items", torch.zeros(self.n_modalities, self.n_users, self.structure_topk, dtype=torch.long)
        )  # top-k items of every user per modality
        self.register_buffer("structure_ready", torch.zeros((), dtype=torch.bool))
        self._epochs_started = 0

        # parameters initialization
        self.apply(xavier_uniform_initialization)
        self.discriminator.reset_parameters()
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def train(self, mode=True):
        # clear the storage variables; from the second epoch on, regenerate the modality graphs
        if mode:
            self.restore_user_e, self.restore_item_e = None, None
            if self._epochs_started > 0 and self.structure_refresh:
                self.generate_structure()
            self._epochs_started += 1
        return super().train(mode)

    # --- modality features and generated structure ---------------------------------------

    def modality_features(self, dropout=True):
        r"""Per modality, :math:`f^m_u` ``[N_U, d]`` and :math:`f^m_i` ``[N_V, d]``."""
        users, items = [], []
        for m, projection in enumerate(self.projections):
            item_f = projection(getattr(self, f"features_{m}"))
            item_f = F.dropout(item_f, self.feat_dropout, training=dropout and self.training)
            user_f, item_f = self.aggregation(item_f)
            users.append(user_f)
            items.append(item_f)
        return users, items

    @torch.no_grad()
    def generate_structure(self):
        r"""Regenerate :math:`\hat A^m`: each user's ``structure_topk`` items by :math:`f^m_u \cdot f^m_i`."""
        users, items = self.modality_features(dropout=False)
        k = min(self.structure_topk, self.n_items - 1)
        for m, (user_f, item_f) in enumerate(zip(users, items)):
            for start in range(0, self.n_users, STRUCTURE_CHUNK):
                scores = user_f[start : start + STRUCTURE_CHUNK] @ item_f.T  # [chunk, N_V]
                scores[:, 0] = float("-inf")  # padding item
                top = scores.topk(k, dim=1).indices
                self.structure_items[m, start : start + STRUCTURE_CHUNK, :k] = top
                self.structure_items[m, start : start + STRUCTURE_CHUNK, k:] = top[:, :1]
        self.structure_ready.fill_(True)

    def structure_views(self):
        r"""ID embeddings propagated over each modality graph: lists of ``[N_U, d]`` and ``[N_V, d]``."""
        user_id, item_id = self.user_embedding.weight, self.item_embedding.weight
        if not bool(self.structure_ready):
            user_view = self.aggregation.user_mean(item_id)
            item_view = self.aggregation.item_mean(user_id)
            return [user_view] * self.n_modalities, [item_view] * self.n_modalities
        user_views, item_views = [], []
        k = self.structure_items.shape[2]
        rows = torch.arange(self.n_users, device=self.device).repeat_interleave(k)
        for m in range(self.n_modalities):
            cols = self.structure_items[m].reshape(-1)
            ones = torch.ones_like(cols, dtype=torch.float)
            A = torch.sparse_coo_tensor(
                torch.stack([rows, cols]), ones / k, (self.n_users, self.n_items), check_invariants=False
            )
            user_views.append(torch.sparse.mm(A, item_id))
            item_degree = torch.bincount(cols, minlength=self.n_items).clamp(min=1).float()
            A_T = torch.sparse_coo_tensor(
                torch.stack([cols, rows]),
                ones / item_degree[cols],
                (self.n_items, self.n_users),
                check_invariants=False,
            )
            item_views.append(torch.sparse.mm(A_T, user_id))
        return user_views, item_views

    def forward(self):
        r"""Final user ``[N_U, d]`` and item ``[N_V, d]`` representations, and the views the losses need."""
        feat_users, feat_items = self.modality_features()
        view_users, view_items = self.structure_views()
        fused_user = self.attention(torch.stack(view_users))  # [N_U, d]
        fused_item = self.attention(torch.stack(view_items))  # [N_V, d]
        ego = torch.cat(
            [
                self.user_embedding.weight + self.id_cat_rate * F.normalize(fused_user, dim=1),
                self.item_embedding.weight + self.id_cat_rate * F.normalize(fused_item, dim=1),
            ]
        )
        user_e, item_e = torch.split(
            lightgcn_propagate(self.norm_adj_matrix, ego, self.n_layers), [self.n_users, self.n_items]
        )
        for user_f, item_f in zip(feat_users, feat_items):
            user_e = user_e + self.model_cat_rate * F.normalize(user_f, dim=1)
            item_e = item_e + self.model_cat_rate * F.normalize(item_f, dim=1)
        return user_e, item_e, {"feat_users": feat_users, "feat_items": feat_items, "view_users": view_users}

    # --- adversarial structure learning -------------------------------------------------

    def affinity_rows(self, user_e, item_e, real):
        r"""L2-normalised affinity rows over the columns :math:`S`, training items removed. ``[B, |S|]``."""
        scores = user_e @ item_e[self.disc_columns].T
        return F.normalize(scores * (1.0 - real), dim=1)

    def real_graph_rows(self, real, id_rows):
        r"""Gumbel-softened real interactions plus ``real_id_scale`` times the ID affinities. ``[B, |S|]``."""
        uniform = torch.rand_like(real)
        gumbel = -torch.log(-torch.log(uniform + 1e-8) + 1e-8)
        soft = F.softmax((real + self.gumbel_scale * gumbel) / self.real_tau, dim=1)
        return F.normalize(soft + self.real_id_scale * id_rows, dim=1)

    def gradient_penalty(self, real, fake):
        r"""WGAN-GP on random interpolates of each fake row and its user's real row."""
        real = real.repeat(fake.shape[0] // real.shape[0], 1)  # [M B, |S|], modality-major like ``fake``
        alpha = torch.rand(real.shape[0], 1, device=real.device)
        mixed = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
        grad = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)[0]
        return ((grad.norm(2, dim=1) - 1.0) ** 2).mean()

    def discriminator_step(self, real, fake):
        r"""One Adam step on :math:`L_D = \mathbb{E}D(\hat a) - \mathbb{E}D(\tilde a) + \lambda_{gp}GP`."""
        if self.d_optimizer is None:
            self.d_optimizer = torch.optim.Adam(
                self.discriminator.parameters(), lr=self.d_learning_rate, betas=(0.5, 0.9)
            )
        params = list(self.discriminator.parameters())
        loss = (
            self.discriminator(fake).mean()
            - self.discriminator(real).mean()
            + self.gp_weight * self.gradient_penalty(real, fake)
        )
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        self.d_optimizer.step()
        for p in params:
            p.grad = None

    def adversarial_loss(self, users, user_e, item_e, feat_users, feat_items):
        r"""Discriminator step (when training), then the generator term :math:`L_G = -\mathbb{E}D(\hat a)`."""
        if users.shape[0] > self.adv_max_users:
            users = users[torch.randperm(users.shape[0], device=users.device)[: self.adv_max_users]]
        real = torch.from_numpy(self.real_rows[users.cpu().numpy()].toarray()).to(user_e.device)  # [B, |S|]
        fake = torch.cat(
            [self.affinity_rows(u[users], i, real) for u, i in zip(feat_users, feat_items)]
        )  # [M B, |S|]
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                id_rows = self.affinity_rows(user_e[users], item_e, real)
                real_rows = self.real_graph_rows(real, id_rows)  # [B, |S|]
            self.discriminator_step(real_rows, fake.detach())
        self.discriminator.requires_grad_(False)
        try:
            return -self.discriminator(fake).mean()
        finally:
            self.discriminator.requires_grad_(True)

    # --- losses and prediction -----------------------------------------------------------

    def calculate_loss(self, interaction):
        # clear the storage variable when training
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None

        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]

        user_e, item_e, views = self.forward()
        u_embeddings, pos_embeddings, neg_embeddings = user_e[user], item_e[pos_item], item_e[neg_item]
        pos_scores = torch.mul(u_embeddings, pos_embeddings).sum(dim=1)
        neg_scores = torch.mul(u_embeddings, neg_embeddings).sum(dim=1)
        mf_loss = self.mf_loss(pos_scores, neg_scores)
        reg_loss = self.reg_loss(u_embeddings, pos_embeddings, neg_embeddings, require_pow=True)
        feat_reg = sum(
            0.5 * (u.pow(2).sum() + i.pow(2).sum()) for u, i in zip(views["feat_users"], views["feat_items"])
        ) / self.n_items

        users = torch.unique(user)
        cl_loss = sum(
            info_nce(view[users], user_e[users], self.cl_temperature, intra_view_negatives=True)
            for view in views["view_users"]
        )
        loss = mf_loss + self.reg_weight * reg_loss + self.feat_reg_weight * feat_reg + self.cl_weight * cl_loss
        if users.shape[0] > 1:  # BatchNorm needs two rows
            g_loss = self.adversarial_loss(users, user_e, item_e, views["feat_users"], views["feat_items"])
            loss = loss + self.g_weight * g_loss
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
        scores = torch.matmul(self.restore_user_e[user], self.restore_item_e.T)
        return scores.view(-1)
