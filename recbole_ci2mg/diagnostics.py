r"""Why a trained CI²MG-family model ranks as it does: readings of a checkpoint (issue 12).

Every reading works on a trained model (``load_data_and_model``) and its data,
never on test interactions:

- :func:`score_shares`: each block's share of the ranking-relevant score
  variance (Eq. 13 sums one dot product per block: ID, then one per
  modality), and how much of a block's score is an item prior, the same for
  every user.
- :func:`block_recall`: validation Recall@20 scoring with some blocks only
  (the ID block alone, each modality alone), through RecBole's evaluator.
- :func:`eq1_readings`: the share of the projected features' variance that
  Eq. 1 keeps, and the share of users whose training items all miss a modality
  (their modality view is the projection bias alone).
- :func:`transport_readings`: the OT plans' row entropy against the uniform
  plan's, and how much the inter view :math:`\hat{Q}` changes when the block
  partition is redrawn, against its distance to the uniform plan's view (a
  block mean).
- :func:`contrastive_reading`: Eq. 10's InfoNCE on one training batch against
  its chance level :math:`\ln n` (``n`` distinct items).
- :func:`cold_item_readings`: the scored embeddings' norm on items without
  training interactions (cold) against the others, and the share of the users'
  top 20 that cold items take against their share of the catalogue (a cold
  item that enters no top 20 has test recall 0 whatever its content).
- ``item_graph_weights`` (CI²MG-S with ``item_graph_mix: learned``): the
  trained softmax weight of each item-item graph.

Command line (checkpoints written by ``run_recbole.py``; a record's
``saved_model_file`` names it)::

    python -m recbole_ci2mg.diagnostics saved/CI2MG-....pth [more.pth] --out readings.json
"""

import argparse
import json
import math
import sys

import torch

from recbole_ci2mg.model.layers.augment import info_nce
from recbole_ci2mg.model.layers.transport import BlockDiagonalPlan, DensePlan


def blocks(model):
    """``{name: slice}`` of the Eq. 13 blocks of a CI²MG-family model (``model.score_blocks``)."""
    d = model.latent_dim
    return {name: slice(k * d, (k + 1) * d) for k, name in enumerate(model.score_blocks)}


@torch.no_grad()
def score_shares(user_e, item_e, parts, users):
    r"""Each block's share of the score variance that ranking sees, and its item-prior share.

    For the users ``users`` and every item, :math:`S_b[u, i] = \langle u_b, i_b \rangle`.
    Ranking ignores a user's constant, so each row is centred first
    (:math:`\tilde S_b`). Returns, per block:

    - ``share``: :math:`\mathrm{Var}(\tilde S_b) / \mathrm{Var}(\sum_b \tilde S_b)` (blocks
      can covary, so shares need not sum to one);
    - ``item_prior``: the part of :math:`\mathrm{Var}(\tilde S_b)` explained by the item
      means :math:`\bar S_b[\cdot, i]` over users, 1 when the block scores an item the
      same for every user (an unpersonalised prior), near 0 when it is personal.

    Args:
        user_e, item_e: ``[N_U, D]``, ``[N_V, D]`` (Eq. 13).
        parts: ``{name: slice}`` (:func:`blocks`).
        users: ``[U]`` user ids.
    """
    scores = {name: user_e[users, part] @ item_e[:, part].T for name, part in parts.items()}  # [U, N_V] each
    centred = {name: s - s.mean(dim=1, keepdim=True) for name, s in scores.items()}
    total = sum(centred.values()).pow(2).mean()
    out = {}
    for name, s in centred.items():
        variance = s.pow(2).mean()
        prior = s.mean(dim=0).pow(2).mean()
        out[name] = {
            "share": _ratio(variance, total),
            "item_prior": _ratio(prior, variance),
        }
    return out


@torch.no_grad()
def block_norms(user_e, item_e, parts):
    """Mean row norm of every block, ``{name: {"user": u, "item": i}}``."""
    return {
        name: {"user": float(user_e[:, part].norm(dim=1).mean()), "item": float(item_e[:, part].norm(dim=1).mean())}
        for name, part in parts.items()
    }


@torch.no_grad()
def block_recall(trainer, model, valid_data, keep, metric="recall@20"):
    r"""Validation ``metric`` of ``model`` scoring with the blocks in ``keep`` only (others set to zero).

    The model's cached full-ranking embeddings (``restore_user_e``,
    ``restore_item_e``) are replaced for the call and cleared afterwards, so
    RecBole's evaluator and the model's own ``full_sort_predict`` do the ranking.
    """
    model.eval()
    user_e, item_e, _ = model.forward()
    parts = blocks(model)
    mask = torch.zeros(user_e.shape[1], dtype=torch.bool, device=user_e.device)
    for name in keep:
        mask[parts[name]] = True
    model.restore_user_e, model.restore_item_e = user_e * mask, item_e * mask
    try:
        return float(trainer.evaluate(valid_data, load_best_model=False, show_progress=False)[metric])
    finally:
        model.restore_user_e, model.restore_item_e = None, None


@torch.no_grad()
def eq1_readings(model):
    r"""What Eq. 1 keeps of each modality: ``{name: {"variance_kept", "users_without_content"}}``.

    ``variance_kept`` is the total variance of :math:`F^{V,m}` over that of the projected
    :math:`\bar F^{V,m}` (items as samples); ``users_without_content`` the share of users
    with training items none of whose modality ``m`` is observed.
    """
    aggregation = model.content.aggregation
    item_views = model.content()[1]
    out = {}
    for m, name in enumerate(model.modality_names):
        projected = model.content.project(m)
        observed = torch.zeros(model.n_items, 1, device=projected.device)
        observed[model.content.observed_index(m)] = 1.0
        has_items = aggregation.user_degree > 0
        seen = aggregation.user_mean(observed)[:, 0]
        out[name] = {
            "variance_kept": _ratio(item_views[m].var(dim=0).sum(), projected.var(dim=0).sum()),
            "users_without_content": _ratio((has_items & (seen == 0)).sum(), has_items.sum()),
        }
    return out


def plan_row_entropy(plan):
    """Mean entropy of the plan's rows (normalised to sum one) over that of a uniform row, in [0, 1]."""
    if isinstance(plan, DensePlan):
        rows = [plan.matrix]
    elif isinstance(plan, BlockDiagonalPlan):
        rows = [(f.unsqueeze(2) * K * g.unsqueeze(1)) for _, K, f, g in plan.groups]
    else:
        return None
    entropy, uniform, count = 0.0, 0.0, 0
    for block in rows:
        p = block / block.sum(dim=-1, keepdim=True)
        h = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)
        entropy += float(h.sum())
        uniform += math.log(p.shape[-1]) * h.numel()
        count += h.numel()
    return entropy / uniform if uniform else None


@torch.no_grad()
def transport_readings(model):
    r"""Plans' row entropy, and how stable :math:`\hat{Q}` is, per ordered pair ``"m->m'"``.

    ``q_hat_change``: :math:`\|\hat Q - \hat Q'\| / \|\hat Q\|` between the inter views of
    the current block partition and of a freshly drawn one (the plans solved on the
    same :math:`Q`); ``to_uniform``: :math:`\|\hat Q - \hat Q_u\| / \|\hat Q\|` with
    :math:`\hat Q_u` the view of the uniform plan on the same blocks (the block mean).
    A plan close to uniform and redrawn every step makes :math:`\hat Q` close to a
    random block mean: both small. The model's partition is restored afterwards.
    """
    transport = model.transport
    model.eval()
    _, _, views = model.forward()
    Q = views["Q"]
    incidences = [h.incidence(q) for h, q in zip(model.hypergraphs, model.content()[1])] if model.use_intra else None
    saved_order = transport.block_order.clone()
    plans = transport.solve(Q, incidences)
    generator = torch.Generator().manual_seed(12345)
    transport.block_order.copy_(torch.randperm(transport.n_items, generator=generator))
    redrawn = transport.solve(Q, incidences)
    transport.block_order.copy_(saved_order)
    out = {}
    names = model.modality_names
    for (m, m2), plan in plans.items():
        delta = transport.delta(m, m2)
        q_hat = transport.project(plan, delta, Q[m2])
        q_hat_redrawn = transport.project(redrawn[(m, m2)], delta, Q[m2])
        reading = {
            "row_entropy": plan_row_entropy(plan),
            "q_hat_change": _ratio((q_hat - q_hat_redrawn).norm(), q_hat.norm()),
        }
        if isinstance(plan, BlockDiagonalPlan):
            uniform = BlockDiagonalPlan(
                plan.n_items, [(b, torch.ones_like(K), torch.ones_like(f), torch.ones_like(g)) for b, K, f, g in plan.groups]
            )
            reading["to_uniform"] = _ratio((q_hat - transport.project(uniform, delta, Q[m2])).norm(), q_hat.norm())
        out[f"{names[m]}->{names[m2]}"] = reading
    return out


@torch.no_grad()
def contrastive_reading(model, interaction):
    r"""Eq. 10 on one training batch's distinct positive items, per modality, with its chance level.

    The views are the trained model's (evaluation mode, the whole graph in Eq. 1);
    an InfoNCE near :math:`\ln n` (``n`` distinct items) tells each item's two
    views apart from the other items' no better than chance.
    """
    model.eval()
    _, _, views = model.forward()
    items = torch.unique(interaction[model.ITEM_ID])
    chance = math.log(items.numel())
    return {
        name: {"loss": float(info_nce(q[items], q_hat[items], model.cl_temperature)), "chance": chance}
        for name, q, q_hat in zip(model.modality_names, views["Q"], views["Q_hat"])
    }


@torch.no_grad()
def cold_item_readings(user_e, item_e, cold, train_matrix, users, k=20):
    r"""How the scored embeddings place the items without training interactions.

    Args:
        user_e, item_e: ``[N_U, D]``, ``[N_V, D]`` (Eq. 13).
        cold: ``[N_V]`` bool, the dataset's ``cold_items`` (padding id 0 False).
        train_matrix: the training interactions, ``[N_U, N_V]`` (scipy sparse),
            left out of each user's ranking as RecBole's full ranking does.
        users: ``[U]`` user ids.

    Returns:
        dict: ``norm`` (mean row norm of the cold and the warm items, padding
        excluded), ``top_k_share`` (the share of the users' top ``k`` slots held
        by cold items) and ``catalogue_share`` (cold items among the items).
    """
    cold = cold.to(item_e.device)
    warm = ~cold
    warm[0] = False  # padding
    norms = item_e.norm(dim=1)
    scores = user_e[users] @ item_e.T  # [U, N_V]
    scores[:, 0] = -math.inf
    seen = torch.from_numpy(train_matrix[users.cpu().numpy()].toarray() > 0).to(scores.device)
    scores[seen] = -math.inf
    top = scores.topk(k, dim=1).indices
    return {
        "norm": {"cold": float(norms[cold].mean()) if cold.any() else None, "warm": float(norms[warm].mean())},
        "top_k_share": float(cold[top].float().mean()),
        "catalogue_share": float(cold.sum() / (cold.sum() + warm.sum())),
    }


def _ratio(numerator, denominator):
    denominator = float(denominator)
    return float(numerator) / denominator if denominator > 0 else None


def diagnose(model_file, n_users=2000, seed=0):
    """Every reading of one checkpoint, as a JSON-ready dict."""
    from recbole_ci2mg.quick_start import load_data_and_model
    from recbole_ci2mg.trainer import get_trainer

    config, model, _, train_data, valid_data, _ = load_data_and_model(model_file)
    model.eval()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    user_e, item_e, _ = model.forward()
    parts = blocks(model)
    generator = torch.Generator().manual_seed(seed)
    users = torch.randperm(model.n_users - 1, generator=generator)[:n_users] + 1  # id 0 is RecBole's padding
    out = {
        "model_file": str(model_file),
        "model": config["model"],
        "seed": config["seed"],
        "missing_rate": config["missing_rate"],
        "score_shares": score_shares(user_e, item_e, parts, users),
        "block_norms": block_norms(user_e, item_e, parts),
        "valid_recall@20": {
            "all": block_recall(trainer, model, valid_data, parts),
            **{f"{name} only": block_recall(trainer, model, valid_data, [name]) for name in parts},
        },
        "eq1": eq1_readings(model),
    }
    cold = getattr(train_data._dataset, "cold_items", None)
    if cold is not None and bool(cold.any()):
        out["cold_items"] = cold_item_readings(user_e, item_e, cold, train_data._dataset.inter_matrix(form="csr"), users)
    if getattr(model, "item_graph_mix", "mean") == "learned":
        weights = torch.softmax(model.item_graph_logits.detach(), dim=0).tolist()
        out["item_graph_weights"] = dict(zip(model.item_graph_names(), weights))
    if getattr(model, "use_inter", False):
        out["transport"] = transport_readings(model)
    if getattr(model, "use_contrastive", False):
        out["contrastive"] = contrastive_reading(model, next(iter(train_data)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="model files written by run_recbole.py")
    parser.add_argument("--users", type=int, default=2000, help="users sampled for the score shares")
    parser.add_argument("--out", help="write the readings here as JSON lines (appended)")
    args = parser.parse_args(argv)
    for model_file in args.checkpoints:
        reading = diagnose(model_file, args.users)
        line = json.dumps(reading)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
