"""SiBraR and MILK: training step, both scoring paths, missing modalities through the observed
mask, new items scored from content, and the gain from content over the ID-only model."""

import copy

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import REPO, modality_settings, prepare, seeded_loss, train_step, write_benchmark
from recbole_ci2mg import tuning
from recbole_ci2mg.quick_start import run_recbole

MODELS = ["SiBraR", "MILK"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on shared cores a second intra-op thread only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def all_scores(model, users):
    """``full_sort_predict`` and ``predict`` of ``users`` over every item, each ``[len(users), n_items]``."""
    items = torch.arange(model.n_items)
    with torch.no_grad():
        full = model.full_sort_predict(Interaction({model.USER_ID: users})).view(len(users), -1)
        pairs = Interaction(
            {model.USER_ID: users.repeat_interleave(len(items)), model.ITEM_ID: items.repeat(len(users))}
        )
        pointwise = model.predict(pairs).view(len(users), -1)
    return full, pointwise


# --- every model ---------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_one_training_step_lowers_the_loss(tiny, name):
    model, train = prepare(name, tiny)
    batch = next(iter(train))
    model.train()
    before = seeded_loss(model, batch)
    train_step(model, batch)
    assert np.isfinite(before) and seeded_loss(model, batch) < before


@pytest.mark.parametrize("name", MODELS)
def test_a_batch_of_one_interaction_trains(tiny, name):
    model, train = prepare(name, tiny)
    model.train()
    loss = model.calculate_loss(next(iter(train))[:1])  # e.g. the last batch of an epoch
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", MODELS)
def test_full_sort_predict_matches_predict_and_its_cache_is_cleared_in_training(tiny, name):
    model, train = prepare(name, tiny, missing_rate=0.3)
    batches = iter(train)
    for _ in range(2):
        model.train()
        train_step(model, next(batches))
    model.eval()
    users = torch.tensor([1, 5, 17])
    full, pointwise = all_scores(model, users)
    torch.testing.assert_close(full, pointwise, rtol=1e-5, atol=1e-5)
    assert model.restore_user_e is not None

    model.train()
    assert model.restore_user_e is None and model.restore_item_e is None
    train_step(model, next(batches))
    model.eval()
    after, _ = all_scores(model, users)
    assert not torch.allclose(after, full)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "case",
    [
        ("all missing", {"v": 4, "a": 6}, 1.0),
        ("one modality", {"v": 4}, 0.0),
        ("three modalities", {"v": 4, "a": 6, "t": 5}, 0.5),
    ],
    ids=lambda case: case[0],
)
def test_scores_and_loss_are_finite(tmp_path, name, case):
    _, dims, missing_rate = case
    model, train = prepare(name, modality_settings(tmp_path / "data", dims, missing_rate))
    assert model.n_modalities == len(dims)
    if missing_rate == 1.0:
        assert all(not train._dataset.modality_observed[m][1:].any() for m in dims)
    for batch in list(train)[:2]:
        model.train()
        loss = model.calculate_loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    full, pointwise = all_scores(model, torch.arange(1, model.n_users))
    assert torch.isfinite(full).all() and torch.isfinite(pointwise).all()


@pytest.mark.parametrize("name", MODELS)
def test_a_dataset_without_modalities_is_refused(tiny, name):
    with pytest.raises(ValueError, match=f"{name} needs item modalities"):
        prepare(name, {**tiny, "modalities": {}})


@pytest.mark.parametrize("name", MODELS)
def test_trains_and_evaluates_through_recbole(tiny, name):
    result = run_recbole(name, "tiny", config_dict={**tiny, "epochs": 2, "missing_rate": 0.5}, saved=False)
    assert result["model"] == name and result["epochs_trained"] == 2
    assert 0.0 < result["test_result"]["recall@20"] <= 1.0


@pytest.mark.parametrize("name", MODELS)
def test_shipped_search_space_names_settings_of_the_model(tiny, name):
    params = tuning.read_params_file(REPO / "properties" / "hyper" / f"{name}.hyper")
    config = tuning.check_settings(name, "tiny", list(params), f"{name}.hyper", config_dict=tiny)
    assert all(name in config.final_config_dict for name in params)


# --- the observed mask ------------------------------------------------------------


def with_imputed_rows_replaced(model, value):
    """``model`` with every unobserved feature row set to ``value`` (observed rows untouched)."""
    for m, name in enumerate(model.modality_names):
        features = getattr(model, f"features_{m}")
        unobserved = ~model.observed[:, m] if hasattr(model, "observed") else ~model.available[:, m + 1]
        features[unobserved] = value
    return model


def test_sibrar_never_encodes_an_unobserved_modality(tiny):
    model, train = prepare("SiBraR", tiny, missing_rate=0.5)
    dataset = train._dataset
    for m, name in enumerate(model.modality_names):
        assert torch.equal(model.available[:, m + 1], dataset.modality_observed[name])
    assert not model.available[0].any()  # RecBole's padding item
    batch = next(iter(train))
    model.train()
    train_step(model, batch)
    other = with_imputed_rows_replaced(copy.deepcopy(model), 1e3)  # the mean-imputed rows: anything
    users = torch.arange(1, model.n_users)
    torch.testing.assert_close(all_scores(other.eval(), users)[0], all_scores(model.eval(), users)[0])
    assert seeded_loss(other.train(), batch) == pytest.approx(seeded_loss(model.train(), batch))


def test_milk_aligns_only_modalities_an_item_has(tiny):
    model, train = prepare("MILK", tiny, missing_rate=0.5)
    batch = next(iter(train))
    items = torch.unique(torch.cat([batch[model.ITEM_ID], batch[model.NEG_ITEM_ID]]))
    observed = model.observed[items]
    assert (observed.all(dim=1)).any() and (~observed.all(dim=1)).any()
    with torch.no_grad():
        before = model.alignment_loss(model.modality_representations(items), observed).item()
        with_imputed_rows_replaced(model, 1e3)
        after = model.alignment_loss(model.modality_representations(items), observed).item()
    assert before > 0 and after == pytest.approx(before)


def test_milk_environments_are_the_uniform_one_and_cyclic_shifts_of_a_dirichlet_draw(tmp_path):
    model, _ = prepare("MILK", modality_settings(tmp_path / "data", {"v": 4, "a": 6, "t": 5}))
    torch.manual_seed(0)
    first = model.environments()
    assert first.shape == (4, 3)
    torch.testing.assert_close(first.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(first[0], torch.full((3,), 1 / 3))
    theta = first[1]
    assert (theta > 0).all() and not torch.allclose(theta, first[0])
    for shift in range(1, 3):
        torch.testing.assert_close(first[1 + shift], torch.roll(theta, shift))
    assert not torch.allclose(model.environments()[1], theta)  # redrawn every call (every batch)


# --- content that predicts interactions, on items with no training interaction ----------

N_CLUSTERS, ITEMS_PER_CLUSTER, USERS_PER_CLUSTER, N_TRAIN = 8, 60, 20, 4
SAME_TRAINING = {
    "epochs": 8,
    "eval_step": 8,  # validate once, after the last epoch
    "train_batch_size": 128,
    "learning_rate": 0.01,
    "stopping_step": 100,
    "seed": 2020,
    "eval_batch_size": 1 << 20,
}


def planted_new_items(root):
    r"""480 items in 8 clusters; half of each cluster only ever appears in validation or test.

    Each of 160 users has 4 training items of its cluster among the old half and one
    validation and one test item among the new half: no validation or test item has a
    training interaction, so IDs alone cannot rank them (random: ~20 / 476 = 0.04), while
    modality ``v`` (the cluster one-hot plus noise) can. Modality ``a`` is pure noise.
    """
    rng = np.random.default_rng(0)
    n_items = N_CLUSTERS * ITEMS_PER_CLUSTER
    clusters = np.arange(n_items) % N_CLUSTERS
    new = np.arange(n_items) >= n_items // 2
    splits = {"train": [], "valid": [], "test": []}
    for u in range(N_CLUSTERS * USERS_PER_CLUSTER):
        own = clusters == u % N_CLUSTERS
        liked = rng.choice(np.flatnonzero(own & ~new), size=N_TRAIN, replace=False)
        held = rng.choice(np.flatnonzero(own & new), size=2, replace=False)
        splits["train"] += [(u, i) for i in liked]
        splits["valid"].append((u, held[0]))
        splits["test"].append((u, held[1]))
    v = np.hstack([np.eye(N_CLUSTERS)[clusters], np.zeros((n_items, 8))]) + 0.3 * rng.standard_normal((n_items, 16))
    a = rng.standard_normal((n_items, 12))
    keys = list(range(n_items))
    settings = write_benchmark(
        root, "newitems", splits, {"v": (v.astype(np.float32), keys), "a": (a.astype(np.float32), keys)}
    )
    return {**settings, **SAME_TRAINING}


@pytest.fixture(scope="module")
def new_item_benchmark(tmp_path_factory):
    """The planted new-item settings and BPR's test Recall@20 on them (run once)."""
    root = tmp_path_factory.mktemp("newitems")
    settings = planted_new_items(root / "data")
    with pytest.MonkeyPatch.context() as patch:  # RecBole writes log/ and saved/ into the working folder
        patch.chdir(root)
        patch.setattr("sys.argv", ["pytest"])
        bpr = run_recbole("BPR", "newitems", config_dict=settings, saved=False)
    return settings, bpr["test_result"]["recall@20"]


@pytest.mark.parametrize("name", MODELS)
def test_content_ranks_new_items_the_id_only_model_cannot(new_item_benchmark, name):
    settings, bpr_recall = new_item_benchmark
    recall = run_recbole(name, "newitems", config_dict=settings, saved=False)["test_result"]["recall@20"]
    # random ranking: ~20 / 472 = 0.04; BPR ranks its trained items above the new ones
    assert recall > bpr_recall + 0.08 and recall > 0.1, (recall, bpr_recall)


def test_sibrar_content_beats_its_interactions_only_core_on_new_items(new_item_benchmark):
    settings, _ = new_item_benchmark
    with_content = run_recbole("SiBraR", "newitems", config_dict=settings, saved=False)["test_result"]["recall@20"]
    # every content row masked: SiBraR encodes the interactions only, as its ID-only core
    core = run_recbole("SiBraR", "newitems", config_dict={**settings, "missing_rate": 1.0}, saved=False)
    assert with_content > core["test_result"]["recall@20"] + 0.1, (with_content, core["test_result"])


@pytest.mark.parametrize("name", MODELS)
def test_new_items_get_finite_scores_from_content(new_item_benchmark, name):
    settings, _ = new_item_benchmark
    model, train = prepare(name, settings, dataset="newitems")
    model.train()
    for batch in list(train)[:3]:
        train_step(model, batch)
    model.eval()
    trained = torch.zeros(model.n_items, dtype=torch.bool)
    trained[train._dataset.inter_feat[model.ITEM_ID]] = True
    new_items = torch.nonzero(~trained).squeeze(1)[1:]  # leave out RecBole's padding item 0
    assert len(new_items) > 100  # the new items that validation or test mention
    full, _ = all_scores(model, torch.arange(1, model.n_users))
    assert torch.isfinite(full[:, new_items]).all()
    assert full[:, new_items].std(dim=1).min() > 0  # scored from their content, not one fallback value
