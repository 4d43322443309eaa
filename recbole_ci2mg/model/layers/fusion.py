r"""CI²MG's task-guided generation (Eq. 11) and its reconstruction loss (Eq. 12).

.. math::
    Z^m = \mathrm{LeakyReLU}\left(\mathrm{BN}\left([Q^m \,\|\, \hat{Q}^m] W_m + b_m\right)\right),
    \qquad
    \mathcal{L}_{rec} = \sum_m \frac{1}{|O_m| d_m} \sum_{i \in O_m} \left\| Z^m_i D_m - \bar{F}^{m}_i \right\|^2

Readings where the paper is silent:

- **BN statistics** (``running_stats``). Every forward pass normalises the
  whole item set at once, so the training "batch" is the population and its
  statistics are exact. ``False`` (default) evaluates with those same exact
  statistics, so evaluation scores the model that was trained; ``True`` is
  PyTorch's default (running statistics in evaluation), which lags the true
  variance (see BENCHMARKS.md, "Eq. 11's BatchNorm").
- **BN scale** (``init_scale``, the initial γ): 1.0 is PyTorch's; smaller
  values shrink :math:`Z^m` against the ID block of Eq. 13.
- **Eq. 12's target is fixed**: a linear decoder :math:`D_m` maps
  :math:`Z^m` back to ``d_m`` and is compared with the standardised raw
  features on observed rows :math:`O_m` only (mean squared error per entry,
  so ``rec_weight`` means the same for any ``d_m``). A trainable projection
  of the raw features as target could collapse with :math:`Z^m` to zero.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class TaskGuidedFusion(nn.Module):
    r"""Eq. 11-12 for every modality.

    Args:
        fused_dim (int): width of :math:`[Q^m \| \hat{Q}^m]` (``2d``, or ``d`` without an inter view).
        dim (int): ``d``.
        feature_dims (list of int): ``d_m`` of every modality (the decoders' outputs).
        running_stats (bool), init_scale (float): see the module docstring.
    """

    def __init__(self, fused_dim, dim, feature_dims, running_stats, init_scale):
        super().__init__()
        self.init_scale = init_scale
        self.generators = nn.ModuleList(nn.Linear(fused_dim, dim) for _ in feature_dims)  # W_m, b_m
        self.norms = nn.ModuleList(nn.BatchNorm1d(dim, track_running_stats=running_stats) for _ in feature_dims)
        self.decoders = nn.ModuleList(nn.Linear(dim, d_m) for d_m in feature_dims)  # D_m
        self.reset_scale()

    def reset_scale(self):
        """γ of every BN: the scale of :math:`Z^m` in Eq. 13."""
        for norm in self.norms:
            nn.init.constant_(norm.weight, self.init_scale)

    def forward(self, m, views):
        r"""Eq. 11: :math:`Z^m` ``[N_V, d]`` from the views ``[N_V, d]`` of modality ``m``."""
        fused = torch.cat(views, dim=1)  # Ψ^m
        return F.leaky_relu(self.norms[m](self.generators[m](fused)), 0.2)

    def reconstruction_loss(self, m, Z, observed_index, target):
        r"""Eq. 12 of modality ``m``: decoded :math:`Z^m` on the observed rows against ``target`` ``[n_observed, d_m]``."""
        if observed_index.numel() == 0:
            return Z.new_zeros(())
        return F.mse_loss(self.decoders[m](Z[observed_index]), target)
