"""MMGCL, SLMRec and MMSSL: training step, prediction paths, any number of modalities, content use."""

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import modality_settings, prepare, seeded_loss, train_step, write_benchmark
from recbole_ci2mg.quick_start import run_recbole

MODELS = ["MMGCL", "SLMRec", "MMSSL"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on shared cores a second intra-op thread only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", MODELS)
def test_one_training_step_lowers_the_loss(tiny, name):
    model, train = prepare(name, tiny)
    batch = next(iter(train))
    model.train()
    before = seeded_loss(model, batch)
    train_step(model, batch)
    assert seeded_loss(model, batch) < before


@pytest.mark.parametrize("name", MODELS)
def test_full_sort_predict_matches_predict_and_its_cache_is_cleared_in_training(tiny, name):
    model, train = prepare(name, tiny)
    batches = iter(train)
    for _ in range(2):  # two epochs: per-epoch resampling and MMSSL's generated graphs have happened
        model.train()
        train_step(model, next(batches))
    model.eval()
    users = torch.tensor([1, 5, 17])
    items = torch.arange(model.n_items)
    with torch.no_grad():
        full = model.full_sort_predict(Interaction({model.USER_ID: users})).view(len(users), -1)
        pairs = Interaction(
            {model.USER_ID: users.repeat_interleave(len(items)), model.ITEM_ID: items.repeat(len(users))}
        )
        pointwise = model.predict(pairs).view(len(users), -1)
    torch.testing.assert_close(full, pointwise, rtol=1e-5, atol=1e-5)
    assert model.restore_user_e is not None

    model.train()
    assert model.restore_user_e is None and model.restore_item_e is None
    train_step(model, next(batches))
    model.eval()
    with torch.no_grad():
        after = model.full_sort_predict(Interaction({model.USER_ID: users})).view(len(users), -1)
    assert not torch.allclose(after, full)


def test_mmssl_discriminator_moves_only_by_its_own_optimiser(tiny):
    model, train = prepare("MMSSL", tiny)
    batch = next(iter(train))
    model.train()
    before = [p.detach().clone() for p in model.discriminator.parameters()]
    loss = model.calculate_loss(batch)  # takes one discriminator step
    assert any(not torch.equal(b, p) for b, p in zip(before, model.discriminator.parameters()))
    loss.backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert all(p.grad is not None for p in model.projections.parameters())


def test_mmssl_generated_graphs_travel_with_the_state_dict(tiny):
    model, train = prepare("MMSSL", tiny)
    for batch in list(train)[:2]:  # the second epoch generates the modality graphs
        model.train()
        train_step(model, batch)
    model.eval()
    reloaded, _ = prepare("MMSSL", tiny)
    reloaded.load_state_dict(model.state_dict())
    reloaded.eval()
    assert bool(reloaded.structure_ready)
    users = Interaction({model.USER_ID: torch.tensor([1, 2, 3])})
    with torch.no_grad():
        torch.testing.assert_close(reloaded.full_sort_predict(users), model.full_sort_predict(users))


def test_mmssl_keeps_the_real_graph_without_structure_refresh(tiny):
    model, train = prepare("MMSSL", tiny, structure_refresh=False)
    for batch in list(train)[:2]:  # two epochs: the second would generate the modality graphs
        model.train()
        train_step(model, batch)
    assert not bool(model.structure_ready)
    user_views, item_views = model.structure_views()
    expected = torch.sparse.mm(model.aggregation.user_from_items, model.item_embedding.weight)
    for view in user_views:
        torch.testing.assert_close(view, expected)

    refreshed, _ = prepare("MMSSL", tiny)
    for batch in list(train)[:2]:
        refreshed.train()
        train_step(refreshed, batch)
    assert bool(refreshed.structure_ready)


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
    assert model.n_modalities == len(dims)
    if missing_rate == 1.0:
        assert all(not train._dataset.modality_observed[m][1:].any() for m in dims)
    batches = iter(train)
    for _ in range(2):  # the second epoch exercises resampled views and MMSSL's generated graphs
        model.train()
        batch = next(batches)
        loss = model.calculate_loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.predict(batch)).all()
        assert torch.isfinite(model.full_sort_predict(batch)).all()


@pytest.mark.parametrize("name", MODELS)
def test_a_dataset_without_modalities_is_refused(tiny, name):
    with pytest.raises(ValueError, match=f"{name} needs item modalities"):
        prepare(name, {**tiny, "modalities": {}})


# --- content that predicts interactions -------------------------------------------------

N_CLUSTERS, ITEMS_PER_CLUSTER, USERS_PER_CLUSTER, N_TRAIN = 8, 60, 20, 3
SAME_TRAINING = {"epochs": 5, "train_batch_size": 64, "learning_rate": 0.01, "stopping_step": 100, "seed": 2020}


def planted_content(root):
    r"""480 items in 8 clusters; each of 160 users has 3 training items of its cluster.

    One training interaction per item on average: IDs alone can hardly place a
    validation or test item. Modality ``v`` is the cluster one-hot plus noise (and
    noise-only columns); modality ``a`` is pure noise.
    """
    rng = np.random.default_rng(0)
    n_items = N_CLUSTERS * ITEMS_PER_CLUSTER
    clusters = np.arange(n_items) % N_CLUSTERS
    splits = {"train": [], "valid": [], "test": []}
    for u in range(N_CLUSTERS * USERS_PER_CLUSTER):
        liked = rng.choice(np.flatnonzero(clusters == u % N_CLUSTERS), size=N_TRAIN + 2, replace=False)
        splits["train"] += [(u, i) for i in liked[:N_TRAIN]]
        splits["valid"].append((u, liked[N_TRAIN]))
        splits["test"].append((u, liked[N_TRAIN + 1]))
    v = np.hstack([np.eye(N_CLUSTERS)[clusters], np.zeros((n_items, 8))])
    v = v + 0.3 * rng.standard_normal(v.shape)
    a = rng.standard_normal((n_items, 12))
    keys = list(range(n_items))  # items in no split are left out by RecBole
    return write_benchmark(
        root, "planted", splits, {"v": (v.astype(np.float32), keys), "a": (a.astype(np.float32), keys)}
    )


@pytest.fixture(scope="module")
def content_benchmark(tmp_path_factory):
    """The planted-content settings and LightGCN's test Recall@20 on them (run once)."""
    root = tmp_path_factory.mktemp("content")
    settings = {**planted_content(root / "data"), **SAME_TRAINING}
    with pytest.MonkeyPatch.context() as patch:  # RecBole writes log/ and saved/ into the working folder
        patch.chdir(root)
        patch.setattr("sys.argv", ["pytest"])
        lightgcn = run_recbole("LightGCN", "planted", config_dict=settings)
    return settings, lightgcn["test_result"]["recall@20"]


@pytest.mark.parametrize("name", MODELS)
def test_content_beats_lightgcn_when_ids_are_sparse(content_benchmark, name):
    settings, lightgcn_recall = content_benchmark
    result = run_recbole(name, "planted", config_dict=settings)
    assert result["test_result"]["recall@20"] > lightgcn_recall + 0.03, (result["test_result"], lightgcn_recall)
