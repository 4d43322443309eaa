"""Comparison runs: resumable records, per-user scores, Wilcoxon tests, tables and plots."""

import contextlib
import json
import re
import runpy
import sys

import numpy as np
import pytest
import torch
import yaml
from recbole.data import data_preparation
from recbole.model.general_recommender import BPR
from scipy.stats import ttest_ind, ttest_rel, wilcoxon

from conftest import REPO, planted_interactions, write_benchmark
from recbole_ci2mg import compare
from recbole_ci2mg.model.ci2mg import SWITCHES
from recbole_ci2mg.quick_start import build_config, create_dataset
from recbole_ci2mg.trainer import get_trainer
from recbole_ci2mg.results import append_record, load_per_user, read_records, record_key, save_per_user
from recbole_ci2mg.tables import markdown, paired_seed_ttest, paired_wilcoxon, pooled_scores, summarise

SWEEP_ARGS = ["--model=BPR,LightGCN-M", "--dataset=tiny", "--seeds=2020,2021", "--missing_rates=0,0.5",
              "--epochs=1", "--results=out/runs.jsonl", "--table=out/table"]
OLD_RECORDS = REPO / "benchmarks" / "results" / "tiktok_missing0.9.jsonl"


@contextlib.contextmanager
def counting_runs(monkeypatch):
    """Every call of the training function, as (model, seed, missing rate)."""
    calls, real = [], compare.run_recbole

    def run_recbole(model, dataset, **kwargs):
        calls.append((model, kwargs["config_dict"]["seed"], kwargs["config_dict"]["missing_rate"]))
        return real(model, dataset, **kwargs)

    monkeypatch.setattr(compare, "run_recbole", run_recbole)
    yield calls


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    r"""BPR and LightGCN-M × seeds 2020, 2021 × missing rates 0, 0.5, one epoch each, run once.

    Returns the folder, the training calls and the command line.
    """
    root = tmp_path_factory.mktemp("sweep")
    splits, clusters = planted_interactions()
    settings = write_benchmark(root / "data", "tiny", splits, {"v": (np.eye(4, dtype=np.float32)[clusters], None)})
    (root / "tiny.yaml").write_text(yaml.safe_dump(settings))
    argv = SWEEP_ARGS + [f"--config_files={root / 'tiny.yaml'}"]
    with pytest.MonkeyPatch.context() as patch, counting_runs(patch) as calls:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["pytest"])
        compare.main(argv)
    return root, list(calls), argv


def test_sweep_trains_every_model_seed_and_rate_once_with_the_overrides(sweep):
    root, calls, _ = sweep
    planned = {(m, s, r) for r in (0.0, 0.5) for m in ("BPR", "LightGCN-M") for s in (2020, 2021)}
    assert len(calls) == 8 and set(calls) == planned
    records = read_records(root / "out" / "runs.jsonl")
    assert {(r["model"], r["seed"], r["missing_rate"]) for r in records} == planned
    assert all(r["overrides"] == {"epochs": 1} and r["epochs_trained"] == 1 for r in records)
    # Every model at a rate reads the one mask of that rate.
    assert (root / "data" / "tiny" / "masks" / "tiny.independent-rate0.5-seed2023.mask").is_file()


def test_rerun_trains_nothing_and_an_interrupted_comparison_resumes(sweep, monkeypatch):
    root, _, argv = sweep
    monkeypatch.chdir(root)
    results = root / "out" / "runs.jsonl"
    with counting_runs(monkeypatch) as calls:
        compare.main(argv)
        assert calls == []

        lines = results.read_text().splitlines()
        results.write_text("\n".join(lines[:-1]) + "\n")  # the last run was cut off
        compare.main(argv)
    lost = json.loads(lines[-1])
    assert calls == [(lost["model"], lost["seed"], lost["missing_rate"])]
    assert len(read_records(results)) == 8


def test_per_user_scores_align_and_average_to_recboles_scores(sweep):
    root, _, _ = sweep
    results = root / "out" / "runs.jsonl"
    records = read_records(results)
    test_users = {str(u) for u in range(60)}  # every planted user has one test item
    for record in records:
        per_user = load_per_user(record, results)
        assert set(per_user["user_id"]) == test_users and len(per_user["user_id"]) == 60
        for metric in ("recall@20", "ndcg@20", "precision@20"):
            # RecBole rounds its means to 4 decimals.
            assert abs(per_user[metric].mean() - record["test"][metric]) <= 5e-5


class Oracle(BPR):
    """Ranks each user's test item first for even raw user ids, last for odd ones."""

    test_item = {}  # internal user id -> internal test item id

    def full_sort_predict(self, interaction):
        users = interaction[self.USER_ID]
        scores = torch.zeros(len(users), self.n_items)
        for row, user in enumerate(users.tolist()):
            even = int(self.raw_user[user]) % 2 == 0
            scores[row, self.test_item[user]] = 1.0 if even else -1.0
        return scores.view(-1)


def test_per_user_scores_belong_to_the_user_they_name(tiny):
    # Seven users per evaluation batch, so the scores of several batches are stacked.
    config = build_config("BPR", "tiny", config_dict={**tiny, "eval_batch_size": 7 * 41})
    train, _, test = data_preparation(config, create_dataset(config))
    model = Oracle(config, train._dataset)
    inter = test._dataset.inter_feat
    model.test_item = dict(zip(inter["user_id"].tolist(), inter["item_id"].tolist()))
    model.raw_user = test._dataset.field2id_token["user_id"]
    trainer = get_trainer(config["MODEL_TYPE"], "BPR")(config, model)
    result = trainer.evaluate(test, load_best_model=False)

    per_user = trainer.per_user_scores
    assert per_user is result.per_user and len(per_user["user_id"]) == 60
    expected = [1.0 if int(user) % 2 == 0 else 0.0 for user in per_user["user_id"]]
    assert per_user["recall@20"].tolist() == expected
    assert result["recall@20"] == 0.5 and result["precision@20"] == round(0.5 / 20, 4)


def test_sweep_tables_hold_mean_std_best_wilcoxon_and_a_plot(sweep):
    root, _, _ = sweep
    results = root / "out" / "runs.jsonl"
    rows = summarise(read_records(results), results)
    assert [(row["missing_rate"], row["label"]) for row in rows] == [
        (0.0, "BPR"), (0.0, "LightGCN-M"), (0.5, "BPR"), (0.5, "LightGCN-M")
    ]
    for row in rows[1::2]:  # LightGCN-M against BPR at the same rate, on seed-averaged per-user Recall@20
        pooled = [
            pooled_scores([load_per_user(r, results) for r in read_records(results)
                           if r["model"] == model and r["missing_rate"] == row["missing_rate"]])
            for model in ("BPR", "LightGCN-M")
        ]
        users = sorted(pooled[0])
        expected = wilcoxon([pooled[0][u] for u in users], [pooled[1][u] for u in users]).pvalue
        assert row["p"] == pytest.approx(expected) and row["n_users"] == 60

    table = (root / "out" / "table.md").read_text()
    assert "| 0.5 | LightGCN-M | 2020, 2021 |" in table and " ± " in table and "**" in table
    assert "two-sided Wilcoxon signed-rank test" in table and "All rows: epochs=1." in table
    csv_lines = (root / "out" / "table.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("dataset,missing_rate,model")
    assert (root / "out" / "table.tex").read_text().count(r"\textbf{") >= 3
    assert (root / "out" / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_wilcoxon_pairs_scores_by_user():
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(40)]
    x = rng.random(40)
    y = x + rng.normal(0.1, 0.1, 40)
    reference = dict(zip(users, x))
    other = dict(zip(users[::-1], y[::-1]))  # stored in another order
    other["only-here"] = 5.0  # a user the reference lacks is left out
    p, n = paired_wilcoxon(reference, other)
    assert n == 40 and p == pytest.approx(wilcoxon(x, y, alternative="two-sided").pvalue) and p < 1e-3
    assert paired_wilcoxon(reference, dict(reference)) == (None, 40)


def test_paired_seed_ttest_pairs_scores_by_seed():
    reference = {2020: 0.10, 2021: 0.12, 2022: 0.11, 2023: 0.13}
    other = {2022: 0.098, 2020: 0.085, 2021: 0.105}  # another order, and a seed the reference alone has
    p, seeds = paired_seed_ttest(reference, other)
    assert seeds == [2020, 2021, 2022]
    assert p == pytest.approx(ttest_rel([0.10, 0.12, 0.11], [0.085, 0.105, 0.098]).pvalue)
    unpaired = ttest_ind([0.10, 0.12, 0.11], [0.085, 0.105, 0.098]).pvalue
    assert p < 0.05 < unpaired  # the seeds' shared spread is paired away
    assert paired_seed_ttest(reference, {2020: 0.2}) == (None, [2020])  # one common seed
    assert paired_seed_ttest(reference, {s: v + 0.01 for s, v in reference.items()})[0] is None  # no spread


def test_pooled_scores_average_each_user_over_seeds():
    runs = [
        {"user_id": np.array(["a", "b", "c"]), "recall@20": np.array([0.0, 1.0, 0.5])},
        {"user_id": np.array(["b", "a"]), "recall@20": np.array([0.0, 1.0])},
    ]
    assert pooled_scores(runs) == {"a": 0.5, "b": 0.5}


def fake_record(model, seed, recall, ndcg, **extra):
    return {"dataset": "d", "model": model, "seed": seed, "missing_rate": 0.3,
            "test": {"recall@20": recall, "ndcg@20": ndcg, "precision@20": recall / 10},
            "best_epoch": seed, "train_epoch_seconds": 2.0, **extra}


def test_table_shows_mean_std_best_and_what_lacks_per_user_scores(tmp_path):
    results = tmp_path / "runs.jsonl"
    users = np.array([str(u) for u in range(30)])
    records = [
        fake_record("A", 1, 0.10, 0.30), fake_record("A", 2, 0.20, 0.30),
        fake_record("B", 1, 0.30, 0.10), fake_record("B", 2, 0.50, 0.10),
        fake_record("C", 1, 0.01, 0.01),  # an old record: no per-user scores
    ]
    rng = np.random.default_rng(1)
    for record in records[:4]:
        scores = {"user_id": users, "recall@20": rng.random(30) + (record["model"] == "B")}
        record["per_user_file"] = save_per_user(results, record, scores)
    rows = summarise(records, results)
    lines = markdown(rows).splitlines()
    assert "| 0.3 | A | 1, 2 | 15.00 ± 7.07 | **30.00 ± 0.00** | 1.50 ± 0.71 | 2.00 | 1, 2 | — | — |" in lines
    b_row = next(line for line in lines if line.startswith("| 0.3 | B |"))
    assert "| **40.00 ± 14.14** | 10.00 ± 0.00 | **4.00 ± 1.41** |" in b_row
    seed_p = ttest_rel([0.10, 0.20], [0.30, 0.50]).pvalue  # paired by seed: differences 0.2 and 0.3
    assert b_row.endswith(f"| {rows[1]['p']:.2g} | {seed_p:.2g} |") and rows[1]["p"] < 0.01
    assert rows[1]["seed_p"] == pytest.approx(seed_p) and rows[1]["seed_p_seeds"] == [1, 2]
    assert "| 0.3 | C | 1 | 1.00 | 1.00 | 0.10 | 2.00 | 1 | n/a | n/a |" in lines  # one common seed: no t-test


def test_wilcoxon_uses_only_the_seeds_both_rows_have(tmp_path):
    # A three-seed mean against one seed's 0/1 scores differs in spread alone; the test must
    # pair the reference's seed-1 scores with the one-seed row's, and skip a row with no seed in common.
    results = tmp_path / "runs.jsonl"
    users = np.array([str(u) for u in range(200)])
    rng = np.random.default_rng(2)
    scores = {}
    records = [fake_record("A", s, 0.1, 0.1) for s in (1, 2, 3)] + [fake_record("B", 1, 0.1, 0.1),
                                                                     fake_record("C", 4, 0.1, 0.1)]
    for record in records:
        scores[record["model"], record["seed"]] = (rng.random(200) < 0.1).astype(float)
        record["per_user_file"] = save_per_user(results, record, {"user_id": users, "recall@20": scores[
            record["model"], record["seed"]]})
    rows = {row["model"]: row for row in summarise(records, results)}

    expected = wilcoxon(scores["A", 1], scores["B", 1]).pvalue
    assert rows["B"]["test_seeds"] == [1] and rows["B"]["p"] == pytest.approx(expected)
    pooled_a = np.mean([scores["A", s] for s in (1, 2, 3)], axis=0)
    assert rows["B"]["p"] != pytest.approx(wilcoxon(pooled_a, scores["B", 1]).pvalue)
    assert rows["C"]["p"] is None and rows["C"]["test_status"] == "no common seed"
    c_line = next(line for line in markdown(list(rows.values())).splitlines() if line.startswith("| 0.3 | C |"))
    assert c_line.endswith("| n/a (no common seed) | n/a |")


def test_a_relabelled_record_keeps_its_per_user_scores(tmp_path):
    # A default changed, so an old record got the old setting written into its
    # overrides; a new run at the new default then has the old record's former
    # key, and must not overwrite the per-user file that record still names.
    results = tmp_path / "runs.jsonl"
    users = np.array([str(u) for u in range(5)])
    old = fake_record("A", 1, 0.10, 0.30)
    old["per_user_file"] = save_per_user(results, old, {"user_id": users, "recall@20": np.zeros(5)})
    old["overrides"] = {"reg_weight": 1e-7}
    append_record(results, old)

    new = fake_record("A", 1, 0.20, 0.30)
    new["per_user_file"] = save_per_user(results, new, {"user_id": users, "recall@20": np.ones(5)})
    append_record(results, new)

    assert new["per_user_file"] != old["per_user_file"]
    old_scores, new_scores = (load_per_user(record, results) for record in read_records(results))
    assert old_scores["recall@20"].tolist() == [0.0] * 5 and new_scores["recall@20"].tolist() == [1.0] * 5


def test_published_records_without_per_user_scores_still_tabulate():
    text = markdown(summarise(read_records(OLD_RECORDS), OLD_RECORDS))
    # The numbers BENCHMARKS.md reports for these records.
    ci2mg = "| 0.9 | CI2MG | 2020, 2021, 2022 | 4.52 ± 0.51 | 1.94 ± 0.43 | 0.23 ± 0.03 | 26.37 | 0, 1, 1 | — |"
    assert ci2mg in text
    assert "| 0.9 | LightGCN reg_weight=0.0001 | 2020, 2021, 2022 | **8.93 ± 0.37** |" in text
    assert text.count("| n/a |") == 2


def test_table_only_from_the_command_line_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "run_recbole", None)  # any training would fail
    monkeypatch.setattr(sys, "argv", ["run_recbole.py", "--table-only", f"--results={OLD_RECORDS}",
                                      "--model=LightGCN,CI2MG", f"--table={tmp_path / 't'}"])
    runpy.run_path(str(REPO / "run_recbole.py"), run_name="__main__")
    text = (tmp_path / "t.md").read_text()
    assert text.index("| LightGCN reg_weight") < text.index("| CI2MG |") and "LightGCN-M" not in text
    assert not (tmp_path / "t.png").exists()  # one missing rate: no plot
    assert "Written:" in capsys.readouterr().out


def test_ablation_runs_table_3_rows_cumulatively(monkeypatch):
    assert set(compare.ABLATION_SWITCHES) == set(SWITCHES)
    settings = []

    def fake_run(model, dataset, config_file_list=None, config_dict=None, saved=True):
        settings.append((model, dict(config_dict)))
        return {"test_result": {"recall@20": 0.1, "ndcg@20": 0.1, "precision@20": 0.01},
                "best_valid_result": {}, "best_epoch": 0, "epochs_trained": 1,
                "train_epoch_seconds": 0.1, "saved_model_file": None}

    monkeypatch.setattr(compare, "run_recbole", fake_run)
    compare.main(["--ablation", "--dataset=tiny", "--missing_rate=0.9", "--seeds=2020", "--epochs=1"])
    on = [[switch for switch in compare.ABLATION_SWITCHES if config[switch]] for _, config in settings]
    assert on == [[], ["use_intra"], ["use_intra", "use_inter"],
                  ["use_intra", "use_inter", "use_contrastive"], list(compare.ABLATION_SWITCHES)]
    assert all(m == "CI2MG" and c["missing_rate"] == 0.9 and c["epochs"] == 1 for m, c in settings)

    records = read_records("saved/comparison/tiny-ablation.jsonl")
    assert len({record_key(r) for r in records}) == 5  # the switches are part of the key
    table = open("saved/comparison/tiny-ablation.md").read()
    assert "| 0.9 | CI2MG -use_intra -use_inter -use_contrastive -use_task_guided |" in table
    assert "| 0.9 | CI2MG +use_intra +use_inter +use_contrastive +use_task_guided |" in table


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model=BPR,LightGNC", "--seeds=1"], r"Unknown model 'LightGNC'"),
        (["--seeds=2020,x"], r"--seeds=2020,x: 'x' is not an integer seed"),
        (["--seeds=2020,2020"], r"--seeds lists 2020 more than once"),
        (["--missing_rates=0,1.5"], r"--missing_rates=0,1.5: '1.5' is not a missing rate in \[0, 1\]"),
        (["--missing_rate=high", "--results=r.jsonl"], r"--missing_rate=high: 'high' is not a missing rate"),
        (["--seeds=1", "--seed=2"], r"either as --seeds or as --seed"),
        (["--ablation", "--model=BPR"], r"--ablation runs CI2MG's rows; leave out --model=BPR"),
        (["--ablation", "--use_inter=False"], r"leave out --use_inter"),
        (["--seeds=1", "epochs=2"], r"Unrecognised argument 'epochs=2'.*--key=value"),
        (["--table-only", "--results=absent.jsonl"], r"absent.jsonl holds no records"),
        (["--missing_rates=0,0.9", "--mask_file=m.mask"],
         r"mask_file = 'm.mask' and missing_rate = 0.9.*one or the other"),
        (["--missing_rate=0.5", "--mask_file=m.mask", "--seeds=1"], r"missing_rate = 0.5.*one or the other"),
        (["--seeds=1", "--model=BPR", "--misssing_rate=0.5"], r"'misssing_rate'.*did you mean missing_rate\b"),
        (["--seeds=1", "--n_prototype=8"], r"'n_prototype'.*did you mean n_prototypes\b"),
        (["--seeds=1", "--model=CI2MG,LightGCN", "--cl_wieght=5"], r"'cl_wieght'.*did you mean cl_weight\b"),
        (["--seeds=1", "--model=CI2MG,LightGCN", "--n_prototypes=8"], r"'n_prototypes' is not a setting of LightGCN"),
    ],
)
def test_bad_command_lines_say_what_to_fix(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(compare, "run_recbole", None)  # nothing may train
    with pytest.raises(SystemExit):
        compare.main(argv)
    assert re.search(message, capsys.readouterr().err)


def test_a_damaged_results_file_names_the_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"dataset": "d", "model": "A", "seed": 1, "missing_rate": 0, "test": {}}\n{"dataset": "d", "mo\n')
    with pytest.raises(ValueError, match=r"runs.jsonl, line 2, is not a JSON record.*Delete that line"):
        read_records(path)
    path.write_text('{"dataset": "d", "model": "A"}\n')
    with pytest.raises(ValueError, match=r"line 1, lacks the field\(s\) seed, missing_rate, test"):
        read_records(path)
