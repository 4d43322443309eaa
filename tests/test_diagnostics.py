"""The diagnosis readings of a trained CI²MG-family model (recbole_ci2mg.diagnostics)."""

import json
import math

import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_ci2mg import diagnostics
from recbole_ci2mg.model.layers.transport import BlockDiagonalPlan, DensePlan
from recbole_ci2mg.quick_start import build_config, create_dataset, run_recbole
from recbole_ci2mg.registry import get_model
from recbole_ci2mg.trainer import get_trainer


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def built(settings, model="CI2MG", **overrides):
    config = build_config(model, "tiny", config_dict={"n_prototypes": 4, "ot_block_size": 16, **settings, **overrides})
    init_seed(config["seed"], True)
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model(model)(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return model, trainer, train, valid


def test_score_shares_separate_a_personal_block_from_an_item_prior():
    torch.manual_seed(0)
    users, items, d = 50, 30, 4
    user_e = torch.randn(users, 2 * d)
    item_e = torch.randn(items, 2 * d)
    user_e[:, d:] = torch.randn(d)  # the second block: one user vector for everyone, a pure item prior
    parts = {"id": slice(0, d), "m": slice(d, 2 * d)}
    shares = diagnostics.score_shares(user_e, item_e, parts, torch.arange(users))
    assert shares["m"]["item_prior"] == pytest.approx(1.0)
    assert shares["id"]["item_prior"] < 0.2
    # a block of zeros has no share; the other then carries all of it
    item_e[:, d:] = 0
    shares = diagnostics.score_shares(user_e, item_e, parts, torch.arange(users))
    assert shares["m"]["share"] == 0 and shares["id"]["share"] == pytest.approx(1.0)
    assert shares["m"]["item_prior"] is None


def test_cold_item_readings_count_the_top_slots_cold_items_take_outside_training_items():
    import scipy.sparse as sp

    # 3 users, items 0 (padding) .. 5; items 4 and 5 are cold; 1-d embeddings, so a score is a product
    user_e = torch.tensor([[1.0], [1.0], [-1.0]])
    item_e = torch.tensor([[0.0], [5.0], [4.0], [1.0], [3.0], [0.5]])
    cold = torch.tensor([False, False, False, False, True, True])
    train = sp.csr_matrix(([1.0, 1.0], ([0, 1], [1, 2])), shape=(3, 6))  # user 0 saw item 1, user 1 item 2
    out = diagnostics.cold_item_readings(user_e, item_e, cold, train, torch.arange(3), k=2)
    # top 2, training items left out: user 0 -> 2, 4; user 1 -> 1, 4; user 2 (scores negated) -> 5, 3
    assert out["top_k_share"] == pytest.approx(3 / 6)
    assert out["norm"] == {"cold": pytest.approx(1.75), "warm": pytest.approx(10 / 3)}
    assert out["catalogue_share"] == pytest.approx(2 / 5)


def test_plan_row_entropy_is_one_for_a_uniform_plan_and_lower_for_a_peaked_one():
    n = 6
    assert diagnostics.plan_row_entropy(DensePlan(torch.full((n, n), 1.0 / n))) == pytest.approx(1.0)
    peaked = torch.eye(n) * 0.9 + 0.1 / n
    assert diagnostics.plan_row_entropy(DensePlan(peaked)) < 0.5
    blocks = torch.arange(8).view(2, 4)
    uniform = BlockDiagonalPlan(8, [(blocks, torch.ones(2, 4, 4), torch.ones(2, 4), torch.ones(2, 4))])
    assert diagnostics.plan_row_entropy(uniform) == pytest.approx(1.0)


def test_block_recall_of_every_block_is_the_models_validation_score(tiny):
    model, trainer, _, valid = built(tiny)
    full = float(trainer.evaluate(valid, load_best_model=False)["recall@20"])
    parts = diagnostics.blocks(model)
    assert list(parts) == ["id", "v", "t"]
    assert diagnostics.block_recall(trainer, model, valid, parts) == pytest.approx(full)
    id_only = diagnostics.block_recall(trainer, model, valid, ["id"])
    assert model.restore_user_e is None and model.restore_item_e is None  # no cached scores left behind
    assert 0 <= id_only <= 1


def test_eq1_readings_count_users_whose_items_all_miss_a_modality(tiny):
    model, *_ = built(tiny, missing_rate=0.0)
    complete = diagnostics.eq1_readings(model)
    assert complete["v"]["users_without_content"] == 0
    assert 0 < complete["v"]["variance_kept"] < 2
    model, *_ = built(tiny, missing_rate=1.0)
    nothing = diagnostics.eq1_readings(model)["v"]
    assert nothing["users_without_content"] == pytest.approx(1.0)
    assert nothing["variance_kept"] is None  # every row projects to the bias: nothing to keep


def test_transport_readings_restore_the_partition_and_see_a_redrawn_one(tiny):
    model, *_ = built(tiny)
    before = model.transport.block_order.clone()
    readings = diagnostics.transport_readings(model)
    assert torch.equal(model.transport.block_order, before)
    assert set(readings) == {"v->t", "t->v"}
    for reading in readings.values():
        assert 0 < reading["row_entropy"] <= 1 + 1e-6
        assert reading["q_hat_change"] > 0 and reading["to_uniform"] >= 0


def test_contrastive_reading_gives_the_chance_level_of_the_batch(tiny):
    model, _, train, _ = built(tiny)
    batch = next(iter(train))
    reading = diagnostics.contrastive_reading(model, batch)
    n = len(torch.unique(batch[model.ITEM_ID]))
    assert set(reading) == {"v", "t"}
    assert all(r["chance"] == pytest.approx(math.log(n)) and math.isfinite(r["loss"]) for r in reading.values())


def test_the_command_reads_a_checkpoint_written_by_a_run(tiny, tmp_path):
    result = run_recbole("CI2MG", "tiny", config_dict={**tiny, "n_prototypes": 4, "epochs": 1, "missing_rate": 0.5})
    out = tmp_path / "readings.jsonl"
    diagnostics.main([result["saved_model_file"], "--users", "20", "--out", str(out)])
    reading = json.loads(out.read_text())
    assert reading["model"] == "CI2MG" and reading["missing_rate"] == 0.5
    assert reading["valid_recall@20"]["all"] == pytest.approx(result["best_valid_result"]["recall@20"])
    assert {"score_shares", "eq1", "transport", "contrastive"} <= set(reading)


def test_the_command_reads_a_ci2mg_s_checkpoint_without_a_generation_branch(tiny, tmp_path):
    # CI2MG-S with its defaults' graphs does not run Eq. 1-12 (no plans to read); new items give it cold items;
    # with item_graph_mix learned the graphs' trained weights are read too
    result = run_recbole("CI2MG-S", "tiny", config_dict={**tiny, "epochs": 1, "missing_rate": 0.5, "new_item_rate": 0.2,
                                                         "item_graph_mix": "learned"})
    out = tmp_path / "readings.jsonl"
    diagnostics.main([result["saved_model_file"], "--users", "20", "--out", str(out)])
    reading = json.loads(out.read_text())
    assert reading["model"] == "CI2MGS" and "transport" not in reading and "contrastive" not in reading
    cold = reading["cold_items"]
    assert 0 < cold["catalogue_share"] < 1 and 0 <= cold["top_k_share"] <= 1
    assert cold["norm"]["cold"] >= 0 and cold["norm"]["warm"] > 0
    weights = reading["item_graph_weights"]
    assert list(weights) == ["v", "t", "interactions"] and sum(weights.values()) == pytest.approx(1)
