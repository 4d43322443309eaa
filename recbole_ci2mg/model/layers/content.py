r"""CI²MG's mask-aware content encoder: each modality's projection, then Eq. 1.

.. math::
    \bar{F}^{V,m} = \mathrm{std}_o(F^m) W_m + b_m, \qquad
    F^{U,m} = D_U^{-1} R \bar{F}^{V,m}, \qquad
    F^{V,m} = D_V^{-1} R^T F^{U,m}

:math:`\mathrm{std}_o` standardises a modality with its observed rows' mean
and standard deviation and sets every missing row to zero, the observed mean
(mean imputation done from the mask, so a missing row's raw values are never
read). The projection :math:`W_m` (``d_m -> d``) is needed because
:math:`d_m \neq d`; the paper is silent on it. A missing row projects to
:math:`b_m` exactly, so only observed rows are stored and multiplied.

``bias`` decides what a missing row means after the projection. With a bias
(``True``) it is the learned vector :math:`b_m`, the same for every missing
item, and a user all of whose items miss the modality has :math:`F^{U,m} =
b_m`: an unpersonalised item prior in Eq. 13. Without it (``False``) a
missing row is zero, no evidence, so such a user's modality blocks score 0
and the completed :math:`Z^m` of Eq. 11 reaches the ranking only through the
users who hold content.
"""

import torch
import torch.nn as nn


class ContentEncoder(nn.Module):
    r"""Projection and Eq. 1 of every modality.

    Args:
        features: list of ``M`` tensors ``[N_V, d_m]``, the raw item features.
        observed: list of ``M`` bool tensors ``[N_V]``, the observed masks.
        dim (int): ``d``.
        aggregation: :class:`~recbole_ci2mg.model.layers.graph.MeanAggregation` of the training graph.
        bias (bool): whether the projections have a bias :math:`b_m` (see the module docstring).

    Shapes: ``forward`` returns two lists of ``M`` tensors, ``F^{U,m}`` ``[N_U, d]``
    and ``F^{V,m}`` ``[N_V, d]``.
    """

    def __init__(self, features, observed, dim, aggregation, bias=True):
        super().__init__()
        self.n_items, self.dim = features[0].shape[0], dim
        self.aggregation = aggregation
        self.projections = nn.ModuleList(nn.Linear(f.shape[1], dim, bias=bias) for f in features)
        for m, (raw, seen) in enumerate(zip(features, observed)):
            index = torch.nonzero(seen).squeeze(1)
            self.register_buffer(f"observed_index_{m}", index, persistent=False)  # [n_observed]
            self.register_buffer(f"observed_features_{m}", standardise(raw, seen)[index], persistent=False)

    def observed_index(self, m):
        """``[n_observed]`` ids of the items whose modality ``m`` is observed."""
        return getattr(self, f"observed_index_{m}")

    def observed_features(self, m):
        """``[n_observed, d_m]`` their standardised features (the Eq. 12 target)."""
        return getattr(self, f"observed_features_{m}")

    def project(self, m):
        r""":math:`\bar{F}^{V,m}` ``[N_V, d]``: observed rows projected, missing rows the bias (or zero)."""
        projection = self.projections[m]
        if projection.bias is None:
            out = projection.weight.new_zeros(self.n_items, self.dim)
        else:
            out = projection.bias.expand(self.n_items, self.dim)
        return out.index_put((self.observed_index(m),), projection(self.observed_features(m)))

    def forward(self, left_out=None):
        r"""Eq. 1 of every modality, over the training graph less ``left_out`` (:meth:`MeanAggregation.without`)."""
        projected = torch.cat([self.project(m) for m in range(len(self.projections))], dim=1)  # [N_V, M d]
        users, items = self.aggregation(projected, left_out)  # one product serves every modality
        return list(torch.split(users, self.dim, dim=1)), list(torch.split(items, self.dim, dim=1))


def standardise(features, observed):
    r"""Features standardised with the observed rows' statistics; unobserved rows set to zero.

    Zero is the observed mean after standardisation, so this is mean imputation
    done from the mask: whatever a missing row held before, it is not read.

    Args:
        features: ``[N, d_m]`` float.
        observed: ``[N]`` bool.

    Returns:
        ``[N, d_m]`` float32.
    """
    features = features.float()
    if not observed.any():
        return torch.zeros_like(features)
    seen = features[observed]
    mean = seen.mean(dim=0)
    std = seen.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    out = (features - mean) / std
    return torch.where(observed.unsqueeze(1), out, torch.zeros_like(out))
