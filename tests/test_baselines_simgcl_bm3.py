"""SimGCL and BM3: training step, both scoring paths, missing content, items without training
interactions, SimGCL's noise and BM3's stop-gradient targets."""

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import REPO, both_scores, planted_interactions, write_benchmark
from recbole_ci2mg import tuning
from recbole_ci2mg.quick_start import run_recbole

from test_baselines_mmgcl_slmrec_mmssl import one_thread  # noqa: F401 (autouse: one torch thread here too)
from test_baselines_mmgcl_slmrec_mmssl import modality_settings, prepare, seeded_loss, train_step

MODELS = ["SimGCL", "BM3"]


# --- both models ------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_one_training_step_lowers_the_loss(tiny, name):
    model, train = prepare(name, tiny)
    batch = next(iter(train))
    model.train()
    before = seeded_loss(model, batch)
    train_step(model, batch)
    after = seeded_loss(model, batch)
    assert np.isfinite(before) and after < before


@pytest.mark.parametrize("name", MODELS)
def test_full_sort_predict_matches_predict_and_its_cache_is_cleared_in_training(tiny, name):
    model, train = prepare(name, tiny, missing_rate=0.3)
    batches = iter(train)
    train_step(model, next(batches))  # biases and every parameter away from their initial values
    model.eval()
    full, pointwise = both_scores(model)
    torch.testing.assert_close(full, pointwise, rtol=1e-4, atol=1e-5)
    assert model.restore_user_e is not None

    model.train()
    assert model.restore_user_e is None and model.restore_item_e is None
    train_step(model, next(batches))
    model.eval()
    full_after, pointwise_after = both_scores(model)
    torch.testing.assert_close(full_after, pointwise_after, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(full_after, full)  # not the scores cached before the step


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "case",
    [
        ("all missing", {"v": 4, "a": 6}, 1.0),
        ("one modality", {"v": 4}, 0.0),
        ("three modalities", {"v": 4, "a": 6, "t": 5}, 0.3),
    ],
    ids=lambda case: case[0],
)
def test_scores_and_loss_are_finite(tmp_path, name, case):
    _, dims, missing_rate = case
    model, train = prepare(name, modality_settings(tmp_path / "data", dims, missing_rate))
    if missing_rate == 1.0:
        assert all(not train._dataset.modality_observed[m][1:].any() for m in dims)
    if name == "BM3":
        assert len(model.projections) == len(dims)
    batches = iter(train)
    for _ in range(2):
        model.train()
        batch = next(batches)
        loss = model.calculate_loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    full, pointwise = both_scores(model)
    assert torch.isfinite(full).all() and torch.isfinite(pointwise).all()


@pytest.mark.parametrize("name", MODELS)
def test_items_without_training_interactions_get_finite_scores(tmp_path, name):
    planted, clusters = planted_interactions()
    cold = {"30", "31", "32"}  # raw ids: every training interaction of these items is moved to test
    splits = {
        "train": [(u, i) for u, i in planted["train"] if str(i) not in cold],
        "valid": planted["valid"],
        "test": planted["test"] + [(u, i) for u, i in planted["train"] if str(i) in cold],
    }
    features = np.eye(4, dtype=np.float32)[clusters] + 0.1 * np.random.default_rng(0).standard_normal((40, 4))
    settings = write_benchmark(tmp_path / "data", "tiny", splits, {"v": (features.astype(np.float32), None)})
    model, train = prepare(name, settings)
    dataset = train._dataset
    cold_ids = torch.as_tensor([dataset.token2id(dataset.iid_field, token) for token in sorted(cold)])
    trained_items = torch.as_tensor(dataset.inter_feat[dataset.iid_field]).unique()
    assert not np.isin(cold_ids.numpy(), trained_items.numpy()).any()

    model.train()
    for batch in list(train)[:3]:
        train_step(model, batch)
    model.eval()
    full, _ = both_scores(model)
    assert torch.isfinite(full).all()
    if name == "SimGCL":  # layer 0 left out: nothing propagates to an item without edges
        assert (full[:, cold_ids] == 0).all()
    else:  # BM3 scores it from its own (untrained) ID embedding
        assert (full[:, cold_ids] != 0).all()


@pytest.mark.parametrize("name", MODELS)
def test_trains_and_evaluates_through_recbole(tiny, name):
    result = run_recbole(name, "tiny", config_dict={**tiny, "epochs": 2, "missing_rate": 0.5}, saved=False)
    assert result["model"] == name and result["epochs_trained"] == 2
    assert 0.0 < result["test_result"]["recall@20"] <= 1.0


@pytest.mark.parametrize("name", MODELS)
def test_shipped_search_space_names_settings_of_the_model(tiny, name):
    params = tuning.read_params_file(REPO / "properties" / "hyper" / f"{name}.hyper")
    assert params and all(kind == "choice" for kind, _ in params.values())  # exhaustive grids
    config = tuning.check_settings(name, "tiny", list(params), f"{name}.hyper", config_dict=tiny)
    assert all(config[key] in values for key, (_, values) in params.items())  # the default is on the grid


# --- SimGCL -----------------------------------------------------------------------


def test_simgcl_reads_no_content(tiny):
    model, train = prepare("SimGCL", {**tiny, "modalities": {}})
    assert torch.isfinite(model.calculate_loss(next(iter(train))))
    assert not any("feature" in name for name, _ in model.named_parameters())


def test_simgcl_noise_has_norm_eps_and_the_sign_of_the_embedding(tiny):
    model, _ = prepare("SimGCL", tiny, n_layers=1, eps=0.3)
    with torch.no_grad():
        clean = torch.cat(model.forward())
        torch.manual_seed(0)
        noisy = torch.cat(model.forward(perturbed=True))
        torch.manual_seed(1)
        other = torch.cat(model.forward(perturbed=True))
    rows = (clean != 0).all(dim=1)  # nodes with training edges (the padding row has none)
    assert rows.sum() >= model.n_users + model.n_items - 2
    noise = noisy[rows] - clean[rows]
    torch.testing.assert_close(noise.norm(dim=1), torch.full((int(rows.sum()),), 0.3))
    assert (torch.sign(noise) == torch.sign(clean[rows])).all()
    assert not torch.allclose(noisy, other)  # a fresh draw per view
    zero = (clean == 0).all(dim=1)  # RecBole's padding user and item: no edge, no sign, no noise
    assert zero.sum() == 2 and torch.equal(noisy[zero], clean[zero])


def test_simgcl_readout_leaves_the_input_layer_out(tiny):
    model, _ = prepare("SimGCL", tiny, n_layers=2)
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    with torch.no_grad():
        first = torch.sparse.mm(model.norm_adj_matrix, ego)
        expected = (first + torch.sparse.mm(model.norm_adj_matrix, first)) / 2
        torch.testing.assert_close(torch.cat(model.forward()), expected)


def test_simgcl_refuses_a_readout_without_layers(tiny):
    with pytest.raises(ValueError, match="n_layers must be at least 1"):
        prepare("SimGCL", tiny, n_layers=0)


# --- BM3 --------------------------------------------------------------------------


def test_bm3_trains_on_positive_pairs_only(tiny):
    model, train = prepare("BM3", tiny)
    batches = list(train)
    assert all(model.NEG_ITEM_ID not in batch and "label" not in batch for batch in batches)
    assert sum(len(batch) for batch in batches) == train._dataset.inter_num  # no sampled rows added
    assert torch.isfinite(model.calculate_loss(batches[0]))


def test_bm3_modality_terms_move_projections_and_predictor_never_ids(tiny):
    r"""The targets carry no gradient: the alignment and masking terms (cl_weight) reach
    the projections, features and predictor, never the ID embeddings."""
    model, train = prepare("BM3", tiny, reg_weight=0.0)
    batch = next(iter(train))
    model.train()

    def gradients(cl_weight):
        model.zero_grad()
        model.cl_weight = cl_weight
        torch.manual_seed(0)
        model.calculate_loss(batch).backward()
        return {name: p.grad.clone() if p.grad is not None else None for name, p in model.named_parameters()}

    with_content, ids_only = gradients(1.0), gradients(0.0)
    for name in ("user_embedding.weight", "item_embedding.weight"):
        torch.testing.assert_close(with_content[name], ids_only[name])
    assert ids_only["projections.0.weight"] is None or not ids_only["projections.0.weight"].any()
    assert with_content["projections.0.weight"].abs().sum() > 0
    assert with_content["features.0"].abs().sum() > 0
    assert not torch.allclose(with_content["predictor.weight"], ids_only["predictor.weight"])


def test_bm3_reconstruction_targets_carry_no_gradient(tiny):
    r"""One pair, no layer, no dropout, the predictor the identity: the loss is
    :math:`C(e_u, sg(h_i)) + C(h_i, sg(e_u))` with :math:`h_i = 2 e_i` (readout plus the ID
    residual), so each embedding's gradient is that of its own online term alone."""
    model, train = prepare("BM3", tiny, dropout=0.0, reg_weight=0.0, cl_weight=0.0, n_layers=0)
    with torch.no_grad():
        model.predictor.weight.copy_(torch.eye(model.latent_dim))
        model.predictor.bias.zero_()
    batch = next(iter(train))
    user, item = batch[model.USER_ID][:1], batch[model.ITEM_ID][:1]
    model.train()
    model.zero_grad()
    model.calculate_loss(Interaction({model.USER_ID: user, model.ITEM_ID: item})).backward()

    e_u = model.user_embedding.weight[user].detach().clone().requires_grad_(True)
    e_i = model.item_embedding.weight[item].detach().clone().requires_grad_(True)
    cosine = torch.nn.functional.cosine_similarity
    ((1 - cosine(e_u, 2 * e_i.detach())) + (1 - cosine(2 * e_i, e_u.detach()))).sum().backward()
    torch.testing.assert_close(model.user_embedding.weight.grad[user], e_u.grad)
    torch.testing.assert_close(model.item_embedding.weight.grad[item], e_i.grad)
