"""The new-item setting: which items lose their training interactions, what is kept, content scoring
of items without training interactions, and Recall@20 within cold and warm items."""

import inspect

import numpy as np
import pytest
import torch
import yaml
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from conftest import write_benchmark
from recbole_ci2mg.data.new_items import (
    POPULARITY_BINS,
    draw_new_items,
    load_new_items,
    popularity_bins,
    save_new_items,
)
from recbole_ci2mg import compare
from recbole_ci2mg.quick_start import build_config, create_dataset, run_recbole
from recbole_ci2mg.registry import PLUGIN_MODELS, get_model
from recbole_ci2mg.results import ResultsFileError, append_record, check_record, read_records
from recbole_ci2mg.tables import markdown, summarise, write_tables
from recbole_ci2mg.trainer import get_trainer, segment_hits, segment_recall


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors on shared cores: extra torch threads only wait on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def splits_of(settings, model="LightGCN", **overrides):
    """The config and the train, valid and test datasets RecBole builds for ``settings``."""
    config = build_config(model, "tiny", config_dict={**settings, **overrides})
    train, valid, test = data_preparation(config, create_dataset(config))
    return config, train._dataset, valid._dataset, test._dataset


def pairs(dataset):
    """A split's interactions as a sorted list of raw (user, item) tokens."""
    users = dataset.id2token(dataset.uid_field, dataset.inter_feat[dataset.uid_field].numpy())
    items = dataset.id2token(dataset.iid_field, dataset.inter_feat[dataset.iid_field].numpy())
    return sorted(zip(users.tolist(), items.tolist()))


def new_tokens(dataset):
    return set(dataset.id2token(dataset.iid_field, np.flatnonzero(dataset.new_items.numpy())).tolist())


# --- the dataset layer ------------------------------------------------------------


def test_new_items_lose_every_training_interaction_and_keep_valid_and_test(tiny):
    _, train0, valid0, test0 = splits_of(tiny)
    _, train, valid, test = splits_of(tiny, new_item_rate=0.25)
    new = new_tokens(train)
    assert len(new) == 10  # 25% of the 40 items, all with training interactions
    assert not train0.new_items.any() and not train0.cold_items.any()
    # exactly the new items' training rows are gone; the rest of training is untouched
    assert pairs(train) == [p for p in pairs(train0) if p[1] not in new]
    assert {item for _, item in pairs(train0)} >= new
    assert pairs(valid) == pairs(valid0) and pairs(test) == pairs(test0)
    assert any(item in new for _, item in pairs(test))  # the new items are evaluated
    # cold = no training interaction left, padding excluded; every split dataset sees the same
    assert new_tokens(test) == new
    assert set(train.id2token(train.iid_field, np.flatnonzero(train.cold_items.numpy())).tolist()) == new
    # what models build their graphs from has no edge to a new item
    degree = np.asarray(train.inter_matrix(form="csr").sum(axis=0)).ravel()
    assert (degree[train.new_items.numpy()] == 0).all() and (degree[1:][~train.new_items.numpy()[1:]] > 0).all()


def test_new_items_are_still_rankable_for_their_test_users(tiny):
    config = build_config("LightGCN", "tiny", config_dict={**tiny, "new_item_rate": 0.25})
    train, valid, test = data_preparation(config, create_dataset(config))
    new = train._dataset.new_items.numpy()
    known = {}  # user -> items RecBole should exclude at test: its training (after removal) and valid items
    for split in (train._dataset, valid._dataset):
        for u, i in zip(split.inter_feat["user_id"].tolist(), split.inter_feat["item_id"].tolist()):
            known.setdefault(u, set()).add(i)
    checked_new = 0
    for interaction, history_index, positive_u, positive_i in test:
        users = interaction["user_id"].tolist()
        excluded = torch.zeros(len(users), train._dataset.item_num, dtype=torch.bool)
        excluded[history_index] = True
        for row, u in enumerate(users):
            assert set(excluded[row].nonzero().flatten().tolist()) == known[u]
        assert not excluded[positive_u, positive_i].any()
        checked_new += int(new[positive_i.numpy()].sum())
    assert checked_new > 0  # test positives that are new items, each rankable for its user


def test_the_same_seed_draws_the_same_items_and_another_seed_others(tiny):
    one = new_tokens(splits_of(tiny, new_item_rate=0.25, new_item_seed=5, seed=1)[1])
    two = new_tokens(splits_of(tiny, new_item_rate=0.25, new_item_seed=5, seed=2, missing_rate=0.5)[1])
    other = new_tokens(splits_of(tiny, new_item_rate=0.25, new_item_seed=6, seed=1)[1])
    assert one == two  # not the training seed, not the mask
    assert one != other


def test_the_draw_does_not_depend_on_the_order_of_the_items():
    rng = np.random.default_rng(0)
    tokens = [f"i{n}" for n in range(300)]
    degree = rng.integers(0, 50, 300)
    drawn = draw_new_items(tokens, degree, 0.3, 7)
    order = rng.permutation(300)
    shuffled = draw_new_items([tokens[i] for i in order], degree[order], 0.3, 7)
    assert {t for t, d in zip(tokens, drawn) if d} == {tokens[i] for i, d in zip(order, shuffled) if d}


def test_the_draw_takes_the_same_share_of_every_popularity_bin():
    rng = np.random.default_rng(1)
    n = 2000
    degree = np.maximum(rng.zipf(1.8, n), 1).clip(max=5000)  # a long tail, as in real data
    degree[:100] = 0  # items with no training interaction: never drawn
    tokens = [str(i) for i in range(n)]
    new = draw_new_items(tokens, degree, 0.2, 3)
    assert not new[:100].any()
    assert new.sum() == round(0.2 * 1900)
    bins = popularity_bins(tokens, degree)
    assert len(bins) == POPULARITY_BINS
    for part in bins:  # 190 items per bin: 38 drawn from each, the most and the least popular alike
        assert abs(new[part].sum() - 0.2 * len(part)) <= 1, (new[part].sum(), len(part))
    assert degree[bins[0]].max() <= degree[bins[-1]].min()


def test_the_draw_is_saved_and_a_later_run_checks_it(tiny):
    _, train, _, _ = splits_of(tiny, new_item_rate=0.25, new_item_seed=3)
    dataset_folder = f"{tiny['data_path']}/tiny"
    path = f"{dataset_folder}/masks/tiny.new-items-rate0.25-seed3.items"
    saved = load_new_items(path)
    assert set(saved) == new_tokens(train) and all(d > 0 for d in saved.values())
    assert new_tokens(splits_of(tiny, new_item_rate=0.25, new_item_seed=3)[1]) == set(saved)  # reloads
    # a file that lists other items (the training split changed since, or an edit) stops the run
    tokens = sorted(saved)
    save_new_items(path, tokens[1:] + ["not-drawn"], [1] * len(tokens))
    with pytest.raises(ValueError, match=r"tiny\.new-items-rate0\.25-seed3\.items lists 10 items.*Delete it"):
        splits_of(tiny, new_item_rate=0.25, new_item_seed=3)


@pytest.mark.parametrize("rate", [-0.1, 1.0, "some"])
def test_a_bad_new_item_rate_is_refused(tiny, rate):
    with pytest.raises(ValueError, match="new_item_rate"):
        splits_of(tiny, new_item_rate=rate)


# --- every content model scores items without training interactions ---------------


def content_models():
    """The plugin models that read item features: those that (or whose parent) call ``require_modalities``."""
    return [
        name for name, cls in PLUGIN_MODELS.items()
        if any("require_modalities(" in inspect.getsource(base)
               for base in cls.__mro__ if base.__module__.startswith("recbole_ci2mg"))
    ]


# Models whose scores read no content: content enters only their training losses.
SCORES_WITHOUT_CONTENT = {
    "BM3": "BM3 (as its paper designs it) scores with the ID encoder only; content shapes the "
           "training losses, so an item without training interactions keeps its initial ID embedding",
}


def content_scorers():
    """:func:`content_models`, those of :data:`SCORES_WITHOUT_CONTENT` as strict expected failures."""
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=SCORES_WITHOUT_CONTENT[name]))
        if name in SCORES_WITHOUT_CONTENT else name
        for name in content_models()
    ]


def model_on(name, settings, **overrides):
    """A fresh, seeded model on the training split at ``new_item_rate`` 0.3, its config and training loader."""
    config = build_config(name, "tiny", config_dict={**settings, "new_item_rate": 0.3, **overrides})
    train, _, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    return get_model(name)(config, train._dataset), config, train


def all_scores(model):
    model.eval()
    with torch.no_grad():
        users = Interaction({model.USER_ID: torch.arange(1, model.n_users)})
        return model.full_sort_predict(users).view(model.n_users - 1, -1)


@pytest.mark.parametrize("name", content_scorers())
def test_content_models_score_new_items_from_their_content(tiny, name):
    model, config, train = model_on(name, tiny)
    dataset = train._dataset
    new = dataset.new_items
    assert new.sum() == 12
    scores = all_scores(model)
    assert torch.isfinite(scores).all()
    # no constant fallback: the new items' scores differ between items, for every user
    assert (scores[:, new].std(dim=1) > 1e-6).all()
    # and they come from content: the same model (same seed) with other content for the new items scores them otherwise
    rows = new.nonzero().flatten()
    for modality in dataset.modality_names:
        features = dataset.modality_features[modality]  # shared by the split datasets of this run only
        features[rows] = features[rows.flip(0)] + 1.0
    init_seed(config["seed"], config["reproducibility"])
    other = all_scores(get_model(name)(config, dataset))
    assert torch.isfinite(other).all()
    assert not torch.allclose(other[:, new], scores[:, new])
    # training on a split where some items have no edge stays finite
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for batch, _ in zip(train, range(2)):
        model.train()
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(all_scores(model)).all()


@pytest.mark.parametrize("name", content_models())
def test_content_models_stay_finite_for_users_left_without_training_interactions(tiny, name):
    model, _, train = model_on(name, tiny, new_item_rate=0.9)
    dataset = train._dataset
    users_left = np.bincount(dataset.inter_feat[dataset.uid_field].numpy(), minlength=dataset.user_num)[1:]
    assert (users_left == 0).sum() >= 5  # users whose every training item became new
    model.train()
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(all_scores(model)).all()


def test_the_registry_has_content_models():
    assert {"VBPR", "FREEDOM", "CI2MG"} <= set(content_models()) and "HCCF" not in content_models()


# --- Recall@20 within cold and warm items -----------------------------------------


def test_segment_recall_on_a_hand_made_case():
    # 3 users, 6 items (0 = padding); items 4 and 5 are cold
    scores = torch.tensor([
        [-np.inf, 0.9, 0.1, 0.8, 0.7, 0.0],  # top 2: 1, 3
        [-np.inf, 0.1, 0.2, 0.3, 0.9, 0.8],  # top 2: 4, 5
        [-np.inf, 0.5, 0.6, 0.1, 0.2, 0.3],  # top 2: 2, 1
    ])
    positive_u = torch.tensor([0, 0, 0, 1, 1, 2])
    positive_i = torch.tensor([1, 4, 5, 4, 2, 2])
    cold = torch.tensor([False, False, False, False, True, True])
    hits, positives = segment_hits(scores, positive_u, positive_i, cold, k=2)
    assert positives.tolist() == [[2, 1], [1, 1], [0, 1]]  # [cold, warm] positives per user
    per_user, summary = segment_recall(hits, positives, topk=[1, 2])
    # user 0: cold positives 4, 5, neither in its top 2; warm positive 1 is its top 1
    # user 1: cold 4 is its top 1; warm 2 is not in its top 2; user 2: no cold positive, warm 2 at 1
    np.testing.assert_allclose(per_user["cold_recall@2"], [0.0, 1.0, np.nan])
    np.testing.assert_allclose(per_user["warm_recall@2"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(per_user["cold_recall@1"], [0.0, 1.0, np.nan])
    assert summary["cold"] == {"users": 2, "interactions": 3, "recall@1": 0.5, "recall@2": 0.5}
    assert summary["warm"] == {"users": 3, "interactions": 3, "recall@1": 2 / 3, "recall@2": 2 / 3}


def test_segment_recall_with_no_cold_positive_is_none():
    scores = torch.tensor([[-np.inf, 0.2, 0.1]])
    hits, positives = segment_hits(scores, torch.tensor([0]), torch.tensor([1]), torch.zeros(3, dtype=torch.bool), 1)
    _, summary = segment_recall(hits, positives, topk=[1])
    assert summary["cold"] == {"users": 0, "interactions": 0, "recall@1": None}
    assert summary["warm"]["recall@1"] == 1.0


def test_a_run_reports_recall_within_cold_and_warm_items(tiny):
    result = run_recbole("BPR", "tiny", config_dict={**tiny, "epochs": 1, "new_item_rate": 0.25}, saved=False)
    test = result["test_result"]
    per_user, segments = test.per_user, test.segments
    _, train, _, test_split = splits_of(tiny, new_item_rate=0.25)
    cold_items = train.cold_items.numpy()[test_split.inter_feat[test_split.iid_field].numpy()]
    assert segments["cold"]["interactions"] == cold_items.sum() > 0
    assert segments["warm"]["interactions"] == (~cold_items).sum()
    # each test user has one test item here: its segment's recall is its Recall@20, the other is NaN
    cold, warm = per_user["cold_recall@20"], per_user["warm_recall@20"]
    assert (np.isnan(cold) != np.isnan(warm)).all()
    np.testing.assert_allclose(np.where(np.isnan(cold), warm, cold), per_user["recall@20"])
    assert segments["cold"]["recall@20"] == pytest.approx(np.nanmean(cold))
    assert segments["cold"]["users"] == int((~np.isnan(cold)).sum())


# --- content ranks a planted new item -----------------------------------------------


def planted_new_items(root, n_clusters=8, items_per_cluster=30, users_per_cluster=15, n_train=6, seed=0):
    r"""Users like items of their cluster; modalities ``v`` and ``t`` are the cluster one-hot plus noise.

    (Two modalities, so that models that generate one from another, DGMRec, run too.)

    Every user has a test item; the new-item draw then leaves about a fifth of
    them without training interactions, and only content can place those.
    """
    rng = np.random.default_rng(seed)
    n_items = n_clusters * items_per_cluster
    clusters = np.arange(n_items) % n_clusters
    splits = {"train": [], "valid": [], "test": []}
    for u in range(n_clusters * users_per_cluster):
        liked = rng.choice(np.flatnonzero(clusters == u % n_clusters), size=n_train + 2, replace=False)
        splits["train"] += [(u, i) for i in liked[:n_train]]
        splits["valid"].append((u, liked[n_train]))
        splits["test"].append((u, liked[n_train + 1]))
    v = np.eye(n_clusters)[clusters] + 0.1 * rng.standard_normal((n_items, n_clusters))
    t = np.eye(n_clusters)[clusters] + 0.1 * rng.standard_normal((n_items, n_clusters))
    keys = list(range(n_items))  # items in no split are left out by RecBole
    modalities = {"v": (v.astype(np.float32), keys), "t": (t.astype(np.float32), keys)}
    return write_benchmark(root, "tiny", splits, modalities), n_items


def trained_on_planted(root, name):
    """``name`` trained on :func:`planted_new_items` at ``new_item_rate`` 0.2, and its test loader."""
    settings, _ = planted_new_items(root)
    config = build_config(name, "tiny", config_dict={
        **settings, "new_item_rate": 0.2, "epochs": 15, "learning_rate": 0.01, "train_batch_size": 256,
        "stopping_step": 100,
    })
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(name)(config, train._dataset)
    get_trainer(config["MODEL_TYPE"], config["model"])(config, model).fit(train, valid, verbose=False, saved=False)
    return model, test


def new_item_ranks(model, test):
    r"""Where each test interaction with a new item ranks its item, as the fraction of items scored below it.

    Returns:
        tuple: mean fraction among every item RecBole ranks for the user, and
        among the other new items only (where IDs, trained on nothing, cannot
        tell items apart: ~0.5 without content).
    """
    new = test._dataset.new_items
    among_all, among_new = [], []
    model.eval()
    with torch.no_grad():
        for interaction, history_index, positive_u, positive_i in test:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            scores[:, 0] = -np.inf
            scores[history_index] = -np.inf
            for row, item in zip(positive_u.tolist(), positive_i.tolist()):
                if new[item]:
                    ranked = torch.isfinite(scores[row])
                    others = ranked & new
                    others[item] = False
                    among_all.append(float((scores[row][ranked] < scores[row, item]).float().mean()))
                    among_new.append(float((scores[row][others] < scores[row, item]).float().mean()))
    assert len(among_all) >= 15
    return np.mean(among_all), np.mean(among_new)


@pytest.mark.parametrize("name", content_scorers())
def test_content_models_rank_planted_new_items_above_random(tmp_path, name):
    among_all, among_new = new_item_ranks(*trained_on_planted(tmp_path / "data", name))
    # random: 0.5 for both. Without new items kept out of the training negatives VBPR fell to 0.43 among all items.
    assert among_all > 0.6 and among_new > 0.65, (among_all, among_new)


def test_an_id_only_model_cannot_order_the_new_items(tmp_path):
    _, among_new = new_item_ranks(*trained_on_planted(tmp_path / "data", "LightGCN"))
    assert among_new < 0.6  # the measure above is not met without content


def test_new_items_are_never_training_negatives(tiny):
    config = build_config("LightGCN", "tiny", config_dict={**tiny, "new_item_rate": 0.25})
    loader = data_preparation(config, create_dataset(config))[0]
    new = loader._dataset.new_items
    negatives = torch.cat([batch[loader.neg_item_id] for _ in range(5) for batch in loader])
    assert not new[negatives].any()
    assert len(set(negatives.tolist())) == 30  # every other item is drawn
    config0 = build_config("LightGCN", "tiny", config_dict=tiny)
    loader0 = data_preparation(config0, create_dataset(config0))[0]
    negatives0 = torch.cat([batch[loader0.neg_item_id] for _ in range(5) for batch in loader0])
    assert len(set(negatives0.tolist())) == 40  # without new items, RecBole's own draw over every item


# --- records and tables -----------------------------------------------------------


def record(model, seed, recall, cold=None, warm=None):
    out = {"dataset": "d", "model": model, "seed": seed, "missing_rate": 0.0,
           "test": {"recall@20": recall, "ndcg@20": recall, "precision@20": recall}, "best_epoch": 1}
    if cold is not None:
        out["test_segments"] = {"cold": {"users": 4, "interactions": 5, "recall@20": cold},
                                "warm": {"users": 9, "interactions": 9, "recall@20": warm}}
    return out


def test_tables_show_recall_within_cold_and_warm_items_and_older_records_render():
    records = [record("A", 1, 0.1, 0.02, 0.2), record("A", 2, 0.2, 0.04, 0.3), record("Old", 1, 0.3)]
    lines = markdown(summarise(records)).splitlines()
    assert "Recall@20 cold items (%) | Recall@20 warm items (%) |" in lines[2]
    assert lines[4].startswith("| 0 | A | 1, 2 | 15.00 ± 7.07 | 15.00 ± 7.07 | 15.00 ± 7.07 | "
                               "**3.00 ± 1.41** | **25.00 ± 7.07** |")
    assert lines[5].startswith("| 0 | Old | 1 | **30.00** | **30.00** | **30.00** | n/a | n/a |")
    assert any("Recall@20 cold items: test Recall@20 within" in line and "4 users, 5 interactions" in line
               for line in lines)
    old_only = markdown(summarise([record("Old", 1, 0.3)]))
    assert "cold" not in old_only  # no breakdown recorded: the table is as before
    no_cold = record("A", 1, 0.1, 0.0, 0.1)
    no_cold["test_segments"]["cold"] = {"users": 0, "interactions": 0, "recall@20": None}
    assert "cold" not in markdown(summarise([no_cold]))  # nothing to break down


def test_a_record_with_malformed_segments_is_refused():
    check_record(record("A", 1, 0.1, None), "f, line 1")
    check_record({**record("A", 1, 0.1, 0.1, 0.2), "test_segments": {"cold": {"users": 0, "interactions": 0,
                                                                              "recall@20": None}}}, "f, line 1")
    bad = {**record("A", 1, 0.1), "test_segments": {"cold": {"recall@20": "high"}}}
    with pytest.raises(ResultsFileError, match=r"f, line 1: test_segments is"):
        check_record(bad, "f, line 1")


def test_a_comparison_records_the_breakdown_and_tabulates_it(tiny, tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny))
    results = tmp_path / "out" / "runs.jsonl"
    (run,) = compare.plan_runs("tiny", ["BPR"], [2020], [0.0], overrides={"new_item_rate": 0.25, "epochs": 1},
                               config_files=[str(config_file)])
    record = compare.train(run, results)
    check_record(record, "the record")
    segments = record["test_segments"]
    assert segments["cold"]["interactions"] > 0 and segments["warm"]["users"] > 0
    assert record["data_fingerprint"]["new items"] == "drawn: new_item_rate 0.25, new_item_seed 2024"
    append_record(results, record)
    text, _ = write_tables(read_records(results), tmp_path / "out" / "table", results)
    row = next(line for line in text.splitlines() if line.startswith("| 0 | BPR"))
    cold = 100 * segments["cold"]["recall@20"]
    assert f"| {cold:.2f} |" in row or f"| **{cold:.2f}** |" in row
