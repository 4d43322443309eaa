"""DGMRec: training steps, both scoring paths, missing content, generation of missing
modalities, items without training interactions, its graphs in checkpoints, the gain from
content over LightGCN, and its search space."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from conftest import both_scores, planted_interactions, optimizer_step, write_benchmark
from recbole_ci2mg import tuning
from recbole_ci2mg.quick_start import build_config, create_dataset, run_recbole
from recbole_ci2mg.registry import get_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine's cores are shared: a tiny sparse backward pass is much slower with several threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(settings, dataset="tiny", **overrides):
    """Config, model (fresh, seeded) and training loader, as ``run_recbole`` builds them."""
    config = build_config("DGMRec", dataset, config_dict={**settings, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model("DGMRec")(config, train._dataset)
    return config, model, train


def one_missing(model, missing, present):
    """Internal id of an item that misses modality ``missing`` and has ``present`` observed."""
    m, o = model.modality_names.index(missing), model.modality_names.index(present)
    rows = torch.nonzero(~model.observed[:, m] & model.observed[:, o]).squeeze(1)
    assert rows.numel() > 0
    return int(rows[0]), m, o


# --- the RecBole model contract ---------------------------------------------------


def test_one_training_step_lowers_the_loss_on_the_same_batch(tiny):
    config, model, train = build(tiny, missing_rate=0.3)
    batch = next(iter(train))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    torch.manual_seed(0)  # the same perturbation noise and CLUB permutation in both evaluations
    before = optimizer_step(model, optimizer, batch).item()
    torch.manual_seed(0)
    after = model.calculate_loss(batch).item()
    assert np.isfinite(before) and after < before


def test_full_sort_matches_predict_and_its_cache_is_cleared_by_training(tiny):
    _, model, train = build(tiny, missing_rate=0.3)
    batch = next(iter(train))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    optimizer_step(model, optimizer, batch)

    model.eval()
    full, pointwise = both_scores(model)
    torch.testing.assert_close(full, pointwise, rtol=1e-3, atol=1e-5)

    optimizer_step(model, optimizer, batch)  # the second epoch start also writes generated rows
    model.eval()
    full_after, pointwise_after = both_scores(model)
    torch.testing.assert_close(full_after, pointwise_after, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(full_after, full)  # not the scores cached before the step


@pytest.mark.parametrize("rate, mode", [(1.0, "independent"), (0.9, "item")])
def test_missing_rows_give_finite_losses_and_scores(tiny, rate, mode):
    _, model, train = build(tiny, missing_rate=rate, missing_mode=mode)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    batch = next(iter(train))
    for _ in range(3):  # the second and third epoch starts generate (when anything can be generated)
        loss = optimizer_step(model, optimizer, batch)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    full, _ = both_scores(model)
    assert torch.isfinite(full).all()
    assert all(torch.isfinite(f).all() for f in model.features)


def test_trains_and_evaluates_through_recbole(tiny):
    result = run_recbole("DGMRec", "tiny", config_dict={**tiny, "epochs": 2, "missing_rate": 0.5}, saved=False)
    assert result["model"] == "DGMRec" and result["epochs_trained"] == 2
    assert 0.0 < result["test_result"]["recall@20"] <= 1.0


def test_needs_two_modalities(tiny):
    with pytest.raises(ValueError, match=r"DGMRec needs item modalities"):
        build({**tiny, "modalities": {}})
    with pytest.raises(ValueError, match=r"at least two; the dataset declares \['v'\]"):
        build({**tiny, "modalities": {"v": tiny["modalities"]["v"]}})


# --- missing modalities -------------------------------------------------------------


def test_the_item_graph_links_observed_items_only(tiny):
    _, model, _ = build(tiny, missing_rate=0.5)
    for m, adj in enumerate(model.mm_adj):
        rows, cols = adj.indices()
        missing = ~model.observed[:, m]
        assert torch.equal(rows[missing[rows]], cols[missing[rows]])  # a missing item: its self-loop only
        assert not missing[cols[~missing[rows]]].any()  # nobody's neighbour
        assert torch.isfinite(adj.values()).all() and (adj.values() >= 0).all()


def test_the_generator_fills_a_missing_modality_from_the_observed_ones(tiny):
    _, model, _ = build(tiny, missing_rate=0.6, missing_mode="item")
    item, t, v = one_missing(model, missing="t", present="v")
    before = model.generate_features()[t][item].clone()

    with torch.no_grad():
        model.features[v][item] = model.features[v][item].flip(0)  # another cluster's observed v row
    after = model.generate_features()[t][item]
    assert not torch.allclose(before, after)

    # the epoch starts write generated rows, from the second epoch on, and only those
    original = [f.detach().clone() for f in model.features]
    model.train()
    model.start_epoch()  # first epoch: nothing generated yet
    assert all(torch.equal(f, o) for f, o in zip(model.features, original))
    model.start_epoch()
    generated = model.generate_features()
    nothing = ~model.observed.any(dim=1)
    assert nothing[1:].any()  # some items miss every modality (row 0 is padding)
    for m, (f, o) in enumerate(zip(model.features, original)):
        rows = model.generated[:, m]
        assert rows.any()
        assert not torch.allclose(f[rows], o[rows])
        assert torch.equal(f[~rows], o[~rows])  # observed rows and rows with nothing to generate from
    # written values are the generator's (generation is deterministic outside training losses)
    fill = model.generate_features()
    model.fill_missing()
    for m, f in enumerate(model.features):
        rows = model.generated[:, m]
        torch.testing.assert_close(f[rows], fill[m][rows])
    assert len(generated) == model.n_modalities


def test_the_refreshed_graph_and_generated_rows_travel_with_the_checkpoint(tiny):
    _, model, _ = build(tiny, missing_rate=0.5, graph_refresh_step=1)
    v = model.modality_names.index("v")
    initial = model.mm_adj[v].coalesce()
    model.train()
    model.start_epoch()
    model.start_epoch()  # generates and refreshes the rows of generated items
    refreshed = model.mm_adj[v]
    assert refreshed._nnz() > initial._nnz()
    rows = refreshed.indices()[0]
    assert (torch.bincount(rows, minlength=model.n_items)[model.generated[:, v]] > 1).all()

    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "other_parameter": model.other_parameter()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    _, fresh, _ = build(tiny, missing_rate=0.5, graph_refresh_step=1)
    fresh.load_state_dict(saved["state_dict"])
    fresh.load_other_parameter(saved["other_parameter"])
    model.eval()
    fresh.eval()
    torch.testing.assert_close(both_scores(fresh)[0], both_scores(model)[0])
    assert fresh.epochs_started == 2


def without_training_interactions(root, item=0):
    """The planted dataset of conftest with every training interaction of ``item`` moved to test."""
    splits, clusters = planted_interactions()
    moved = [(u, i) for u, i in splits["train"] if i == item]
    assert moved
    splits["train"] = [(u, i) for u, i in splits["train"] if i != item]
    splits["test"] += moved
    rng = np.random.default_rng(1)
    v = np.eye(4, dtype=np.float32)[clusters] + 0.01 * rng.standard_normal((40, 4)).astype(np.float32)
    t = np.eye(4, dtype=np.float32)[clusters] + 0.05 * rng.standard_normal((40, 4)).astype(np.float32)
    return write_benchmark(root, "cold", splits, {"v": (v, None), "t": (t, None)})


def test_an_item_without_training_interactions_is_scored_from_its_content(tmp_path):
    _, model, train = build(without_training_interactions(tmp_path / "data"), dataset="cold")
    item = int(train._dataset.token2id(train._dataset.iid_field, "0"))
    assert item not in set(train._dataset.inter_feat[train._dataset.iid_field].tolist())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = next(iter(train))
    for _ in range(2):
        optimizer_step(model, optimizer, batch)
    model.eval()
    before, _ = both_scores(model)
    assert torch.isfinite(before[:, item]).all()

    with torch.no_grad():
        for f in model.features:
            f[item] = f[item].flip(0)  # another cluster's content
    model.train()
    model.eval()  # clears the cached scores
    after, _ = both_scores(model)
    assert not torch.allclose(before[:, item], after[:, item], atol=1e-4)
    others = torch.ones(model.n_items, dtype=torch.bool)
    others[item] = False
    # other items move too (the item is their kNN neighbour), but less than the item itself
    assert (after[:, item] - before[:, item]).abs().mean() > (after[:, others] - before[:, others]).abs().mean()


# --- content that predicts interactions -----------------------------------------


def planted_sparse_two_modalities(root, n_users=400, n_items=1600, n_clusters=8, n_train=2, seed=0):
    r"""Users like items of cluster ``u % n_clusters``; both modalities = cluster one-hot + noise.

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
    modalities = {}
    for name, noise in (("v", 0.1), ("t", 0.2)):
        features = np.hstack([np.eye(n_clusters, dtype=np.float32)[clusters], np.zeros((n_items, 8), np.float32)])
        features += noise * rng.standard_normal(features.shape).astype(np.float32)
        modalities[name] = (features, list(range(n_items)))  # keyed: items no split mentions are left out
    return write_benchmark(root, "plant2", splits, modalities)


def test_predictive_content_beats_lightgcn(tmp_path):
    settings = planted_sparse_two_modalities(tmp_path / "data")
    common = {
        **settings,
        "epochs": 20,  # DGMRec's sigmoid encoders need about ten epochs before content ranks
        "eval_step": 20,  # validate once, after the last epoch
        "learning_rate": 0.01,  # the same for both models
        "train_batch_size": 256,
        "eval_batch_size": 1 << 20,
        "missing_rate": 0.3,  # some rows are generated
    }
    with_content = run_recbole("DGMRec", "plant2", config_dict=common, saved=False)["test_result"]["recall@20"]
    ids_only = run_recbole("LightGCN", "plant2", config_dict={**common, "n_layers": 3}, saved=False)
    ids_only = ids_only["test_result"]["recall@20"]
    # random ranking: ~20 / 1566 = 0.013
    assert with_content > ids_only + 0.02, (with_content, ids_only)


# --- search space -----------------------------------------------------------------


def test_shipped_search_space_names_dgmrec_settings(tiny):
    params = tuning.read_params_file(REPO / "properties" / "hyper" / "DGMRec.hyper")
    assert params["n_mm_layers"] == ("choice", [1, 2])
    assert params["graph_blend"] == ("choice", [0.4, 0.8])
    config = tuning.check_settings("DGMRec", "tiny", list(params), "DGMRec.hyper", config_dict=tiny)
    assert all(name in config.final_config_dict for name in params)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"graph_blend": 1.5}, r"graph_blend .* must be in \[0, 1\], got 1.5"),
        ({"graph_refresh_step": -1}, r"graph_refresh_step must be an integer >= 0"),
        ({"ui_align_temperature": 0.0}, r"ui_align_temperature must be > 0"),
    ],
)
def test_bad_settings_are_refused(tiny, setting, message):
    with pytest.raises(ValueError, match=message):
        build(tiny, **setting)
