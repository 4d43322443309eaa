r"""Inter-modality generation by entropic optimal transport (CI²MG, Eq. 6-9).

For modalities :math:`m \neq m'` the cost is the squared distance between
their intra-modality item representations (Eq. 6), the marginals are all-ones
vectors (Eq. 7-8), and the entropic problem is solved with Sinkhorn. The
inter-modality view of modality ``m`` is a barycentric projection (Eq. 9):

.. math::
    \hat{Q}^m = \frac{1}{M-1} \sum_{m' \neq m}
        \mathrm{diag}(1/\mu^{mm'}) (T^{mm'} + \Delta T^{mm'}) Q^{m'},
    \qquad \mu^{mm'} = (T^{mm'} + \Delta T^{mm'}) \mathbf{1}.

Every plan is an explicit object (:class:`DensePlan`, :class:`BlockDiagonalPlan`,
:class:`PrototypePlan`) with ``apply(values) -> (T values, T 1)`` and its
transpose ``.T``; :attr:`InterModalityTransport.plans` holds one per ordered
pair of modalities until the next solve.

Decisions where the paper is silent:

- **Units.** With all-ones marginals a plan's rows sum to one, so
  :math:`T \mathbf{1} \approx \mathbf{1}`; Sinkhorn stops before exact
  convergence and ``diag(1/mu)`` makes every row sum to one exactly.
- **Cost scale.** The cost is divided by its mean over all pairs,
  :math:`\overline{\|x_i - y_j\|^2} = \overline{\|x\|^2} + \overline{\|y\|^2} - 2
  \bar{x}\cdot\bar{y}`, computed in :math:`O(Nd)`, so one ``reg`` works on any
  dataset and every solver sees the same problem.
- **Gradients.** The plan is computed without gradient by default;
  gradients reach the model through :math:`Q^{m'}` and :math:`\Delta T`.
  ``differentiable=True`` backpropagates through the Sinkhorn iterations.
- **When the plan is solved** (``refresh``). The plan carries no gradient
  (above), so it is a constant of each step: ``step`` solves it at every
  training step, an integer ``k`` every ``k`` training steps, ``epoch`` once
  per training epoch (at its first step), and the steps in between reuse it
  (:math:`Q^{m'}` and ΔT in Eq. 9 stay live). Evaluation (``eval_plan``)
  solves once per pass on the current :math:`Q` (``solve``), or reuses the
  plans training solved last (``reuse``).
- **Symmetry.** :math:`T^{m'm} = (T^{mm'})^T` (the cost is transposed and the
  marginals are equal), so one problem is solved per unordered pair.
- **ΔT** ("adjustable transport parameter", after OTKGE) is a registered,
  trained parameter per ordered pair, in units of the uniform plan
  (:math:`1/N` per entry), centred so each of its rows sums to zero: the
  adjustment moves mass between targets without changing a row's total, so
  :math:`\mu = T\mathbf{1} > 0` and ``diag(1/mu)`` can never divide by zero.
  It starts at zero.

Three solvers:

- ``dense``: the faithful problem over all items, ``ot.sinkhorn`` with POT's
  stabilised (log-absorption) method, an ``N x N`` plan and a dense
  ``N x N`` ΔT. Memory :math:`O(N^2)`: small catalogues only.
- ``scalable`` (default): mini-batch OT (Fatras et al., "Learning with
  minibatch Wasserstein", AISTATS 2020). The items are split into random
  blocks of about ``block_size`` (a fresh partition for every plan solved in
  training; evaluation uses the partition last trained with, so predictions
  are deterministic) and one OT problem per block is solved between the
  block's items in both modalities, all blocks at once
  (:func:`sinkhorn_scalings`). The blocks' plans together form a
  block-diagonal plan that still has all-ones marginals. ΔT is low rank,
  :math:`\Delta T = U (V - \bar V)^T / N` with ``U, V`` of shape ``[N, r]``,
  and is applied as ``U ((V - V̄)^T Q)``. Memory and time are
  :math:`O(N \cdot (\text{block\_size} + r + d))` per pair. Chosen over POT's
  lazy (exact) Sinkhorn, whose time is quadratic in N per iteration, and over
  positive-feature or low-rank couplings, which need very many features to
  match a sharp (small-``reg``) plan. When ``block_size >= N`` there is one
  block and the scalable solver solves exactly the dense problem.
  ``warm_start`` keeps one partition (the seed's) for the whole run and
  starts every solve from the previous solve's Sinkhorn scalings.
- ``prototype``: the problem between the two modalities' K prototype
  clusters of Eq. 3-5 instead of their items. Cluster :math:`k` of modality
  :math:`m` has mass :math:`B^m_k = \sum_i H^m_{ik}` and centroid
  :math:`c^m_k = \sum_i H^m_{ik} Q^m_i / B^m_k`; the ``K x K`` plan
  :math:`P` between the centroids (cost :math:`\|c^m_k - c^{m'}_l\|^2`,
  marginals :math:`B^m / N`, :math:`B^{m'} / N`) is mapped back to items
  through the incidences, :math:`T = H^m \, \mathrm{diag}(1/a) P \,
  \mathrm{diag}(1/B^{m'}) H^{m'T}` with :math:`a = B^m / N`, which has
  all-ones marginals whenever :math:`P` has its own. Time :math:`O(NKd)`,
  never an item-by-item cost; needs ``use_intra`` (the incidences). A coarser
  plan than the item-level one: it moves mass between clusters, not items.
"""

import math
import warnings

import ot
import torch
import torch.nn as nn

# Most plan entries one batched Sinkhorn call holds (64 MiB of float32): the
# blocks of a large catalogue are solved in chunks of this size.
MAX_CHUNK_ENTRIES = 2**24


def mean_squared_distance(x, y):
    r"""Mean of :math:`\|x_i - y_j\|^2` over all pairs, in :math:`O(Nd)`. ``x`` ``[N, d]``, ``y`` ``[N', d]``."""
    return (x.pow(2).sum(1).mean() + y.pow(2).sum(1).mean() - 2 * x.mean(0) @ y.mean(0)).clamp_min(1e-12)


def entropic_plan(cost, a, b, reg, max_iter, tol):
    r"""Entropic OT plan for ``cost`` ``[n, n']`` and marginals ``a`` ``[n]``, ``b`` ``[n']`` (each summing to 1).

    POT's ``ot.sinkhorn``, stabilised (log-absorption), in the log domain
    when that overflows.
    """
    cost = shift_to_zero_minima(cost)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "did not converge": rows are renormalised
        for method in ("sinkhorn_stabilized", "sinkhorn_log"):  # the log domain when the first overflows
            plan = ot.sinkhorn(a, b, cost, reg, method=method, numItermax=max_iter, stopThr=tol, warn=False)
            if torch.isfinite(plan).all():
                break
    check_finite(plan, reg)
    return plan


def dense_plan(x, y, reg, max_iter, tol, scale=None):
    r"""Entropic OT plan between all rows of ``x`` and ``y`` (Eq. 6-8), rows summing to about one.

    Args:
        x, y: ``[N, d]`` item representations of modalities m and m'.
        reg (float): entropic regularisation, relative to the mean cost.
        scale: the cost normaliser; by default :func:`mean_squared_distance`.

    Returns:
        ``[N, N]`` plan :math:`T` with all-ones marginals (Eq. 8).
    """
    n = x.shape[0]
    scale = mean_squared_distance(x, y) if scale is None else scale
    cost = ot.dist(x, y, metric="sqeuclidean") / scale  # Eq. 6, [N, N]
    uniform = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    return entropic_plan(cost, uniform, uniform, reg, max_iter, tol) * n


def check_finite(plan, reg):
    if not torch.isfinite(plan).all():
        raise FloatingPointError(
            f"Sinkhorn returned a non-finite transport plan at ot_reg = {reg}, also in the log domain. "
            f"Raise ot_reg (properties/model/CI2MG.yaml) or check the model's inputs for NaN."
        )


def squared_distances(x, y):
    r""":math:`\|x_{bi} - y_{bj}\|^2` ``[b, n, n']`` for ``x`` ``[b, n, d]`` and ``y`` ``[b, n', d]``.

    POT's ``ot.batch.dist_batch`` computes the same sum, with three full
    ``[b, n, n']`` temporaries; here it is one batched product added to the
    squared norms in place (a new tensor when gradients are tracked).
    """
    cost = torch.baddbmm(y.pow(2).sum(2).unsqueeze(1), x, y.transpose(1, 2), alpha=-2)  # ||y||² - 2 x·y
    if cost.requires_grad:
        return cost + x.pow(2).sum(2).unsqueeze(2)
    return cost.add_(x.pow(2).sum(2).unsqueeze(2))


def shift_to_zero_minima(cost):
    r"""``cost`` ``[..., N, N']`` less its row minima, then its column minima.

    Shifting rows and columns of the cost by constants leaves the plan
    unchanged and gives every row and column of exp(-cost/reg) an entry 1, so
    Sinkhorn cannot meet an all-zero row or column (a NaN plan).
    """
    cost = cost - cost.amin(dim=-1, keepdim=True)
    if cost.requires_grad:
        return cost - cost.amin(dim=-2, keepdim=True)
    return cost.sub_(cost.amin(dim=-2, keepdim=True))  # in place: no second [..., N, N'] temporary


def sinkhorn_scalings(kernel, max_iter, tol, init=None):
    r"""Sinkhorn's scalings of a batch of kernels for uniform marginals.

    :math:`\mathrm{diag}(f_b) K_b \mathrm{diag}(g_b)` has rows summing to
    :math:`1/n` and columns to :math:`1/n'`. The iteration and the stopping
    rule are those of POT's batched Sinkhorn (``ot.batch``, method
    ``sinkhorn``): :math:`f = a / (K g)`, :math:`g = b / (K^T f)`, and every
    10 iterations, from the first, a stop once the largest per-problem norm
    of the row-marginal error is below ``tol``. Each half-iteration is one
    batched vector-matrix product (:func:`kernel_times`), and the rule's
    :math:`K g` is the next iteration's, so checking costs nothing; POT forms a full
    ``[b, n, n']`` temporary for each, and creates its starting scalings on
    the CPU whatever the kernel's device.

    Args:
        kernel: ``[b, n, n']``, :math:`\exp(-C / \varepsilon)`.
        init: ``[b, n']`` starting :math:`g` (a warm start), default ones.

    Returns:
        tuple: ``f`` ``[b, n]``, ``g`` ``[b, n']``.
    """
    _, n, n2 = kernel.shape
    g = kernel.new_ones(kernel.shape[0], n2) if init is None else init
    kernel_g = kernel_times(kernel, g)
    for iteration in range(max_iter):
        f = (1.0 / n) / kernel_g
        g = (1.0 / n2) / kernel_times(kernel.transpose(1, 2), f)
        kernel_g = kernel_times(kernel, g)  # the stopping rule's product is the next iteration's
        if iteration % 10 == 0 and (f * kernel_g - 1.0 / n).norm(dim=1).max() < tol:
            break
    return f, g


def kernel_times(kernel, vector):
    r""":math:`K_b v_b` for ``kernel`` ``[b, n, n']`` and ``vector`` ``[b, n']``: ``[b, n]``.

    Written as the row vector times :math:`K_b^T`: on the CPU torch's batched
    product of a matrix with a column is several times slower than this.
    """
    return torch.bmm(vector.unsqueeze(1), kernel.transpose(1, 2)).squeeze(1)


def blocks_of(order, block_size):
    r"""The items in ``order`` ``[n]`` cut into ``ceil(n / block_size)`` consecutive blocks of near-equal size.

    Returns:
        list of ``[b, s]`` index tensors, one per block size (at most two).
    """
    n = order.numel()
    n_blocks = max(1, math.ceil(n / block_size))
    small, n_large = divmod(n, n_blocks)
    groups = []
    if n_large:
        groups.append(order[: n_large * (small + 1)].view(n_large, small + 1))
    if n_blocks - n_large:
        groups.append(order[n_large * (small + 1) :].view(n_blocks - n_large, small))
    return groups


# --- plans -----------------------------------------------------------------------------


class DensePlan:
    r"""An ``[N, N']`` plan held as a matrix."""

    def __init__(self, matrix):
        self.matrix = matrix

    @property
    def T(self):
        return DensePlan(self.matrix.T)

    def apply(self, values):
        """:math:`T` ``values`` ``[N, d]`` and the row sums :math:`T \\mathbf{1}` ``[N]``."""
        return self.matrix @ values, self.matrix.sum(dim=1)


class BlockDiagonalPlan:
    r"""A block-diagonal plan, one ``s x s`` block per group of items, never multiplied out.

    Block :math:`b` is :math:`s \, \mathrm{diag}(f_b) K_b \mathrm{diag}(g_b)`
    over the items ``blocks[b]`` (rows and columns alike): the kernel and the
    Sinkhorn scalings of :func:`sinkhorn_scalings`, scaled so each block has
    all-ones marginals. A block whose kernel underflowed holds the plan itself
    as ``K`` with unit scalings.

    Args:
        n_items (int): N.
        groups: list of ``(blocks [b, s], K [b, s, s], f [b, s], g [b, s])``, one per block size.
    """

    def __init__(self, n_items, groups):
        self.n_items, self.groups = n_items, groups

    @property
    def T(self):
        return BlockDiagonalPlan(self.n_items, [(blocks, K.transpose(1, 2), g, f) for blocks, K, f, g in self.groups])

    def apply(self, values):
        """:math:`T` ``values`` ``[N, d]`` and the row sums :math:`T \\mathbf{1}` ``[N]``."""
        d = values.shape[1]
        rows, moved, mass = [], [], []
        for blocks, K, f, g in self.groups:
            size = blocks.shape[1]
            moved.append((f.unsqueeze(2) * torch.bmm(K, g.unsqueeze(2) * values[blocks])).reshape(-1, d) * size)
            mass.append((f * kernel_times(K, g)).reshape(-1) * size)
            rows.append(blocks.reshape(-1))
        rows = torch.cat(rows)
        out = values.new_zeros(self.n_items, d).index_copy(0, rows, torch.cat(moved))
        return out, values.new_zeros(self.n_items).index_copy(0, rows, torch.cat(mass))


class PrototypePlan:
    r"""An item plan factored through prototype clusters, :math:`T = H W H'^T`, never multiplied out.

    Args:
        source: ``[N, K]`` incidence :math:`H^m` (rows sum to one).
        coupling: ``[K, K']`` :math:`W = \mathrm{diag}(1/a) P \mathrm{diag}(1/B^{m'})`.
        target: ``[N, K']`` incidence :math:`H^{m'}`.
    """

    def __init__(self, source, coupling, target):
        self.source, self.coupling, self.target = source, coupling, target

    @property
    def T(self):
        return PrototypePlan(self.target, self.coupling.T, self.source)

    def apply(self, values):
        """:math:`T` ``values`` ``[N, d]`` and the row sums :math:`T \\mathbf{1}` ``[N]``."""
        moved = self.source @ (self.coupling @ (self.target.T @ values))
        return moved, self.source @ (self.coupling @ self.target.sum(dim=0))


# --- ΔT ----------------------------------------------------------------------------------


class DenseDelta(nn.Module):
    r"""A dense adjustment :math:`\Delta T` ``[N, N]``, rows centred to sum to zero, in units of :math:`1/N`."""

    def __init__(self, n_items):
        super().__init__()
        self.n_items = n_items
        self.weight = nn.Parameter(torch.zeros(n_items, n_items))

    def matrix(self):
        return (self.weight - self.weight.mean(dim=1, keepdim=True)) / self.n_items  # [N, N]

    def forward(self, values):
        """:math:`\\Delta T` ``values`` and the row sums of :math:`\\Delta T` (zero up to round-off)."""
        delta = self.matrix()
        return delta @ values, delta.sum(dim=1)


class LowRankDelta(nn.Module):
    r"""A rank-``r`` adjustment :math:`\Delta T = U (V - \bar V)^T / N`, never materialised.

    ``U`` starts small and random, ``V`` at zero, so :math:`\Delta T = 0` at
    the start and both factors receive gradients from the first step (as in
    LoRA). Centring ``V`` makes every row of :math:`\Delta T` sum to zero.
    """

    def __init__(self, n_items, rank, init_std=0.1):
        super().__init__()
        self.n_items = n_items
        self.U = nn.Parameter(torch.randn(n_items, rank) * init_std)
        self.V = nn.Parameter(torch.zeros(n_items, rank))

    def matrix(self):
        """The dense ``[N, N]`` matrix, for tests and small catalogues only."""
        return self.U @ (self.V - self.V.mean(dim=0)).T / self.n_items

    def forward(self, values):
        """:math:`\\Delta T` ``values`` and the row sums of :math:`\\Delta T` (zero up to round-off)."""
        V = self.V - self.V.mean(dim=0)  # [N, r]
        return self.U @ (V.T @ values) / self.n_items, self.U @ V.sum(dim=0) / self.n_items


# --- Eq. 6-9 -------------------------------------------------------------------------------


class InterModalityTransport(nn.Module):
    r"""Inter-modality generation for all modalities (Eq. 6-9).

    Args:
        n_items (int): N, catalogue size including RecBole's padding item.
        n_modalities (int): M >= 2.
        solver (str): ``dense``, ``scalable`` or ``prototype`` (see the module docstring).
        reg (float): entropic regularisation, relative to the mean cost.
        max_iter (int), tol (float): Sinkhorn stopping rule.
        block_size (int): items per mini-batch OT block (``scalable``).
        delta_rank (int): rank of ΔT (``scalable``, ``prototype``).
        differentiable (bool): backpropagate through Sinkhorn (the plan is then solved every step).
        seed (int): seed of the block partitions.
        refresh (str or int): ``step`` solves the plans at every training forward pass, with a
            fresh block partition each time; an integer ``k`` every ``k`` training passes;
            ``epoch`` once per training epoch (at the first pass after each ``train()``).
        warm_start (bool): ``scalable`` only: one partition for the whole run (a buffer, drawn
            from ``seed``), every solve starting from the previous one's scalings.
        eval_plan (str): ``solve``: an evaluation pass solves the plans once, on the current
            :math:`Q`, inside the partition the model last trained with (a buffer, so a
            checkpoint restores it); ``reuse``: it uses the plans training solved last.

    Shapes: ``forward`` takes M tensors ``[N, d]`` (the :math:`Q^m`), and for ``prototype``
    their M incidences ``[N, K]``, and returns M tensors ``[N, d]`` (the :math:`\hat{Q}^m`).

    Attributes:
        plans (dict): ``(m, m') ->`` the plan :math:`T^{mm'}` of every ordered pair, or None
            until the next solve.
    """

    SOLVERS = ("dense", "scalable", "prototype")
    EVAL_PLANS = ("solve", "reuse")

    def __init__(
        self,
        n_items,
        n_modalities,
        solver,
        reg,
        max_iter,
        tol,
        block_size,
        delta_rank,
        differentiable=False,
        seed=0,
        refresh="step",
        warm_start=False,
        eval_plan="solve",
    ):
        super().__init__()
        if solver not in self.SOLVERS:
            raise ValueError(f"ot_solver must be one of {self.SOLVERS}, got {solver!r}")
        if n_modalities < 2:
            raise ValueError("Inter-modality transport needs at least two modalities.")
        if reg <= 0:
            raise ValueError(f"ot_reg must be > 0, got {reg}")
        self.refresh_every = parse_refresh(refresh)
        if eval_plan not in self.EVAL_PLANS:
            raise ValueError(f"ot_eval_plan must be one of {self.EVAL_PLANS}, got {eval_plan!r}")
        if warm_start and solver != "scalable":
            raise ValueError(f"ot_warm_start needs ot_solver: scalable, got {solver!r}")
        self.n_items, self.n_modalities, self.solver = n_items, n_modalities, solver
        self.reg, self.max_iter, self.tol = reg, max_iter, tol
        self.block_size, self.differentiable, self.seed = block_size, differentiable, seed
        self.refresh, self.warm_start, self.eval_plan = refresh, warm_start, eval_plan
        self.generator = torch.Generator().manual_seed(seed)
        # the block partition, as one item order cut into blocks; kept in checkpoints so that a
        # reloaded model evaluates inside the partition it was validated with
        self.register_buffer("block_order", torch.randperm(n_items, generator=torch.Generator().manual_seed(seed)))
        self.plans = None
        self._plans_trained = False  # solved by a training pass (not an evaluation one)
        self._passes_since_solve = 0
        self._scalings = {}  # (m, m') -> the last solve's g of every block group (warm_start)
        self.deltas = nn.ModuleDict()
        for m in range(n_modalities):
            for m2 in range(n_modalities):
                if m != m2:
                    delta = DenseDelta(n_items) if solver == "dense" else LowRankDelta(n_items, delta_rank)
                    self.deltas[self.pair_key(m, m2)] = delta

    @staticmethod
    def pair_key(m, m2):
        return f"{m}_{m2}"

    def delta(self, m, m2):
        """The :math:`\\Delta T^{mm'}` module."""
        return self.deltas[self.pair_key(m, m2)]

    def train(self, mode=True):
        # a new training epoch solves its own plans with refresh=epoch; evaluation by eval_plan
        if (mode and self.refresh_every is None) or (not mode and self.eval_plan == "solve"):
            self.plans = None
        return super().train(mode)

    def _draw_partition(self):
        self.block_order.copy_(torch.randperm(self.n_items, generator=self.generator, device="cpu"))

    def _solve_now(self):
        if self.plans is None or self.differentiable:
            return True
        if not self.training:
            return False
        if not self._plans_trained:
            return True
        return self.refresh_every is not None and self._passes_since_solve >= self.refresh_every

    def forward(self, Qs, incidences=None):
        if self._solve_now():
            if self.training and self.solver == "scalable" and not self.warm_start:
                self._draw_partition()
            self.plans = self.solve(Qs, incidences)
            self._plans_trained, self._passes_since_solve = self.training, 0
        if self.training:
            self._passes_since_solve += 1
        projections = [[] for _ in Qs]
        for (m, m2), plan in self.plans.items():
            projections[m].append(self.project(plan, self.delta(m, m2), Qs[m2]))
        return [torch.stack(views).mean(dim=0) for views in projections]  # Eq. 9, 1/(M-1) Σ_{m'≠m}

    def solve(self, Qs, incidences=None):
        r"""The plan :math:`T^{mm'}` of every ordered pair (Eq. 6-8), one problem per unordered pair."""
        if self.solver == "prototype" and incidences is None:
            raise ValueError("ot_solver: prototype transports between the prototype clusters of Eq. 3-5: "
                             "it needs use_intra: True.")
        groups = self.partition() if self.solver == "scalable" else None
        plans = {}
        context = torch.enable_grad() if self.differentiable else torch.no_grad()
        with context:
            for m in range(len(Qs)):
                for m2 in range(m + 1, len(Qs)):
                    x, y = (Qs[m], Qs[m2]) if self.differentiable else (Qs[m].detach(), Qs[m2].detach())
                    if self.solver == "dense":
                        plan = DensePlan(dense_plan(x, y, self.reg, self.max_iter, self.tol))
                    elif self.solver == "scalable":
                        plan = self.block_plan((m, m2), x, y, groups)
                    else:
                        source, target = incidences[m], incidences[m2]
                        if not self.differentiable:
                            source, target = source.detach(), target.detach()
                        plan = self.prototype_plan(x, y, source, target)
                    plans[(m, m2)], plans[(m2, m)] = plan, plan.T
        return plans

    def partition(self):
        """The current mini-batch OT blocks (see ``refresh``)."""
        return blocks_of(self.block_order, self.block_size)

    def block_plan(self, pair, x, y, groups):
        r"""The block-diagonal plan between ``x`` and ``y`` ``[N, d]`` inside the blocks ``groups``."""
        scale = mean_squared_distance(x, y)
        warm = self._scalings.get(pair) if self.warm_start else None
        solved = []
        for index, blocks in enumerate(groups):
            size = blocks.shape[1]
            chunk = max(1, MAX_CHUNK_ENTRIES // (size * size))
            parts = []
            for start in range(0, blocks.shape[0], chunk):
                init = None if warm is None else warm[index][start : start + chunk]
                parts.append(self.solve_blocks(x, y, blocks[start : start + chunk], scale, init))
            solved.append((blocks, *(torch.cat(part) for part in zip(*parts))))
        if self.warm_start:
            self._scalings[pair] = [g for _, _, _, g in solved]
        return BlockDiagonalPlan(self.n_items, solved)

    def solve_blocks(self, x, y, blocks, scale, init=None):
        r"""Kernel and Sinkhorn scalings of the blocks ``[b, s]`` (Eq. 6-8): ``K, f, g``."""
        if self.differentiable:
            kernel = torch.exp(self.block_cost(x, y, blocks, scale) / -self.reg)
        else:  # the cost becomes the kernel in place
            kernel = self.block_cost(x, y, blocks, scale).div_(-self.reg).exp_()
        f, g = sinkhorn_scalings(kernel, self.max_iter, self.tol, init)
        if torch.isfinite(f).all() and torch.isfinite(g).all():
            return kernel, f, g
        grad = "autodiff" if self.differentiable else "detach"
        plan = ot.batch.solve_batch(self.block_cost(x, y, blocks, scale), self.reg, max_iter=self.max_iter,
                                    tol=self.tol, method="log_sinkhorn", grad=grad).plan  # the log domain
        check_finite(plan, self.reg)
        ones = plan.new_ones(plan.shape[:2])
        return plan, ones, ones

    @staticmethod
    def block_cost(x, y, blocks, scale):
        r"""Eq. 6 inside the blocks ``[b, s]``, over ``scale``, shifted to zero row and column minima: ``[b, s, s]``."""
        cost = squared_distances(x[blocks], y[blocks])
        return shift_to_zero_minima(cost / scale if cost.requires_grad else cost.div_(scale))

    def prototype_plan(self, x, y, source, target):
        r"""The plan between ``x`` and ``y`` ``[N, d]`` through their clusters ``source``, ``target`` ``[N, K]``."""
        n = x.shape[0]
        mass, mass2 = source.sum(dim=0), target.sum(dim=0)  # B^m [K], B^{m'} [K']
        centroids = (source.T @ x) / mass.clamp_min(1e-12).unsqueeze(1)  # [K, d]
        centroids2 = (target.T @ y) / mass2.clamp_min(1e-12).unsqueeze(1)
        a, b = mass / n, mass2 / n
        cost = ot.dist(centroids, centroids2, metric="sqeuclidean")
        cost = cost / (a @ cost @ b).clamp_min(1e-12)  # mean cost over item pairs, through the clusters
        plan = entropic_plan(cost, a, b, self.reg, self.max_iter, self.tol)  # P, [K, K']
        coupling = plan / (a.clamp_min(1e-12).unsqueeze(1) * mass2.clamp_min(1e-12).unsqueeze(0))
        return PrototypePlan(source, coupling, target)

    @staticmethod
    def project(plan, delta, values):
        r"""Barycentric projection :math:`\mathrm{diag}(1/\mu)(T + \Delta T) Q^{m'}` (Eq. 9), ``[N, d]``."""
        moved, mass = plan.apply(values)
        adjusted, delta_mass = delta(values)
        mu = mass + delta_mass  # row sums of T + ΔT, [N]
        return (moved + adjusted) / mu.unsqueeze(1)


def parse_refresh(refresh):
    """``ot_plan_refresh`` as the training passes between solves (None: once per epoch)."""
    if refresh == "step":
        return 1
    if refresh == "epoch":
        return None
    if isinstance(refresh, int) and not isinstance(refresh, bool) and refresh >= 1:
        return refresh
    raise ValueError(f"ot_plan_refresh must be step, epoch or a number of steps >= 1, got {refresh!r}")
