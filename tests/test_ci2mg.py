"""CI²MG: shapes, each paper component's contract, the known broken re-implementation's
mistakes (constant InfoNCE, unregistered ΔT, dense N x N matrices), and a planted benchmark."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import ot
import pytest
import scipy.sparse as sp
import torch
from recbole.config import Config
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from conftest import REPO, planted_interactions, write_benchmark
from recbole_ci2mg.model import CI2MG, LightGCNM
from recbole_ci2mg.model.layers.content import standardise
from recbole_ci2mg.model.layers.graph import ConstantSparse, MeanAggregation
from recbole_ci2mg.model.layers.hypergraph import PrototypeHypergraph, PrototypeIncidence, hypergraph_degrees
from recbole_ci2mg.model.layers.transport import (
    InterModalityTransport,
    dense_plan,
    mean_squared_distance,
    sinkhorn_scalings,
)
from recbole_ci2mg.quick_start import build_config, create_dataset, run_recbole
from recbole_ci2mg.registry import get_model

DIMS = (4, 6, 3)
NO_CONTENT_ITEM = 7  # no row in any modality's feature file
COLD_ITEMS = (40, 41)  # only in valid/test: no training interaction


@pytest.fixture(autouse=True)
def one_thread():
    # These tensors are tiny: on a loaded 2-core machine OpenMP threads only
    # wait on each other (a 300 x 300 Sinkhorn takes 0.5 s with two threads,
    # 3 ms with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_dataset(root, n_modalities):
    """The conftest's planted 60 x 40 benchmark plus two cold items and an item without content."""
    splits, clusters = planted_interactions()
    splits["valid"].append((0, COLD_ITEMS[0]))
    splits["test"].append((1, COLD_ITEMS[1]))
    clusters = np.concatenate([clusters, [0, 1]])
    rng = np.random.default_rng(3)
    modalities = {}
    for m in range(n_modalities):
        keys = [i for i in range(42) if i != NO_CONTENT_ITEM]
        signal = rng.standard_normal((4, DIMS[m])).astype(np.float32)
        matrix = signal[clusters[keys]] + 0.1 * rng.standard_normal((len(keys), DIMS[m])).astype(np.float32)
        modalities[f"m{m}"] = (matrix, keys)
    return write_benchmark(root, "tiny", splits, modalities)


def build(tmp_path, n_modalities=2, model="CI2MG", **overrides):
    """The model, its three dataloaders, and the model's ``rebuild()``: a fresh model
    with the same config and seed on the training dataset (as it is then)."""
    settings = write_dataset(tmp_path / "data", n_modalities)
    config = build_config(model, "tiny", config_dict={"n_prototypes": 8, "missing_rate": 0.3, **settings, **overrides})
    train, valid, test = data_preparation(config, create_dataset(config))

    def rebuild():
        init_seed(config["seed"], config["reproducibility"])
        return get_model(model)(config, train._dataset)

    return rebuild(), train, valid, test, rebuild


def item_id(dataset, token):
    return int(dataset.token2id(dataset.iid_field, str(token)))


def first_batch(train):
    return next(iter(train))


# --- shapes, finiteness, modality counts --------------------------------------


@pytest.mark.parametrize("n_modalities", [1, 2, 3])
@pytest.mark.parametrize("solver", ["dense", "scalable"])
def test_shapes_and_finite_values(tmp_path, caplog, n_modalities, solver):
    # blocks of 16 items: the scalable solver works on several blocks here
    with caplog.at_level(logging.INFO):
        model, train, *_ = build(tmp_path, n_modalities, ot_solver=solver, ot_block_size=16)
    dataset = train._dataset
    no_content = item_id(dataset, NO_CONTENT_ITEM)
    assert not any(dataset.modality_observed[name][no_content] for name in dataset.modality_names)
    assert not model.aggregation.item_has_neighbours[item_id(dataset, COLD_ITEMS[0])]
    if n_modalities == 1:
        assert not model.use_inter and not model.use_contrastive and not hasattr(model, "transport")
        assert "inter-modality generation (use_inter) is off" in caplog.text
    else:
        assert model.use_inter and model.use_contrastive

    width = (n_modalities + 1) * model.latent_dim
    for mode in (True, False):
        model.train(mode)
        user_e, item_e, views = model.forward()
        assert user_e.shape == (model.n_users, width) and item_e.shape == (model.n_items, width)
        assert torch.isfinite(user_e).all() and torch.isfinite(item_e).all()
        assert len(views["Z"]) == n_modalities
        assert all(torch.isfinite(q).all() for q in views["Q"] + (views["Q_hat"] or []))

    model.train()
    loss = model.calculate_loss(first_batch(train))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_no_modalities_is_a_clear_error(tmp_path):
    splits, _ = planted_interactions()
    settings = write_benchmark(tmp_path / "data", "tiny", splits)
    config = build_config("CI2MG", "tiny", config_dict=settings)
    train, _, _ = data_preparation(config, create_dataset(config))
    with pytest.raises(ValueError, match="needs item modalities"):
        CI2MG(config, train._dataset)


def test_a_config_without_the_model_yaml_is_a_clear_error(tmp_path):
    # RecBole's own quick start builds its Config from RecBole's properties only: every
    # key of properties/model/CI2MG.yaml is unset there, and an unset switch must not
    # quietly read as "off"
    model, train, *_ = build(tmp_path, 2)
    settings = write_dataset(tmp_path / "d2", 2)
    recbole_config = Config(model=CI2MG, dataset="tiny", config_dict=settings)
    with pytest.raises(ValueError, match=r"`embedding_size` is not set.*properties/model/CI2MG.yaml"):
        CI2MG(recbole_config, train._dataset)
    ours = build_config("CI2MG", "tiny", config_dict=settings)
    shared = {key: ours[key] for key in
              ("embedding_size", "n_layers", "reg_weight", "require_pow", "leave_batch_edges_out")}
    recbole_config = Config(model=CI2MG, dataset="tiny", config_dict={**settings, **shared})
    with pytest.raises(ValueError, match=r"`use_intra` is not set.*properties/model/CI2MG.yaml"):
        CI2MG(recbole_config, train._dataset)
    recbole_config = Config(model=LightGCNM, dataset="tiny", config_dict={**settings, **shared})
    with pytest.raises(ValueError, match=r"`use_intra` is not set.*properties/model/LightGCNM.yaml"):
        LightGCNM(recbole_config, train._dataset)


def test_lightgcn_m_is_ci2mg_with_every_component_off(tmp_path):
    assert get_model("LightGCN-M") is LightGCNM
    model, train, *_ = build(tmp_path, 2, model="LightGCN-M")
    assert not (model.use_intra or model.use_inter or model.use_contrastive or model.use_task_guided)
    assert not any("transport" in name or "hypergraph" in name for name, _ in model.named_parameters())
    config = build_config("LightGCN-M", "tiny", config_dict={**write_dataset(tmp_path / "d2", 2), "use_intra": True})
    with pytest.raises(ValueError, match="use_intra is on"):
        LightGCNM(config, train._dataset)


# --- projection and Eq. 1 -----------------------------------------------------


def test_content_encoder_projects_observed_rows_as_the_whole_matrix_would(tmp_path):
    model, train, *_ = build(tmp_path, 2, missing_rate=0.5)
    dataset = train._dataset
    for m, name in enumerate(model.modality_names):
        features, observed = dataset.modality_features[name], dataset.modality_observed[name].bool()
        projection = model.content.projections[m]
        whole = projection(standardise(features, observed))  # every row, missing ones as zeros
        got = model.content.project(m)
        torch.testing.assert_close(got, whole)
        assert torch.equal(got[~observed], projection.bias.expand(int((~observed).sum()), -1))
        assert model.content.observed_features(m).shape[0] == int(observed.sum())  # missing rows not kept


def test_without_a_content_bias_a_user_with_only_missing_items_has_a_zero_modality_view(tmp_path):
    model, train, *_ = build(tmp_path, 2, missing_rate=0.9, content_bias=False)
    dataset = train._dataset
    R = model.interaction_matrix.tocsr()
    users, items = model.content()
    for m, name in enumerate(model.modality_names):
        observed = dataset.modality_observed[name].bool().numpy()
        assert model.content.projections[m].bias is None
        projected = model.content.project(m)
        assert torch.equal(projected[torch.from_numpy(~observed)], torch.zeros(int((~observed).sum()), model.latent_dim))
        blind = [u for u in range(1, R.shape[0]) if R[u].nnz and not observed[R[u].indices].any()]
        seeing = [u for u in range(1, R.shape[0]) if observed[R[u].indices].any()]
        assert blind and seeing, "the tiny data no longer has users of both kinds"
        assert torch.equal(users[m][blind], torch.zeros(len(blind), model.latent_dim))
        assert (users[m][seeing].norm(dim=1) > 0).all()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    trained_users, _ = model.content()
    for m in range(len(model.modality_names)):  # still zero once trained: no bias to learn a prior
        blind = torch.from_numpy(~np.asarray(users[m].norm(dim=1) > 0))
        assert torch.equal(trained_users[m][blind], torch.zeros(int(blind.sum()), model.latent_dim))


def test_constant_sparse_products_backpropagate_as_torch_sparse_mm():
    rng = np.random.default_rng(0)
    matrix = sp.random(30, 20, density=0.2, random_state=rng, dtype=np.float32)
    constant = ConstantSparse(matrix, "cpu")
    reference = torch.sparse_coo_tensor(np.vstack([matrix.row, matrix.col]), matrix.data, matrix.shape)
    values = torch.randn(20, 4, requires_grad=True)
    weights = torch.randn(30, 4)
    (constant @ values * weights).sum().backward()
    ours, values.grad = values.grad, None
    (torch.sparse.mm(reference, values) * weights).sum().backward()
    torch.testing.assert_close(ours, values.grad)
    torch.testing.assert_close(constant.T @ weights, torch.sparse.mm(reference.t(), weights))


# --- Eq. 3-5: hypergraph -------------------------------------------------------


def test_incidence_is_non_negative_with_positive_degrees():
    torch.manual_seed(0)
    hypergraph = PrototypeHypergraph(dim=8, n_prototypes=16, n_layers=2, temperature=0.05)
    features = torch.randn(500, 8) * 30
    features[0] = 0  # RecBole's padding row
    Q, H = hypergraph(features)
    assert H.shape == (500, 16) and (H >= 0).all()
    assert torch.allclose(H.sum(dim=1), torch.ones(500), atol=1e-5)
    edge_degree, node_degree = hypergraph_degrees(H, hypergraph.edge_weight)
    assert (edge_degree > 0).all() and (node_degree > 0).all()
    assert Q.shape == (500, 8) and torch.isfinite(Q).all()


def test_a_row_without_direction_has_uniform_membership_and_no_gradient():
    torch.manual_seed(0)
    incidence = PrototypeIncidence(n_prototypes=5, dim=4, temperature=0.1)
    features = torch.randn(3, 4)
    features[1] = 0
    features.requires_grad_(True)
    H = incidence(features)
    assert torch.allclose(H[1], torch.full((5,), 0.2))
    (H * torch.randn(3, 5)).sum().backward()
    assert torch.isfinite(features.grad).all()
    assert (features.grad[1] == 0).all() and (features.grad[0] != 0).any()


def test_first_step_gradients_stay_bounded_when_eq1_rows_are_zero(tmp_path):
    # RecBole initialises the projection bias to zero and a missing row projects to
    # the bias, so at a high missing rate some items aggregate only zero rows. Their
    # cosine to the prototypes once had the gradient 1/eps (1e12 through F.normalize),
    # which froze the bias under Adam for the rest of training.
    model, train, *_ = build(tmp_path, missing_rate=0.9)
    batch = first_batch(train)
    left_out = model.aggregation.without(batch[model.USER_ID], batch[model.ITEM_ID])
    item_views = model.content(left_out)[1]
    assert any((view.norm(dim=1) == 0).any() for view in item_views)
    model.train()
    model.calculate_loss(batch).backward()
    largest = max(float(p.grad.norm()) for p in model.parameters() if p.grad is not None)
    assert largest < 1e3


# --- Eq. 6-9: optimal transport -----------------------------------------------


def two_modalities(n=240, d=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(8, d, generator=generator) * 2
    labels = torch.randint(0, 8, (n,), generator=generator)
    first = centers[labels] + 0.5 * torch.randn(n, d, generator=generator)
    rotation = torch.randn(d, d, generator=generator) / 4
    second = centers[labels] @ rotation + 0.5 * torch.randn(n, d, generator=generator)
    return [first, second]


def barycentric(views, solver, block_size, reg=0.05):
    n = views[0].shape[0]
    transport = InterModalityTransport(n, 2, solver, reg, 3000, 1e-8, block_size, 4, seed=3).eval()
    with torch.no_grad():
        return transport(views)


def relative_error(approx, exact):
    # relative to the spread of the exact projection: projecting every item on
    # the mean of the other modality (a uniform plan) scores about 1.
    return max(((a - e).norm() / (e - e.mean(dim=0)).norm()).item() for a, e in zip(approx, exact))


def test_batched_sinkhorn_is_pots_batched_sinkhorn():
    x, y = two_modalities(n=90)
    blocks = torch.randperm(90, generator=torch.Generator().manual_seed(0)).view(3, 30)
    cost = InterModalityTransport.block_cost(x, y, blocks, mean_squared_distance(x, y))
    for tol in (1e-4, 1e-8):  # stopped early, and converged
        f, g = sinkhorn_scalings(torch.exp(-cost / 0.05), 200, tol)
        pot = ot.batch.solve_batch(cost, 0.05, max_iter=200, tol=tol, method="sinkhorn", grad="detach").plan
        torch.testing.assert_close(f.unsqueeze(2) * torch.exp(-cost / 0.05) * g.unsqueeze(1), pot)


def test_prototype_plan_has_all_ones_marginals_and_trains(tmp_path):
    views = two_modalities(n=120, d=8)
    hypergraphs = [PrototypeHypergraph(8, 6, 1, 0.5) for _ in views]
    incidences = [hypergraph(view)[1] for hypergraph, view in zip(hypergraphs, views)]
    transport = InterModalityTransport(120, 2, "prototype", 0.05, 3000, 1e-9, 0, 4).train()
    transport(views, incidences)
    for plan in (transport.plans[(0, 1)], transport.plans[(1, 0)]):
        ones = torch.ones(120, 1)
        moved, mass = plan.apply(ones)
        torch.testing.assert_close(mass, torch.ones(120), atol=1e-4, rtol=0)
        torch.testing.assert_close(plan.T.apply(ones)[0].squeeze(1), torch.ones(120), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="needs use_intra"):
        transport(views)

    model, train, *_ = build(tmp_path, 2, ot_solver="prototype")
    model.train()
    loss = model.calculate_loss(first_batch(train))
    loss.backward()
    assert torch.isfinite(loss) and model.transport.delta(0, 1).V.grad.abs().sum() > 0


def test_dense_plan_has_all_ones_marginals():
    x, y = two_modalities(n=120)
    plan = dense_plan(x, y, reg=0.05, max_iter=3000, tol=1e-9)
    assert torch.allclose(plan.sum(dim=1), torch.ones(120), atol=1e-3)
    assert torch.allclose(plan.sum(dim=0), torch.ones(120), atol=1e-3)


@pytest.mark.parametrize("solver, block_size", [("dense", 0), ("scalable", 25), ("scalable", 10)])
def test_transport_stays_finite_when_most_items_share_one_row(solver, block_size):
    # 90% missing: most items' views are one and the same imputed row, a few are far from it.
    # POT's stabilised Sinkhorn returns NaN on this cost as it comes (it did in CI2MG's
    # dense solver); shifted costs and the log-domain fallback must not.
    generator = torch.Generator().manual_seed(0)
    views = [torch.zeros(25, 8), torch.zeros(25, 8)]
    for view in views:
        view[:2] = 3 * torch.randn(2, 8, generator=generator)
    out = InterModalityTransport(25, 2, solver, 0.05, 100, 1e-4, block_size, 4, seed=0).eval()(views)
    assert all(torch.isfinite(view).all() for view in out)


def test_dense_and_scalable_solvers_agree_on_a_small_catalogue():
    views = two_modalities()
    dense = barycentric(views, "dense", block_size=0)
    # One block holding the whole catalogue is the dense problem, solved by
    # another POT routine (batched kernel Sinkhorn vs ot.sinkhorn's stabilised
    # one) with another stopping rule; both converge, so only float32
    # round-off and the last Sinkhorn sweep separate them: 1e-4 relative.
    assert relative_error(barycentric(views, "scalable", block_size=240), dense) < 1e-4
    # Several blocks: mini-batch OT is a biased estimate of the full plan
    # (Fatras et al. 2020). It must approach the dense projection as blocks
    # grow, and with two blocks stay far closer to it than a uniform plan (1.0).
    errors = [relative_error(barycentric(views, "scalable", block_size=size), dense) for size in (30, 60, 120)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.35


@pytest.mark.parametrize("refresh, solves_per_epoch", [("step", 3), (2, 2), ("epoch", 1)])
def test_plan_refresh_and_evaluation_partition(refresh, solves_per_epoch):
    views = two_modalities(n=120, d=8)

    def transport_and_counter(**options):
        transport = InterModalityTransport(
            120, 2, "scalable", 0.05, 50, 1e-6, 40, 4, seed=1, refresh=refresh, **options
        )
        solve, calls = transport.solve, []
        transport.solve = lambda Qs, incidences=None: calls.append(1) or solve(Qs, incidences)
        return transport, calls

    transport, calls = transport_and_counter()
    transport.train()
    orders = []
    for _ in range(3):  # three training steps of one epoch
        transport(views)
        orders.append(transport.block_order.clone())
    assert len(calls) == solves_per_epoch
    assert len({tuple(order.tolist()) for order in orders}) == solves_per_epoch  # a fresh partition per solve

    # evaluation solves once per pass, inside the partition last trained with ...
    transport.eval()
    calls.clear()
    first, again = transport(views), transport(views)
    assert len(calls) == 1 and torch.equal(transport.block_order, orders[-1])
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # ... which a checkpoint restores
    reloaded, _ = transport_and_counter()
    reloaded.load_state_dict(transport.state_dict())
    assert all(torch.allclose(a, b) for a, b in zip(reloaded.eval()(views), first))

    # ot_eval_plan: reuse evaluates with the plans training solved last
    reusing, calls = transport_and_counter(eval_plan="reuse")
    trained = reusing.train()(views)
    reusing.eval()
    calls.clear()
    assert all(torch.equal(a, b) for a, b in zip(reusing(views), trained)) and not calls


def test_warm_start_keeps_one_partition_and_converges_to_the_same_plans():
    views = two_modalities(n=120, d=8)
    cold = InterModalityTransport(120, 2, "scalable", 0.05, 500, 1e-7, 40, 4, seed=1, warm_start=True).train()
    first = cold(views)
    order = cold.block_order.clone()
    moved = [v + 0.01 * torch.randn_like(v) for v in views]
    warm_out = cold(moved)  # starts from the first solve's scalings
    assert torch.equal(cold.block_order, order)
    fresh = InterModalityTransport(120, 2, "scalable", 0.05, 500, 1e-7, 40, 4, seed=1, warm_start=True).train()
    fresh.block_order.copy_(order)
    fresh_out = fresh(moved)  # the same problem from unit scalings
    assert relative_error(warm_out, fresh_out) < 1e-3
    assert relative_error(first, fresh_out) > relative_error(warm_out, fresh_out)


@pytest.mark.parametrize("solver", ["dense", "scalable"])
def test_differentiable_switch_backpropagates_through_sinkhorn(solver):
    def gradients(differentiable):
        views = [v.clone().requires_grad_() for v in two_modalities(n=100, d=8)]
        transport = InterModalityTransport(100, 2, solver, 0.05, 50, 1e-6, 40, 4, differentiable, seed=1)
        sum(out.pow(2).sum() for out in transport(views)).backward()
        return torch.cat([v.grad for v in views])

    detached, through_plan = gradients(False), gradients(True)
    assert torch.isfinite(through_plan).all()
    assert not torch.allclose(detached, through_plan, rtol=1e-2)


@pytest.mark.parametrize("solver", ["dense", "scalable"])
def test_delta_t_is_a_registered_parameter_that_trains(tmp_path, solver):
    model, train, *_ = build(tmp_path, 3, ot_solver=solver, ot_block_size=16)
    names = {name for name, _ in model.named_parameters()}
    pairs = [(m, m2) for m in range(3) for m2 in range(3) if m != m2]
    for m, m2 in pairs:
        assert any(name.startswith(f"transport.deltas.{m}_{m2}.") for name in names)
    before = {pair: model.transport.delta(*pair).matrix().detach().clone() for pair in pairs}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    model.calculate_loss(first_batch(train)).backward()
    optimizer.step()
    for pair in pairs:
        assert not torch.equal(model.transport.delta(*pair).matrix().detach(), before[pair]), pair


def test_scalable_transport_memory_is_linear_in_items(tmp_path):
    # 50,000 items: a dense float32 plan would take 10 GB (N > 46,341 means > 8 GB).
    result = subprocess.run(
        [sys.executable, "-c", LARGE_CATALOGUE_SCRIPT, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n_items"] ** 2 * 4 > 8 * 2**30
    assert report["finite"] and report["delta_grad"]
    print(report)
    assert report["peak_gib"] < 3.0, report


LARGE_CATALOGUE_SCRIPT = f"""
import json, resource, sys
sys.path[:0] = [{str(REPO / "tests")!r}, {str(REPO)!r}]
import numpy as np, torch
from recbole.config import Config
from recbole.data import data_preparation
from conftest import write_benchmark
from recbole_ci2mg.quick_start import build_config, create_dataset
from recbole_ci2mg.model import CI2MG

n_users, n_items = 5000, 50000
rng = np.random.default_rng(0)
train = [(i % n_users, i) for i in range(n_items)]
valid = [(u, (u * 7 + 1) % n_items) for u in range(n_users)]
test = [(u, (u * 13 + 2) % n_items) for u in range(n_users)]
modalities = {{
    "a": (rng.standard_normal((n_items, 32)).astype(np.float32), None),
    "b": (rng.standard_normal((n_items, 16)).astype(np.float32), None),
}}
settings = write_benchmark(sys.argv[1], "large", {{"train": train, "valid": valid, "test": test}}, modalities)
settings.update(missing_rate=0.9, ot_solver="scalable", ot_block_size=256, ot_max_iter=20, train_batch_size=4096)
config = build_config("CI2MG", "large", config_dict=settings)
train_data, _, _ = data_preparation(config, create_dataset(config))
model = CI2MG(config, train_data._dataset)
loss = model.calculate_loss(next(iter(train_data)))
loss.backward()
delta = model.transport.delta(0, 1)
print(json.dumps({{
    "n_items": model.n_items,
    "finite": bool(torch.isfinite(loss)),
    "delta_grad": bool(delta.V.grad is not None and delta.V.grad.abs().sum() > 0),
    "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
}}))
"""


# --- Eq. 10: contrastive -------------------------------------------------------


def test_contrastive_loss_has_gradient_and_prefers_aligned_views(tmp_path):
    model, train, *_ = build(tmp_path, 2)
    torch.manual_seed(0)
    items = torch.arange(1, 33)
    Q = [torch.randn(model.n_items, 8, requires_grad=True) for _ in range(2)]
    aligned = [(q.detach() + 0.1 * torch.randn_like(q)).requires_grad_() for q in Q]
    loss = model.contrastive_loss(Q, aligned, items)
    loss.backward()
    for view in Q + aligned:
        assert view.grad[items].abs().sum() > 0
    shuffled = [q.detach()[torch.randperm(model.n_items)] for q in aligned]
    assert loss.item() < model.contrastive_loss(Q, shuffled, items).item() - 1.0

    # the other items are the negatives: moving one changes another item's loss
    moved = [a.detach().clone() for a in aligned]
    moved[0][5] = Q[0][3].detach()  # item 5's inter view now looks like item 3's intra view
    assert model.contrastive_loss(Q, moved, items).item() > loss.item()

    # and inside the model the term reaches the parameters
    model.train()
    _, _, views = model.forward()
    model.contrastive_loss(views["Q"], views["Q_hat"], first_batch(train)[model.ITEM_ID]).backward()
    assert model.content.projections[0].weight.grad.abs().sum() > 0


# --- Eq. 12: reconstruction ----------------------------------------------------


def reconstruction(model):
    model.eval()
    with torch.no_grad():
        return model.reconstruction_loss(model.forward()[2]["Z"]).item()


def test_reconstruction_reads_observed_rows_only(tmp_path):
    model, train, _, _, rebuild = build(tmp_path, 2, missing_rate=0.5)
    dataset = train._dataset
    features, observed = dataset.modality_features["m0"], dataset.modality_observed["m0"]
    missing_row = int(torch.nonzero(~observed[1:])[0]) + 1
    observed_row = int(torch.nonzero(observed)[0])
    baseline = reconstruction(model)
    assert baseline > 0

    features[missing_row] += 100.0
    assert reconstruction(rebuild()) == baseline
    features[missing_row] -= 100.0

    features[observed_row] += 1.0
    assert reconstruction(rebuild()) != pytest.approx(baseline, rel=1e-4)
    features[observed_row] -= 1.0


# --- graphs --------------------------------------------------------------------


def pairs_of(data, model):
    inter = data._dataset.inter_feat
    return set(zip(inter[model.USER_ID].tolist(), inter[model.ITEM_ID].tolist()))


def test_valid_and_test_interactions_never_enter_the_graphs(tmp_path):
    model, train, valid, test, _ = build(tmp_path, 2)
    train_pairs = pairs_of(train, model)
    held_out = (pairs_of(valid, model) | pairs_of(test, model)) - train_pairs
    assert len(held_out) >= 120

    rows, cols = model.norm_adj_matrix.to_coo().indices()
    user_side = rows < model.n_users
    adjacency = set(zip(rows[user_side].tolist(), (cols[user_side] - model.n_users).tolist()))
    users, items = model.aggregation.user_from_items.coalesce().indices()
    user_means = set(zip(users.tolist(), items.tolist()))
    items, users = model.aggregation.item_from_users.coalesce().indices()
    item_means = set(zip(users.tolist(), items.tolist()))
    for graph in (adjacency, user_means, item_means):
        assert graph == train_pairs
    for token in COLD_ITEMS:
        assert not model.aggregation.item_has_neighbours[item_id(train._dataset, token)]


def edges(matrix):
    rows, cols = matrix.coalesce().indices()
    return set(zip(rows.tolist(), cols.tolist()))


def test_training_leaves_the_batch_positive_edges_out_of_eq1(tmp_path):
    model, train, *_ = build(tmp_path, 2)
    batch = first_batch(train)
    targets = set(zip(batch[model.USER_ID].tolist(), batch[model.ITEM_ID].tolist()))
    full = edges(model.aggregation.user_from_items)
    assert targets <= full

    seen = []
    forward = model.forward
    model.forward = lambda left_out=None: seen.append(left_out) or forward(left_out)
    model.train()
    model.calculate_loss(batch)
    left_out = seen[0]
    assert set(zip(left_out.users.tolist(), left_out.items.tolist())) == targets
    assert len(left_out.users) == len(targets)  # each edge once

    # Eq. 1 with them left out is Eq. 1 over the graph rebuilt without them: rows stay means
    # over what is left, and an item left without users keeps its own features
    remaining = sorted(full - targets)
    rebuilt = MeanAggregation(
        sp.coo_matrix(
            (np.ones(len(remaining)), ([u for u, _ in remaining], [i for _, i in remaining])),
            shape=(model.n_users, model.n_items),
        ),
        model.device,
    )
    features = torch.randn(model.n_items, 5, generator=torch.Generator().manual_seed(0))
    for got, expected in zip(model.aggregation(features, left_out), rebuilt(features)):
        torch.testing.assert_close(got, expected)
    left = {i for _, i in full - targets}
    assert {i for i in range(model.n_items) if left_out.item_degree[i] > 0} == left

    model.leave_batch_edges_out = False  # the paper's graph as written: the targets stay in
    seen.clear()
    model.calculate_loss(batch)
    assert seen == [None]


def test_mean_aggregation_without_ignores_pairs_that_are_not_edges(tmp_path):
    model, *_ = build(tmp_path, 1)
    aggregation = model.aggregation
    full = edges(aggregation.user_from_items)
    absent = next((u, i) for u in range(1, model.n_users) for i in range(1, model.n_items) if (u, i) not in full)
    present = sorted(full)[0]
    users, items = torch.tensor([absent[0], present[0], present[0]]), torch.tensor([absent[1], present[1], present[1]])
    left_out = aggregation.without(users, items)
    assert list(zip(left_out.users.tolist(), left_out.items.tolist())) == [present]
    assert left_out.user_degree[present[0]] == aggregation.user_degree[present[0]] - 1


# --- evaluation ----------------------------------------------------------------


def test_full_sort_predict_matches_predict_and_caches(tmp_path):
    model, train, *_ = build(tmp_path, 3, ot_block_size=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    model.calculate_loss(first_batch(train)).backward()
    optimizer.step()

    model.eval()
    users = torch.arange(1, model.n_users)
    calls = []
    forward = model.forward
    model.forward = lambda: calls.append(1) or forward()
    with torch.no_grad():
        full = model.full_sort_predict(Interaction({model.USER_ID: users})).view(len(users), model.n_items)
        again = model.full_sort_predict(Interaction({model.USER_ID: users[:5]})).view(5, model.n_items)
        assert len(calls) == 1  # one forward pass per evaluation
        items = torch.randint(1, model.n_items, (len(users),), generator=torch.Generator().manual_seed(0))
        pointwise = model.predict(Interaction({model.USER_ID: users, model.ITEM_ID: items}))
    assert torch.allclose(full[torch.arange(len(users)), items], pointwise, atol=1e-4)
    assert torch.allclose(again, full[:5], atol=1e-6)

    model.train()
    assert model.restore_user_e is None and model.restore_item_e is None


# --- planted benchmark ---------------------------------------------------------


def planted_clusters(n_users=300, n_items=400, n_clusters=8, per_user=6, seed=0):
    """Users like items of cluster ``u % n_clusters`` only; both modalities encode the cluster."""
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, n_clusters, n_items)
    splits = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        liked = rng.choice(np.flatnonzero(clusters == u % n_clusters), size=per_user, replace=False)
        splits["train"] += [(u, i) for i in liked[:-2]]
        splits["valid"].append((u, liked[-2]))
        splits["test"].append((u, liked[-1]))
    one_hot = np.eye(n_clusters, dtype=np.float32)[clusters]
    a = one_hot + 0.1 * rng.standard_normal((n_items, n_clusters)).astype(np.float32)
    b = one_hot @ rng.standard_normal((n_clusters, 16)).astype(np.float32)
    b += 0.1 * rng.standard_normal((n_items, 16)).astype(np.float32)
    keys = list(range(n_items))
    return splits, {"a": (a, keys), "b": (b, keys)}


@pytest.mark.xfail(
    strict=True,
    reason="Known shortfall, measured (BENCHMARKS.md, 'CI2MG: planted content'): at the defaults CI2MG does "
    "not beat LightGCN-M here (valid Recall@20 0.19 vs 0.28 after 12 epochs; 0.44 vs 0.45, mean of 3 seeds, "
    "after 30). Its earlier pass (0.34) came from two artefacts since removed: the batch's own edges in Eq. 1 "
    "and BatchNorm running statistics in evaluation. Strict: a pass fails the suite, so fixing it is noticed.",
)
def test_ci2mg_beats_lightgcn_m_on_planted_content_at_90_percent_missing(tmp_path):
    splits, modalities = planted_clusters()
    settings = write_benchmark(tmp_path / "data", "planted", splits, modalities)
    settings.update(
        missing_rate=0.9, epochs=12, eval_step=12, train_batch_size=256, n_prototypes=16, seed=2020
    )
    scores = {
        model: run_recbole(model, "planted", config_dict=dict(settings), saved=False)["best_valid_result"]["recall@20"]
        for model in ("CI2MG", "LightGCN-M")
    }
    # 8 clusters of about 50 items: knowing the cluster alone gives recall@20 near 0.4.
    print(scores)
    assert scores["CI2MG"] > scores["LightGCN-M"] + 0.03, scores
