r"""
CI2MG-S
################################################

CI²MG with content used as structure, beyond the paper. Reference for the
structure: LATTICE (Zhang et al., MM '21) and FREEDOM (Zhou and Shen, MM '23),
whose item-item kNN graphs this model builds from CI²MG's *generated* modalities.
"""

from functools import partial

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.model.general_recommender.ncl import NCL

from recbole_ci2mg.model.ci2mg import CI2MG
from recbole_ci2mg.model.layers.augment import info_nce
from recbole_ci2mg.model.layers.graph import ConstantSparse
from recbole_ci2mg.model.layers.item_graph import co_consumption_knn_edges, similarity_knn_edges, symmetric_normalised
from recbole_ci2mg.model.settings import require_setting

ITEM_GRAPHS = ("none", "raw", "imputed", "generated", "interactions")
CONTENT_GRAPHS = ("raw", "imputed", "generated")  # those that take "+interactions": the interactions graph beside
GRAPH_MISSING = ("self", "none")
UNSEEN_ITEMS = ("own", "graph")
GRAPH_ROLES = ("propagate", "contrast")
ID_READOUTS = {"all": 0, "propagated": 1}  # the first LightGCN layer Eq. 2's mean reads
LAYER0_GATES = ("none", "degree", "constant")
GRAPH_GATES = ("none", "degree")
GRAPH_SOURCES = ("layer0", "scored")
GRAPH_MIXES = ("mean", "learned")


class CI2MGS(CI2MG):
    r"""CI²MG-S: CI²MG whose completed modalities link similar items in a kNN
    item-item graph that the ID item embeddings are propagated on, and whose
    modality blocks may stay out of the score.

    Why (BENCHMARKS.md, "Why CI²MG ranks as it does"): on TikTok at 90 %
    missing the ID block alone of a trained CI²MG ranks better on validation
    than the whole model (9.13 against 8.37 Recall@20), while the modality
    blocks hold 74 to 83 % of the score variance. Content used as structure (a
    kNN graph beside LightGCN) is what helped there in an earlier prototype.
    At a high missing rate a graph from the raw features links only the few
    observed items; one from the generated modalities reaches every item.

    With :math:`X^V` from Eq. 2 and the item-item graph :math:`S`,

    .. math::
        \tilde{X}^V = X^V + S^{L_s} E^V, \qquad
        S = \frac{1}{G} \sum_m D_m^{-1/2} A_m D_m^{-1/2},

    where :math:`E^V` are the ID item embeddings (FREEDOM's Eq. 4) and
    :math:`A_m` links each item to the ``item_graph_k`` items most cosine-similar
    to it in modality ``m`` (weights: the cosine, cut at 0; LATTICE's Eq. 1-3),
    over the :math:`G` graphs (the :math:`M` modalities', and the interactions
    graph with ``+interactions``).
    The score is Eq. 13 with :math:`\tilde{X}^V` in the ID block, or the ID block
    alone when ``score_content`` is off (the modality branch then trains through
    Eq. 10 and 12 only, and reaches the ranking through :math:`S`).

    Switches (each an ablation row; the YAML says which default was chosen on what):

    - ``item_graph``: ``none`` (CI²MG's Eq. 13), ``raw`` (the standardised
      features; an item missing modality ``m`` has at most its self-loop in
      :math:`A_m`, ``item_graph_missing``; built once), ``imputed`` (the same
      features with the missing rows completed by feature propagation, Rossi et
      al., LoG '22: Eq. 1's two-hop mean over the training graph, repeated
      ``item_graph_imputation_steps`` times with the observed rows reset to
      their features after each; an item that no observed item reaches stays
      outside the graph as in ``raw``; built once), ``interactions`` (no content:
      each item's nearest items by the cosine of their training users, ItemKNN's
      similarity, the same graph in every modality's place, items without
      training interactions outside it as in ``raw``; built once; the control
      that says how much of a content graph's gain a purely collaborative
      graph gives), or ``generated`` (:math:`Z^m`, Eq. 11, of every
      item, rebuilt at the start of every training epoch from the model in
      evaluation mode, so no training state is drawn; first when the model
      is built, from the initialised :math:`Z^m`, random projections of the
      aggregated content).
    - ``item_graph_missing`` (``raw``): an item missing modality ``m`` has a
      self-loop in :math:`A_m` (``self``), so :math:`S E^V` adds its own
      embedding again, or an empty row (``none``), so an item missing every
      modality keeps its Eq. 2 embedding alone.
    - ``item_graph`` ``raw+interactions``, ``imputed+interactions`` or
      ``generated+interactions``: that content graph with the ``interactions``
      graph as one more graph :math:`A_{M+1}` beside the modalities', so that
      :math:`S` averages :math:`M + 1` graphs (content and collaborative
      structure together).
    - ``unseen_items``: an item without training interactions keeps its own
      Eq. 2 embedding beside :math:`S E^V` (``own``), or is its graph
      neighbours' embeddings alone (``graph``): its own ID embedding was
      trained only as a BPR negative, so it carries no evidence for any
      user, and with ``graph`` it enters :math:`S E^V` nowhere either.
    - ``score_content``: whether the modality blocks enter Eq. 13. Off, with
      ``item_graph`` ``none`` or ``raw``, no score reads the generation
      branch: it is not run (nor its losses, which would train only itself),
      and the model is Eq. 2 plus the graph, at LightGCN's cost (SimGCL's with
      ``id_noise_contrast``).
    - ``item_graph_role``: ``propagate`` (the item embedding of Eq. 2 plus
      :math:`S^{L_s} E^V`, above) or ``contrast``: the score keeps Eq. 2's
      embeddings and the graph enters only a loss that pulls a batch item's
      layer-0 embedding toward its neighbours' (below), so an item with
      content and one without are scored alike.
    - ``id_contrast``: NCL's two contrastive losses on Eq. 2's ID embeddings
      (Lin et al., WWW '22, a stronger ID objective than BPR alone): the
      structure-contrastive one between a node's layer-0 and layer
      ``2 ssl_hyper_layers`` embeddings (its Eq. 7-9), and the prototype-
      contrastive one between a node's layer-0 embedding and its k-means
      centroid (Eq. 11-13), computed by RecBole's own ``NCL`` methods, with
      NCL's trainer schedule (``NCLTrainer``'s, on RecBole's ``Trainer``:
      :class:`~recbole_ci2mg.compat.PrototypeEStepMixin`) running the E-step
      (k-means) every ``m_step`` epochs and leaving the prototype term out for
      the first ``warm_up_step``.
      With ``item_graph`` ``none`` and ``score_content`` off the model is NCL
      with Eq. 2's ``n_layers``.
    - ``id_readout``: Eq. 2's mean over LightGCN layers ``0..L`` (``all``,
      the paper's and LightGCN's) or ``1..L`` (``propagated``, SimGCL's
      encoder), for the score and every loss alike. With ``propagated`` an
      item without training interactions has a zero Eq. 2 embedding: only
      the graph term of ``propagate`` can place it.
    - ``id_noise_contrast``: SimGCL's contrastive loss (Yu et al., SIGIR '22,
      another stronger ID objective): an InfoNCE between two views of the ID
      embeddings that differ only by random noise of norm ``noise_eps`` added
      after every propagation step of Eq. 2 (below). ``noise_readout``: the
      layers the two views average, those of the score (``scored``) or
      ``all`` / ``propagated`` whatever the score reads.
    - ``layer0_gate``: ``degree`` adds a node's own layer-0 embedding to Eq. 2's
      mean, weighted by its training degree, :math:`X_n \mathrel{+}= \frac{d_n}{d_n + c}
      E_n` with :math:`c` = ``layer0_gate_degree`` (the degree at which half of it
      is kept), for the score and both noise views; ``none`` adds nothing. A
      node with many interactions keeps the embedding they trained, one with
      few is read from its neighbours (``propagated``'s readout). ``constant``
      weights every node's alike, by ``layer0_gate_weight`` (the degree's
      ablation).
    - ``item_graph_gate`` (``propagate``): ``degree`` weights an item's graph
      term by :math:`\frac{c}{d_i + c}`, :math:`c` = ``item_graph_gate_degree``,
      so that an item with few training interactions is read mostly from its
      graph neighbours and one with many keeps the embedding they trained;
      ``none`` adds :math:`S E^V` to every item alike.
    - ``item_graph_source`` (``propagate``): what :math:`S` propagates,
      the items' layer-0 ID embeddings (``layer0``, :math:`E^V`, FREEDOM's) or
      their Eq. 2 embeddings as scored, layer-0 gate included (``scored``), so
      that an item without training interactions, whose Eq. 2 embedding is
      zero under ``id_readout: propagated``, is placed among its neighbours'
      scored embeddings rather than among their layer-0 ones.
    - ``item_graph_mix`` (``propagate``): how the :math:`G` graphs (one per
      modality, and the interactions graph of ``+interactions``) make
      :math:`S`: their ``mean``, or ``learned``, LATTICE's learned modality
      weights (Zhang et al., MM '21, its sum of modality graphs), :math:`S = \sum_g \alpha_g
      \tilde{A}_g` with :math:`\alpha = \mathrm{softmax}(w)`, :math:`w \in
      \mathbb{R}^G` trained with the model from zeros (the mean), so that a
      dataset's training interactions choose between its content and
      interactions graphs.

    The graph-contrastive loss of ``item_graph_role: contrast`` is NCL's
    structure-contrastive InfoNCE (its Eq. 7) with the item's graph
    neighbourhood as the positive view, over the distinct batch items :math:`B_S`
    that have a neighbour other than themselves,

    .. math::
        \mathcal{L}_S = -\sum_{i \in B_S} \log
            \frac{\exp(\cos(e_i, (S E^V)_i) / \tau)}{\sum_{j} \exp(\cos(e_i, (S E^V)_j) / \tau)},

    weighted by ``graph_contrast_reg``, with :math:`\tau` = ``ssl_temp`` and one step of
    :math:`S` (``item_graph_layers`` is for ``propagate``).

    The noise-contrastive loss of ``id_noise_contrast`` is SimGCL's InfoNCE on this
    model's own ID embeddings: :math:`x'_n` and :math:`x''_n` are Eq. 2's
    embeddings (with the graph term of ``propagate``) computed twice, each with
    SimGCL's noise after every LightGCN step
    (:func:`~recbole_ci2mg.model.layers.graph.lightgcn_layers`), and

    .. math::
        \mathcal{L}_N = \frac{1}{|B_U|} \sum_{u \in B_U} -\log
            \frac{\exp(\cos(x'_u, x''_u) / \tau_N)}{\sum_{v \in B_U} \exp(\cos(x'_u, x''_v) / \tau_N)}
            + (\text{the same over the batch's positive items } B_V),

    over the batch's distinct users :math:`B_U` and positive items, weighted by
    ``noise_reg``, :math:`\tau_N` = ``noise_temp``. The views use the scored
    readout (``id_readout``); with ``propagated`` and ``item_graph`` ``none``
    the model is SimGCL.

    The graph (neighbours and weights) is a buffer of the model, saved in
    checkpoints, so a reloaded model scores with the graph it was validated with.
    All other settings are CI²MG's (``properties/model/CI2MG.yaml`` is read first).
    """

    properties_from = ("CI2MG",)
    recbole_trainer = "NCL"  # NCL's E-step schedule (trainer.get_trainer): the k-means of id_contrast, skipped without it
    # id_contrast: RecBole's NCL methods, which read only attributes set in __init__
    run_kmeans = NCL.run_kmeans
    ssl_layer_loss = NCL.ssl_layer_loss
    ProtoNCE_loss = NCL.ProtoNCE_loss

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        setting = partial(require_setting, config, model=type(self).__name__)

        def choice(key, choices):
            value = setting(key)
            if value not in choices:
                raise ValueError(f"{type(self).__name__}: {key} must be one of {tuple(choices)}, got {value!r}")
            return value

        self.score_content = setting("score_content")
        # "imputed+interactions": the content graph imputed, and the interactions graph beside it
        self.item_graph, plus, extra = str(setting("item_graph")).partition("+")
        self.add_interactions = bool(plus)
        added_wrongly = plus and (extra != "interactions" or self.item_graph not in CONTENT_GRAPHS)
        if self.item_graph not in ITEM_GRAPHS or added_wrongly:
            raise ValueError(f"{type(self).__name__}: item_graph must be one of {ITEM_GRAPHS}, or one of "
                             f"{CONTENT_GRAPHS} followed by +interactions (e.g. imputed+interactions), got "
                             f"{setting('item_graph')!r}")
        self.item_graph_k = setting("item_graph_k")
        self.item_graph_layers = setting("item_graph_layers")
        self.item_graph_missing = choice("item_graph_missing", GRAPH_MISSING)
        self.unseen_items = choice("unseen_items", UNSEEN_ITEMS)
        if self.unseen_items == "graph" and self.item_graph == "none":
            raise ValueError(f"{type(self).__name__}: unseen_items graph takes an unseen item's embedding from the "
                             f"item-item graph, and item_graph is none: set item_graph raw, imputed, generated or "
                             f"interactions, or unseen_items own.")
        self.item_graph_role = choice("item_graph_role", GRAPH_ROLES)
        if self.item_graph_role == "contrast":
            if self.item_graph == "none" or self.unseen_items == "graph":
                raise ValueError(f"{type(self).__name__}: item_graph_role contrast needs an item-item graph "
                                 f"(item_graph raw, imputed, generated or interactions) and leaves every item its "
                                 f"own embedding (unseen_items own); got item_graph {self.item_graph!r}, unseen_items "
                                 f"{self.unseen_items!r}.")
            self.graph_contrast_reg, self.ssl_temp = setting("graph_contrast_reg"), setting("ssl_temp")
        # [N_V, 1]: the items with training interactions (the dataset's cold_items are the others)
        self.register_buffer("seen_items", ~dataset.cold_items.unsqueeze(1), persistent=False)
        if self.item_graph_k < 1 or self.item_graph_layers < 1:
            raise ValueError(f"{type(self).__name__}: item_graph_k and item_graph_layers must be at least 1.")
        if not self.content_reaches_score:
            self.logger.info(
                f"{type(self).__name__}: with item_graph {config['item_graph']} and score_content False no score reads "
                f"the generated modalities, so the generation branch and its losses (Eq. 1, 3-12) are not run: "
                f"the model is Eq. 2 and the item-item graph, trained with BPR, reg_weight and the ID losses that are "
                f"on (id_contrast, id_noise_contrast, item_graph_role contrast)."
            )
            # the branch is not run, so none of its parts is on (its losses would train nothing any score reads)
            self.use_intra = self.use_inter = self.use_contrastive = self.use_task_guided = False
            self.leave_batch_edges_out = False  # Eq. 1 is not run: no per-batch left-out edges to build
        self.id_contrast = setting("id_contrast")
        self.uses_prototypes = self.id_contrast  # read by NCL's E-step schedule (compat.PrototypeEStepMixin)
        if self.id_contrast:  # the attribute names RecBole's NCL methods read
            self.ssl_temp, self.ssl_reg, self.alpha = setting("ssl_temp"), setting("ssl_reg"), setting("ssl_alpha")
            self.proto_reg, self.k = setting("proto_reg"), setting("num_clusters")
            self.ssl_hyper_layers = setting("ssl_hyper_layers")
            if self.ssl_hyper_layers < 1:
                raise ValueError(f"{type(self).__name__}: ssl_hyper_layers must be at least 1.")
            if not 1 <= self.k <= min(self.n_users, self.n_items):
                raise ValueError(
                    f"{type(self).__name__}: num_clusters ({self.k}) must be between 1 and the number of users "
                    f"({self.n_users}) and of items ({self.n_items}) of this dataset: set --num_clusters lower."
                )
            self.user_centroids = self.user_2cluster = self.item_centroids = self.item_2cluster = None
            self._contrast_layers = None
        self.id_readout = choice("id_readout", ID_READOUTS)
        self.id_readout_from = ID_READOUTS[self.id_readout]
        if self.id_readout_from > self.n_layers:
            raise ValueError(f"{type(self).__name__}: id_readout propagated reads layers 1..n_layers, and "
                             f"n_layers is {self.n_layers}: set n_layers to at least 1.")
        self.layer0_gate = choice("layer0_gate", LAYER0_GATES)
        if self.layer0_gate == "degree":
            half = setting("layer0_gate_degree")
            if not half > 0:
                raise ValueError(f"{type(self).__name__}: layer0_gate_degree must be > 0, got {half}.")
            weights = [degree / (degree + half) for degree in self.training_degrees()]
        elif self.layer0_gate == "constant":
            weight = setting("layer0_gate_weight")
            if not weight > 0:
                raise ValueError(f"{type(self).__name__}: layer0_gate_weight must be > 0, got {weight}.")
            weights = [torch.full((n,), float(weight)) for n in (self.n_users, self.n_items)]
        if self.layer0_gate != "none":
            for name, weight in zip(("user_layer0_weight", "item_layer0_weight"), weights):  # [N, 1]
                self.register_buffer(name, weight.unsqueeze(1), persistent=False)
        self.item_graph_source = choice("item_graph_source", GRAPH_SOURCES)
        self.item_graph_gate = choice("item_graph_gate", GRAPH_GATES)
        self.item_graph_mix = choice("item_graph_mix", GRAPH_MIXES)
        shaped = (self.item_graph_source != "layer0", self.item_graph_gate != "none", self.item_graph_mix != "mean")
        if any(shaped) and (self.item_graph == "none" or self.item_graph_role != "propagate"):
            raise ValueError(f"{type(self).__name__}: item_graph_source {self.item_graph_source}, item_graph_gate "
                             f"{self.item_graph_gate} and item_graph_mix {self.item_graph_mix} shape the graph term of "
                             f"item_graph_role propagate, and this model has none (item_graph {self.item_graph!r}, "
                             f"item_graph_role {self.item_graph_role!r}): set item_graph_source layer0, item_graph_gate "
                             f"none and item_graph_mix mean.")
        n_graphs = self.n_modalities + int(self.add_interactions)
        if self.item_graph_mix == "learned":
            if self.item_graph == "interactions" or n_graphs < 2:  # one graph, or M copies of it: nothing to weigh
                raise ValueError(f"{type(self).__name__}: item_graph_mix learned weighs two or more different graphs, "
                                 f"and item_graph {setting('item_graph')!r} on {self.n_modalities} modality(ies) gives "
                                 f"one: add +interactions to a content graph (e.g. imputed+interactions), or set "
                                 f"item_graph_mix mean.")
            self.item_graph_logits = torch.nn.Parameter(torch.zeros(n_graphs))  # [G]: w, softmax(0) is the mean
        if self.item_graph_gate == "degree":
            half = setting("item_graph_gate_degree")
            if not half > 0:
                raise ValueError(f"{type(self).__name__}: item_graph_gate_degree must be > 0, got {half}.")
            item_degree = self.training_degrees()[1]
            self.register_buffer("item_graph_weight", (half / (item_degree + half)).unsqueeze(1), persistent=False)  # [N_V, 1]
        self.id_noise_contrast = setting("id_noise_contrast")
        if self.id_noise_contrast:
            self.noise_eps, self.noise_reg, self.noise_temp = setting("noise_eps"), setting("noise_reg"), setting("noise_temp")
            if self.noise_eps <= 0 or self.noise_temp <= 0:
                raise ValueError(f"{type(self).__name__}: id_noise_contrast needs noise_eps > 0 and noise_temp > 0, "
                                 f"got noise_eps {self.noise_eps}, noise_temp {self.noise_temp}.")
            noise_readout = setting("noise_readout")
            if noise_readout != "scored" and noise_readout not in ID_READOUTS:
                raise ValueError(f"{type(self).__name__}: noise_readout must be one of "
                                 f"{('scored', *ID_READOUTS)}, got {noise_readout!r}")
            self.noise_readout_from = self.id_readout_from if noise_readout == "scored" else ID_READOUTS[noise_readout]
            if self.noise_readout_from > self.n_layers:
                raise ValueError(f"{type(self).__name__}: noise_readout propagated reads layers 1..n_layers, and "
                                 f"n_layers is {self.n_layers}: set n_layers to at least 1.")
        k = min(self.item_graph_k, self.n_items)
        shape = (n_graphs, self.n_items, k)  # the interactions graph last
        self.register_buffer("graph_neighbours", torch.zeros(shape, dtype=torch.long))  # [G, N_V, k]
        self.register_buffer("graph_weights", torch.zeros(shape))  # [G, N_V, k]
        self.register_buffer("graph_built", torch.zeros((), dtype=torch.bool))
        self._item_adj = self._item_adjs = self._linked = None  # derived from the graph buffers on first use
        if self.item_graph == "interactions" or self.add_interactions:
            neighbours, weights, _ = co_consumption_knn_edges(
                self.interaction_matrix, k, outsider_loops=self.item_graph_missing == "self"
            )
            if self.add_interactions:
                self.store_item_graph([(neighbours, weights)], first=self.n_modalities)
        if self.item_graph == "raw":
            self.set_item_graph([self.observed_rows(m) for m in range(self.n_modalities)])
        elif self.item_graph == "imputed":
            self.imputation_steps = setting("item_graph_imputation_steps")
            if self.imputation_steps < 1:
                raise ValueError(f"{type(self).__name__}: item_graph_imputation_steps must be at least 1, "
                                 f"got {self.imputation_steps}.")
            self.set_item_graph([self.propagated_features(m) for m in range(self.n_modalities)])
        elif self.item_graph == "interactions":  # the content-free control: one graph in every modality's place
            self.store_item_graph([(neighbours, weights)] * self.n_modalities)
        elif self.item_graph == "generated":
            self.rebuild_generated_graph()  # from the initialised model, so a fresh model scores with a graph too

    @property
    def content_reaches_score(self):
        """Whether a score reads the generation branch: through Eq. 13's blocks or the generated graph."""
        return self.score_content or self.item_graph == "generated"

    @property
    def score_blocks(self):
        return ["id"] + (list(self.modality_names) if self.score_content else [])

    def set_item_graph(self, features):
        r"""Build :math:`S` from one ``(features [N_V, d_m], nodes [n'])`` per modality (the nodes' kNN)."""
        k = self.graph_neighbours.shape[2]
        edges = []
        for values, nodes in features:
            members = torch.zeros(self.n_items, dtype=torch.bool, device=values.device)
            if nodes.numel() > 1:  # a lone node has no neighbour but itself: it keeps its self-loop
                members[nodes] = True
            neighbours, weights, _ = similarity_knn_edges(  # unused slots weigh 0
                values.detach(), k, members, outsider_loops=self.item_graph_missing == "self" or nodes.numel() <= 1
            )
            edges.append((neighbours, weights))
        self.store_item_graph(edges)

    def store_item_graph(self, edges, first=0):
        """Keep ``(neighbours [N_V, k], weights [N_V, k])`` as the graphs :math:`A_m` from the ``first`` on."""
        for m, (neighbours, weights) in enumerate(edges, start=first):
            self.graph_neighbours[m].copy_(neighbours)
            self.graph_weights[m].copy_(weights)
        self.graph_built.fill_(True)
        self._item_adj = self._item_adjs = self._linked = None

    def training_degrees(self):
        """``([N_U], [N_V])`` float: each user's and each item's number of training interactions."""
        return tuple(torch.from_numpy(np.asarray(self.interaction_matrix.sum(axis=a)).ravel()).float() for a in (1, 0))

    def observed_rows(self, m):
        """Modality ``m``'s standardised features ``[N_V, d_m]``, missing rows 0 (never linked), and its observed items."""
        index, rows = self.content.observed_index(m), self.content.observed_features(m)
        return rows.new_zeros(self.n_items, rows.shape[1]).index_copy(0, index, rows), index

    @torch.no_grad()
    def propagated_features(self, m):
        r"""Modality ``m`` completed by feature propagation: ``(features [N_V, d_m], nodes [n'])``.

        The class docstring's ``imputed`` graph: the standardised observed rows,
        missing rows 0, then ``item_graph_imputation_steps`` times Eq. 1's
        two-hop mean over the training graph, the observed rows reset to their
        features after each step. The nodes are the items with a non-zero row
        (observed, or reached from an observed item).
        """
        observed, index = self.observed_rows(m)
        known = torch.zeros(self.n_items, 1, dtype=torch.bool, device=observed.device)
        known[index] = True
        values = observed
        for _ in range(self.imputation_steps):
            _, values = self.content.aggregation(values)
            values = torch.where(known, observed, values)
        return values, torch.nonzero(values.abs().sum(dim=1) > 0).squeeze(1)

    def linked_items(self):
        """``[N_V]`` bool: the items with a neighbour other than themselves in some modality's graph."""
        if self._linked is None:
            own = torch.arange(self.n_items, device=self.graph_neighbours.device).view(1, -1, 1)
            self._linked = ((self.graph_neighbours != own) & (self.graph_weights > 0)).any(dim=2).any(dim=0)
        return self._linked

    def graph_contrast_loss(self, items):
        r""":math:`\mathcal{L}_S` (class docstring) over the distinct ``items`` ``[B]`` that have neighbours."""
        items = torch.unique(items)
        items = items[self.linked_items()[items]]
        if items.numel() == 0:
            return self.item_embedding.weight.new_zeros(())
        own = F.normalize(self.item_embedding(items))  # [B_S, d]
        neighbourhood = F.normalize(self.item_adjacency() @ self.item_embedding.weight)  # [N_V, d]
        logits = own @ neighbourhood.T / self.ssl_temp  # [B_S, N_V]
        return F.cross_entropy(logits, items, reduction="sum")

    def normalised_graphs(self):
        r"""The graphs :math:`\tilde{A}_g`, each symmetrically normalised, as ``scipy`` CSR ``[N_V, N_V]``."""
        n, k = self.n_items, self.graph_neighbours.shape[2]
        rows = torch.arange(n, device="cpu").repeat_interleave(k)  # built on the CPU for scipy
        for neighbours, weights in zip(self.graph_neighbours.cpu(), self.graph_weights.cpu()):
            cols = neighbours.reshape(-1)
            values = symmetric_normalised(rows, cols, weights.reshape(-1), n)
            yield sp.coo_matrix((values.numpy(), (rows.numpy(), cols.numpy())), shape=(n, n)).tocsr()

    def item_adjacency(self):
        r""":math:`S`, the graphs' mean, as a :class:`ConstantSparse` ``[N_V, N_V]``, built from the buffers on first use."""
        if self._item_adj is None:
            self._item_adj = ConstantSparse(sum(self.normalised_graphs()) / self.graph_neighbours.shape[0], self.device)
        return self._item_adj

    def item_adjacencies(self):
        r"""The graphs :math:`\tilde{A}_g` as :class:`ConstantSparse`, for ``item_graph_mix`` learned."""
        if self._item_adjs is None:
            self._item_adjs = [ConstantSparse(graph, self.device) for graph in self.normalised_graphs()]
        return self._item_adjs

    def item_graph_names(self):
        """The graphs' names for ``item_graph_mix`` learned, in the order of ``item_graph_logits``."""
        return list(self.modality_names) + (["interactions"] if self.add_interactions else [])

    def propagate_on_item_graph(self, values):
        r""":math:`S` ``values`` ``[N_V, d]``: the graphs' mean, or their softmax(w)-weighted sum (``item_graph_mix``)."""
        if self.item_graph_mix == "mean":
            return self.item_adjacency() @ values
        weights = torch.softmax(self.item_graph_logits, dim=0)  # [G]: α
        return sum(weight * (graph @ values) for weight, graph in zip(weights, self.item_adjacencies()))

    def load_state_dict(self, state_dict, strict=True):
        out = super().load_state_dict(state_dict, strict)
        self._item_adj = self._item_adjs = self._linked = None
        return out

    def train(self, mode=True):
        super().train(mode)
        if mode and self.item_graph == "generated":
            self.rebuild_generated_graph()
        return self

    @torch.no_grad()
    def rebuild_generated_graph(self):
        """:math:`S` from the current :math:`Z^m` of every item (computed in evaluation mode)."""
        super().train(False)
        try:
            _, _, views = self.forward()
        finally:
            super().train(True)
        every_item = torch.arange(1, self.n_items, device=self.device)  # id 0 is RecBole's padding
        self.set_item_graph([(z, every_item) for z in views["Z"]])
        self.restore_user_e, self.restore_item_e = None, None

    def forward(self, left_out=None):
        if self.content_reaches_score:
            return super().forward(left_out)
        user_id, item_id = self.id_embeddings()
        return user_id, item_id, {}

    def id_layers(self, n_layers=None, noise_eps=0.0):
        if not self.id_contrast or noise_eps:  # a perturbed view is no NCL context
            return super().id_layers(n_layers, noise_eps)
        context = 2 * self.ssl_hyper_layers
        layers = super().id_layers(max(self.n_layers if n_layers is None else n_layers, context))
        if self.training:  # read by this step's calculate_loss
            self._contrast_layers = layers[0], layers[context]
        return layers

    def e_step(self):
        """NCL's E-step: k-means of the layer-0 user and item embeddings (called by the trainer every m_step epochs)."""
        if self.id_contrast:
            NCL.e_step(self)

    def calculate_loss(self, interaction):
        loss = super().calculate_loss(interaction)
        if self.item_graph_role == "contrast":  # in the first term, which NCL's warm-up never drops
            loss = loss + self.graph_contrast_reg * self.graph_contrast_loss(interaction[self.ITEM_ID])
        if self.id_noise_contrast:
            loss = loss + self.noise_reg * self.noise_contrast_loss(interaction[self.USER_ID], interaction[self.ITEM_ID])
        if not self.id_contrast:
            return loss
        center, context = self._contrast_layers
        self._contrast_layers = None
        if self.user_centroids is None:  # the trainer runs the first E-step before the first epoch
            self.e_step()
        user, pos_item = interaction[self.USER_ID], interaction[self.ITEM_ID]
        structure = self.ssl_layer_loss(context, center, user, pos_item)  # NCL's Eq. 9
        prototype = self.ProtoNCE_loss(center, user, pos_item)  # NCL's Eq. 13
        return loss, structure, prototype  # the trainer drops the last one for the first warm_up_step epochs

    def noise_contrast_loss(self, users, items):
        r""":math:`\mathcal{L}_N` (class docstring) over the distinct ``users`` and ``items`` ``[B]`` of a batch."""
        users, items = torch.unique(users), torch.unique(items)
        views = partial(self.id_embeddings, self.noise_eps, self.noise_readout_from)
        (user_1, item_1), (user_2, item_2) = views(), views()
        return info_nce(user_1[users], user_2[users], self.noise_temp) + info_nce(
            item_1[items], item_2[items], self.noise_temp
        )

    def id_embeddings(self, noise_eps=0.0, readout_from=None):
        user_id, item_id = super().id_embeddings(noise_eps, readout_from)
        if self.layer0_gate != "none":  # the class docstring's layer0_gate
            user_id = user_id + self.user_layer0_weight * self.user_embedding.weight
            item_id = item_id + self.item_layer0_weight * self.item_embedding.weight
        if self.item_graph == "none" or self.item_graph_role == "contrast" or not bool(self.graph_built):
            return user_id, item_id
        # the class docstring's item_graph_source
        propagated = self.item_embedding.weight if self.item_graph_source == "layer0" else item_id
        if self.unseen_items == "graph":  # an unseen item's own ID embedding is left out everywhere
            propagated, item_id = propagated * self.seen_items, item_id * self.seen_items
        for _ in range(self.item_graph_layers):
            propagated = self.propagate_on_item_graph(propagated)
        if self.item_graph_gate == "degree":  # the class docstring's item_graph_gate
            propagated = self.item_graph_weight * propagated
        return user_id, item_id + propagated

    def scoring_embeddings(self, user_id, item_id, user_views, Z):
        if self.score_content:
            return super().scoring_embeddings(user_id, item_id, user_views, Z)
        return user_id, item_id
