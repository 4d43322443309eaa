"""VBPR, FREEDOM and HCCF: training steps, both scoring paths, missing content, the gain
from content over the ID-only model each extends, and FREEDOM's kNN-graph cache."""

import logging
import os

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from conftest import both_scores, optimizer_step, write_benchmark
from recbole_ci2mg.model.layers.item_graph import knn_cache_key, knn_neighbours
from recbole_ci2mg.quick_start import build_config, create_dataset, run_recbole
from recbole_ci2mg.registry import get_model

MODELS = ["VBPR", "FREEDOM", "HCCF"]
CONTENT_MODELS = ["VBPR", "FREEDOM"]


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine's two cores are shared: several torch threads spinning
    # against other processes make a tiny sparse backward pass ~50x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name, settings, dataset="tiny", **overrides):
    """Config, model (fresh, seeded) and training loader, as ``run_recbole`` builds them."""
    config = build_config(name, dataset, config_dict={**settings, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(name)(config, train._dataset)
    return config, model, train


# --- every model ---------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_one_training_step_lowers_the_loss_on_the_same_batch(tiny, name):
    config, model, train = build(name, tiny)
    batch = next(iter(train))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    torch.manual_seed(0)  # the same edge and hyperedge dropout in both evaluations (HCCF)
    before = optimizer_step(model, optimizer, batch).item()
    torch.manual_seed(0)
    after = model.calculate_loss(batch).item()
    assert np.isfinite(before) and after < before


@pytest.mark.parametrize("name", MODELS)
def test_full_sort_matches_predict_and_its_cache_is_cleared_by_training(tiny, name):
    config, model, train = build(name, tiny, missing_rate=0.3)
    batch = next(iter(train))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    optimizer_step(model, optimizer, batch)  # biases and every parameter away from their initial values

    model.eval()
    full, pointwise = both_scores(model)
    # float32: a matrix product and an elementwise sum add in different orders
    # (and CPU kernels differ between machines); HCCF's scores reach ~10 here.
    torch.testing.assert_close(full, pointwise, rtol=1e-3, atol=1e-5)

    optimizer_step(model, optimizer, batch)
    model.eval()
    full_after, pointwise_after = both_scores(model)
    torch.testing.assert_close(full_after, pointwise_after, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(full_after, full)  # not the scores cached before the step


@pytest.mark.parametrize("name", MODELS)
def test_a_fully_missing_modality_gives_finite_losses_and_scores(tiny, name):
    config, model, train = build(name, tiny, missing_rate=1.0)
    dataset = train._dataset
    assert dataset.modality_names and not any(dataset.modality_observed[m].any() for m in dataset.modality_names)

    model.train()
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    full, _ = both_scores(model)
    assert torch.isfinite(full).all()


@pytest.mark.parametrize("name", MODELS)
def test_trains_and_evaluates_through_recbole(tiny, name):
    result = run_recbole(name, "tiny", config_dict={**tiny, "epochs": 2, "missing_rate": 0.5}, saved=False)
    assert result["model"] == name and result["epochs_trained"] == 2
    assert 0.0 < result["test_result"]["recall@20"] <= 1.0


@pytest.mark.parametrize("name", CONTENT_MODELS)
def test_content_models_need_a_modality(tiny, name):
    with pytest.raises(ValueError, match=rf"{name} needs item modalities"):
        build(name, {**tiny, "modalities": {}})


def test_hccf_reads_no_content(tiny):
    _, model, train = build("HCCF", {**tiny, "modalities": {}})
    loss = model.calculate_loss(next(iter(train)))
    assert torch.isfinite(loss)
    assert not any("feature" in name for name, _ in model.named_buffers())


# --- content that predicts interactions -----------------------------------------


def planted_sparse(root, n_users=400, n_items=1600, n_clusters=8, n_train=2, seed=0):
    r"""Users like items of cluster ``u % n_clusters``; features = cluster one-hot + noise.

    Two training interactions per user over 1600 items: most items have none or
    one, so IDs alone cannot place a valid or test item, while its features can.
    """
    rng = np.random.default_rng(seed)
    clusters = np.arange(n_items) % n_clusters
    splits = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        liked = rng.choice(np.flatnonzero(clusters == u % n_clusters), size=n_train + 2, replace=False)
        splits["train"] += [(u, i) for i in liked[:-2]]
        splits["valid"].append((u, liked[-2]))
        splits["test"].append((u, liked[-1]))
    features = np.hstack([np.eye(n_clusters, dtype=np.float32)[clusters], np.zeros((n_items, 8), np.float32)])
    features += 0.1 * rng.standard_normal(features.shape).astype(np.float32)
    # keyed rows: items that no split mentions are not in the dataset
    return write_benchmark(root, "plant", splits, {"v": (features, list(range(n_items)))})


@pytest.mark.parametrize("content, id_only", [("VBPR", "BPR"), ("FREEDOM", "LightGCN")])
def test_predictive_content_beats_the_id_only_model_it_extends(tmp_path, content, id_only):
    settings = planted_sparse(tmp_path / "data")
    common = {
        **settings,
        "epochs": 5,
        "eval_step": 5,  # validate once, after the last epoch
        "learning_rate": 0.01,  # the same for both models: a few epochs are enough to separate them
        "train_batch_size": 256,
        "eval_batch_size": 1 << 20,
    }
    with_content = run_recbole(content, "plant", config_dict=common, saved=False)["test_result"]["recall@20"]
    ids_only = run_recbole(id_only, "plant", config_dict=common, saved=False)["test_result"]["recall@20"]
    # random ranking: ~20 / 1566 = 0.013
    assert with_content > ids_only + 0.02, (with_content, ids_only)


# --- FREEDOM's graphs ------------------------------------------------------------


def test_freedom_loads_its_knn_graph_from_the_cache_of_the_same_mask_only(tiny):
    _, first, _ = build("FREEDOM", tiny, missing_rate=0.5, mask_seed=1)
    assert first.knn_cache_loaded == [False, False]
    cache_dir = os.path.join(tiny["data_path"], "tiny", "cache")
    assert all(os.path.dirname(path) == cache_dir and os.path.isfile(path) for path in first.knn_cache_files)
    written = [os.stat(path).st_mtime_ns for path in first.knn_cache_files]

    _, again, _ = build("FREEDOM", tiny, missing_rate=0.5, mask_seed=1, seed=7)  # another training seed
    assert again.knn_cache_loaded == [True, True]
    assert again.knn_cache_files == first.knn_cache_files
    assert [os.stat(path).st_mtime_ns for path in again.knn_cache_files] == written
    torch.testing.assert_close(again.mm_adj.to_dense(), first.mm_adj.to_dense())

    _, other_mask, _ = build("FREEDOM", tiny, missing_rate=0.5, mask_seed=2)
    assert other_mask.knn_cache_loaded == [False, False]
    assert set(other_mask.knn_cache_files).isdisjoint(first.knn_cache_files)
    assert len(os.listdir(cache_dir)) == 4


def test_the_cache_key_covers_mask_features_and_k():
    features = np.random.default_rng(0).standard_normal((30, 5)).astype(np.float32)
    mask = np.ones(30, dtype=bool)
    other_mask = mask.copy()
    other_mask[3] = False
    key = knn_cache_key(features, mask, 10)
    assert key == knn_cache_key(features.copy(), mask.copy(), 10)
    assert key != knn_cache_key(features, other_mask, 10)  # same values, another mask
    assert key != knn_cache_key(features, mask, 5)
    changed = features.copy()
    changed[7, 2] += 1.0
    assert key != knn_cache_key(changed, mask, 10)


def test_an_unwritable_cache_folder_warns_and_builds_the_graph(tiny, caplog):
    cache_path = os.path.join(tiny["data_path"], "tiny", "cache")
    with open(cache_path, "w") as blocker:  # a file where the folder should be (root ignores chmod)
        blocker.write("")
    with caplog.at_level(logging.WARNING):
        _, model, train = build("FREEDOM", tiny)
    assert "Could not cache the kNN graph" in caplog.text
    assert model.knn_cache_loaded == [False, False] and os.path.isfile(cache_path)
    assert torch.isfinite(model.calculate_loss(next(iter(train))))


def test_chunked_knn_equals_the_dense_computation():
    features = torch.from_numpy(np.random.default_rng(3).standard_normal((57, 6)).astype(np.float32))
    unit = torch.nn.functional.normalize(features, dim=1)
    dense = torch.topk(unit @ unit.T, 10, dim=1).indices
    chunked = knn_neighbours(features, 10, chunk_rows=8)
    assert torch.equal(chunked, dense)
    assert (chunked[:, 0] == torch.arange(57)).all()  # each item is its own nearest neighbour


def test_freedom_prunes_edges_degree_sensitively_once_per_epoch(tiny):
    _, model, train = build("FREEDOM", tiny, dropout=0.5)
    batch = next(iter(train))
    n_keep = round(model.edge_users.numel() * 0.5)

    model.train()
    model.calculate_loss(batch)
    first = model.masked_adj
    assert first._nnz() == 2 * n_keep  # both directions of the kept edges
    model.calculate_loss(batch)
    assert model.masked_adj is first  # same epoch, same graph
    model.train()  # RecBole's trainer: start of the next epoch
    model.calculate_loss(batch)
    assert not torch.equal(model.masked_adj.indices(), first.indices())

    # edges between low-degree nodes (high 1/sqrt(d_u d_i)) survive more often
    kept = torch.zeros(model.edge_users.numel())
    edge_ids = {(int(u), int(i)): k for k, (u, i) in enumerate(zip(model.edge_users, model.edge_items))}
    for _ in range(200):
        rows, cols = model.pruned_adj().indices()
        for u, i in zip(rows.tolist(), cols.tolist()):
            if u < model.n_users:
                kept[edge_ids[(u, i - model.n_users)]] += 1
    probs = model.edge_probs
    high, low = probs >= probs.quantile(0.75), probs <= probs.quantile(0.25)
    assert kept[high].mean() > kept[low].mean() + 10
