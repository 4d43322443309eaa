r"""View augmentations, InfoNCE and multi-channel propagation shared by the self-supervised baselines.

MMGCL, SLMRec and MMSSL each encode items once per modality on the training
graph and contrast two views of the same node. The pieces they have in
common live here; each model file says how it combines them.
"""

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recbole_ci2mg.model.layers.graph import binary, lightgcn_propagate


def edge_dropout(inter_matrix, drop_ratio, generator=None):
    r"""The training graph with a random ``drop_ratio`` of its edges removed (SGL's edge dropout).

    Exactly ``round((1 - drop_ratio) * nnz)`` distinct edges are kept, drawn
    with torch's random generator (seeded by RecBole's ``init_seed``).

    Args:
        inter_matrix: ``[n_users, n_items]`` training interactions (scipy sparse).
        drop_ratio (float): in ``[0, 1)``.
        generator (torch.Generator, optional): source of randomness.

    Returns:
        ``scipy.sparse.coo_matrix`` ``[n_users, n_items]`` with the kept edges set to 1.
    """
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
    R = binary(inter_matrix)
    n_keep = int(round(R.nnz * (1.0 - drop_ratio)))
    keep = torch.randperm(R.nnz, generator=generator, device="cpu")[:n_keep].numpy()
    return sp.coo_matrix(
        (np.ones(n_keep, dtype=np.float32), (R.row[keep], R.col[keep])), shape=R.shape
    )


def info_nce(anchor, positive, temperature, hard_negatives=None, intra_view_negatives=False):
    r"""InfoNCE with cosine similarity; row :math:`b` of ``positive`` is the positive of row :math:`b`.

    .. math::
        \mathcal{L} = -\frac{1}{B} \sum_{b} \log
        \frac{e^{s(a_b, p_b)/\tau}}
             {\sum_{b'} e^{s(a_b, p_{b'})/\tau}
              + [\, e^{s(a_b, h_b)/\tau} \,]
              + [\, \sum_{b' \neq b} e^{s(a_b, a_{b'})/\tau} \,]}

    The other rows of ``positive`` are the negatives; ``hard_negatives`` adds
    one extra negative per row (MMGCL's negative sampling), and
    ``intra_view_negatives`` adds the other rows of ``anchor`` (GRACE's
    objective, used by MMSSL).

    Args:
        anchor, positive: ``[B, d]``.
        temperature (float): :math:`\tau > 0`.
        hard_negatives: ``[B, d]`` or None.
        intra_view_negatives (bool).

    Returns:
        scalar tensor, the mean over rows.
    """
    a = F.normalize(anchor, dim=1)
    p = F.normalize(positive, dim=1)
    logits = [a @ p.T / temperature]  # [B, B], positives on the diagonal
    if hard_negatives is not None:
        h = F.normalize(hard_negatives, dim=1)
        logits.append((a * h).sum(dim=1, keepdim=True) / temperature)  # [B, 1]
    if intra_view_negatives:
        own = a @ a.T / temperature  # [B, B]
        eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
        logits.append(own.masked_fill(eye, float("-inf")))
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(torch.cat(logits, dim=1), target)


def propagate_channels(norm_adj, user_embedding, item_channels, n_layers):
    r"""LightGCN on several item channels that share one user embedding, in one pass.

    Channel :math:`c` starts from :math:`E^{(0)}_c = [E_U \,\|\, X_c]` (users
    over items) and is propagated as in
    :func:`~recbole_ci2mg.model.layers.graph.lightgcn_propagate`; the channels
    are stacked along the feature axis so that one sparse product serves all
    of them (propagation is linear, so this equals one pass per channel).

    Args:
        norm_adj: ``[n_users + n_items, n_users + n_items]`` sparse.
        user_embedding: ``[n_users, d]``.
        item_channels: list of ``C`` tensors ``[n_items, d]``.
        n_layers (int).

    Returns:
        tuple: ``users`` and ``items``, lists of ``C`` tensors ``[n_users, d]`` and ``[n_items, d]``.
    """
    n_users = user_embedding.shape[0]
    ego = torch.cat(
        [torch.cat([user_embedding, items], dim=0) for items in item_channels], dim=1
    )  # [n_users + n_items, C d]
    out = lightgcn_propagate(norm_adj, ego, n_layers)
    chunks = torch.split(out, user_embedding.shape[1], dim=1)
    return [c[:n_users] for c in chunks], [c[n_users:] for c in chunks]
