r"""Inter-modality generation by entropic optimal transport (CI²MG, Eq. 6-9).

For modalities :math:`m \neq m'` the cost is the squared distance between
their intra-modality item representations (Eq. 6), the marginals are all-ones
vectors (Eq. 7-8), and the entropic problem is solved with Sinkhorn through
POT on the torch backend. The inter-modality view of modality ``m`` is a
barycentric projection (Eq. 9):

.. math::
    \hat{Q}^m = \frac{1}{M-1} \sum_{m' \neq m}
        \mathrm{diag}(1/\mu^{mm'}) (T^{mm'} + \Delta T^{mm'}) Q^{m'},
    \qquad \mu^{mm'} = (T^{mm'} + \Delta T^{mm'}) \mathbf{1}.

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
  training step, ``epoch`` once per training epoch from the :math:`Q` of the
  epoch's first step, then reuses it (:math:`Q^{m'}` and ΔT in Eq. 9 stay
  live). Evaluation solves once per pass.
- **Symmetry.** :math:`T^{m'm} = (T^{mm'})^T` (the cost is transposed and the
  marginals are equal), so one problem is solved per unordered pair.
- **ΔT** ("adjustable transport parameter", after OTKGE) is a registered,
  trained parameter per ordered pair, in units of the uniform plan
  (:math:`1/N` per entry), centred so each of its rows sums to zero: the
  adjustment moves mass between targets without changing a row's total, so
  :math:`\mu = T\mathbf{1} > 0` and ``diag(1/mu)`` can never divide by zero.
  It starts at zero.

Two solvers:

- ``dense``: the faithful problem over all items, ``ot.sinkhorn`` with POT's
  stabilised (log-absorption) method, an ``N x N`` plan and a dense
  ``N x N`` ΔT. Memory :math:`O(N^2)`: small catalogues only.
- ``scalable`` (default): mini-batch OT (Fatras et al., "Learning with
  minibatch Wasserstein", AISTATS 2020). The items are split into random
  blocks of about ``block_size`` (a fresh partition for every plan solved in
  training; evaluation uses the partition last trained with, so predictions
  are deterministic) and one
  OT problem per block is solved with POT's batched Sinkhorn
  (``ot.batch.solve_batch``) between the block's items in both modalities.
  The blocks' plans together form a block-diagonal plan that still has
  all-ones marginals. ΔT is low rank, :math:`\Delta T = U (V - \bar V)^T / N`
  with ``U, V`` of shape ``[N, r]``, and is applied as ``U ((V - V̄)^T Q)``.
  Memory and time are :math:`O(N \cdot (\text{block\_size} + r + d))` per
  pair. Chosen over POT's lazy (exact) Sinkhorn, whose time is quadratic in
  N per iteration, and over positive-feature or low-rank couplings, which
  need very many features to match a sharp (small-``reg``) plan. When
  ``block_size >= N`` there is one block and the scalable solver solves
  exactly the dense problem.
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
    cost = shift_to_zero_minima(cost)
    uniform = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "did not converge": rows are renormalised
        for method in ("sinkhorn_stabilized", "sinkhorn_log"):  # the log domain when the first overflows
            plan = ot.sinkhorn(uniform, uniform, cost, reg, method=method, numItermax=max_iter, stopThr=tol, warn=False)
            if torch.isfinite(plan).all():
                break
    check_finite(plan, reg)
    return plan * n


def check_finite(plan, reg):
    if not torch.isfinite(plan).all():
        raise FloatingPointError(
            f"Sinkhorn returned a non-finite transport plan at ot_reg = {reg}, also in the log domain. "
            f"Raise ot_reg (properties/model/CI2MG.yaml) or check the model's inputs for NaN."
        )


def shift_to_zero_minima(cost):
    r"""``cost`` ``[..., N, N']`` less its row minima, then its column minima.

    Shifting rows and columns of the cost by constants leaves the plan
    unchanged and gives every row and column of exp(-cost/reg) an entry 1, so
    Sinkhorn cannot meet an all-zero row or column (a NaN plan).
    """
    cost = cost - cost.amin(dim=-1, keepdim=True)
    return cost - cost.amin(dim=-2, keepdim=True)


def block_plans(x, y, blocks, reg, max_iter, tol, scale, differentiable=False):
    r"""Entropic OT plans inside equally sized item blocks, solved in one batched call.

    Args:
        x, y: ``[N, d]``.
        blocks: ``[b, s]`` item indices, one row per block.
        scale: the cost normaliser of the whole problem (not of the block).

    Returns:
        ``[b, s, s]`` plans with all-ones marginals inside each block.
    """
    cost = shift_to_zero_minima(ot.batch.dist_batch(x[blocks], y[blocks]) / scale)  # Eq. 6, [b, s, s]
    grad = "autodiff" if differentiable else "detach"
    plan = ot.batch.solve_batch(cost, reg, max_iter=max_iter, tol=tol, method="sinkhorn", grad=grad).plan
    if not torch.isfinite(plan).all():
        plan = ot.batch.solve_batch(cost, reg, max_iter=max_iter, tol=tol, method="log_sinkhorn", grad=grad).plan
    check_finite(plan, reg)
    return plan * blocks.shape[1]


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
        V = self.V - self.V.mean(dim=0)  # [N, r]
        ones = torch.ones(self.n_items, 1, dtype=values.dtype, device=values.device)
        out = self.U @ (V.T @ torch.cat([values, ones], dim=1)) / self.n_items  # [N, d + 1]
        return out[:, :-1], out[:, -1]


class InterModalityTransport(nn.Module):
    r"""Inter-modality generation for all modalities (Eq. 6-9).

    Args:
        n_items (int): N, catalogue size including RecBole's padding item.
        n_modalities (int): M >= 2.
        solver (str): ``dense`` or ``scalable`` (see the module docstring).
        reg (float): entropic regularisation, relative to the mean cost.
        max_iter (int), tol (float): Sinkhorn stopping rule.
        block_size (int): items per mini-batch OT block (``scalable``).
        delta_rank (int): rank of ΔT (``scalable``).
        differentiable (bool): backpropagate through Sinkhorn (the plan is then solved every step).
        seed (int): seed of the block partitions.
        refresh (str): ``step`` solves the plans at every training forward pass, with a fresh
            block partition each time; ``epoch`` solves them once per training epoch (a fresh
            partition at each ``train()``) and reuses them for the epoch's steps. Either way an
            evaluation pass solves them once, on the current :math:`Q`, inside the partition
            the model last trained with (a buffer, so a checkpoint restores it).

    Shapes: ``forward`` takes M tensors ``[N, d]`` (the :math:`Q^m`) and
    returns M tensors ``[N, d]`` (the :math:`\hat{Q}^m`).
    """

    SOLVERS = ("dense", "scalable")

    REFRESH = ("step", "epoch")

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
    ):
        super().__init__()
        if solver not in self.SOLVERS:
            raise ValueError(f"ot_solver must be one of {self.SOLVERS}, got {solver!r}")
        if n_modalities < 2:
            raise ValueError("Inter-modality transport needs at least two modalities.")
        if reg <= 0:
            raise ValueError(f"ot_reg must be > 0, got {reg}")
        if refresh not in self.REFRESH:
            raise ValueError(f"ot_plan_refresh must be one of {self.REFRESH}, got {refresh!r}")
        self.n_items, self.n_modalities, self.solver = n_items, n_modalities, solver
        self.reg, self.max_iter, self.tol = reg, max_iter, tol
        self.block_size, self.differentiable, self.seed = block_size, differentiable, seed
        self.refresh = refresh
        self.generator = torch.Generator().manual_seed(seed)
        # the block partition, as one item order cut into blocks; kept in checkpoints so that a
        # reloaded model evaluates inside the partition it was validated with
        self.register_buffer("block_order", torch.randperm(n_items, generator=torch.Generator().manual_seed(seed)))
        self._plans = None  # per unordered pair (m, m'): the maps of T and T^T, until the next refresh
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
        # a new training epoch (or an evaluation pass) solves its own plans
        self._plans = None
        if mode and self.refresh == "epoch":
            self._draw_partition()
        return super().train(mode)

    def _draw_partition(self):
        self.block_order.copy_(torch.randperm(self.n_items, generator=self.generator))

    def forward(self, Qs):
        solve_now = self._plans is None or self.differentiable or (self.training and self.refresh == "step")
        if solve_now:
            if self.training and self.refresh == "step":
                self._draw_partition()
            self._plans = self.solve(Qs)
        projections = [[] for _ in Qs]
        for (m, m2), (forward_sum, backward_sum) in self._plans.items():
            projections[m].append(self.project(forward_sum, self.delta(m, m2), Qs[m2]))
            projections[m2].append(self.project(backward_sum, self.delta(m2, m), Qs[m]))
        return [torch.stack(views).mean(dim=0) for views in projections]  # Eq. 9, 1/(M-1) Σ_{m'≠m}

    def solve(self, Qs):
        """The plans of every unordered pair of modalities (Eq. 6-8), as maps ``values -> (T values, T 1)``."""
        groups = None if self.solver == "dense" else self.partition()
        return {
            (m, m2): self.transport(Qs[m], Qs[m2], groups)
            for m in range(len(Qs))
            for m2 in range(m + 1, len(Qs))
        }

    def partition(self):
        """The current mini-batch OT blocks (see ``refresh``)."""
        return blocks_of(self.block_order, self.block_size)

    def transport(self, x, y, groups):
        r"""The plan between ``x`` and ``y`` as two maps: ``values -> (T values, T 1)`` and the same for :math:`T^T`."""
        context = torch.enable_grad() if self.differentiable else torch.no_grad()
        with context:
            xs, ys = (x, y) if self.differentiable else (x.detach(), y.detach())
            scale = mean_squared_distance(xs, ys)
            if groups is None:
                plan = dense_plan(xs, ys, self.reg, self.max_iter, self.tol, scale)  # [N, N]
                return _dense_apply(plan), _dense_apply(plan.T)
            plans = [self.solve_group(xs, ys, blocks, scale) for blocks in groups]  # [b, s, s] each
        return _block_apply(groups, plans, transpose=False), _block_apply(groups, plans, transpose=True)

    def solve_group(self, x, y, blocks, scale):
        size = blocks.shape[1]
        chunk = max(1, MAX_CHUNK_ENTRIES // (size * size))
        return torch.cat(
            [
                block_plans(x, y, blocks[i : i + chunk], self.reg, self.max_iter, self.tol, scale, self.differentiable)
                for i in range(0, blocks.shape[0], chunk)
            ]
        )

    @staticmethod
    def project(apply_plan, delta, values):
        r"""Barycentric projection :math:`\mathrm{diag}(1/\mu)(T + \Delta T) Q^{m'}` (Eq. 9), ``[N, d]``."""
        moved, mass = apply_plan(values)
        adjusted, delta_mass = delta(values)
        mu = mass + delta_mass  # row sums of T + ΔT, [N]
        return (moved + adjusted) / mu.unsqueeze(1)


def _dense_apply(plan):
    def apply(values):
        return plan @ values, plan.sum(dim=1)

    return apply


def _block_apply(groups, plans, transpose):
    r"""``values -> (T values, T 1)`` for a block-diagonal plan given by blocks and their plans."""

    def apply(values):
        n, d = values.shape
        rows, moved, mass = [], [], []
        for blocks, plan in zip(groups, plans):
            block_plan = plan.transpose(1, 2) if transpose else plan
            moved.append(torch.bmm(block_plan, values[blocks]).reshape(-1, d))
            mass.append(block_plan.sum(dim=2).reshape(-1))
            rows.append(blocks.reshape(-1))
        rows = torch.cat(rows)
        out = torch.zeros(n, d, dtype=values.dtype, device=values.device).index_copy(0, rows, torch.cat(moved))
        row_mass = torch.zeros(n, dtype=values.dtype, device=values.device).index_copy(0, rows, torch.cat(mass))
        return out, row_mass

    return apply
