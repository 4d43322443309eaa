"""Hyperparameter search (RecBole's HyperTuning, Ray Tune) and sensitivity sweeps."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, write_benchmark
from recbole_ci2mg import quick_start, tuning
from recbole_ci2mg.compat import best_trial
from recbole_ci2mg.tuning import read_params_file, tune

LR_SPACE = "learning_rate choice [0.0, 0.05]\n"


@pytest.fixture
def disagreeing(tmp_path):
    r"""A dataset on which validation and test prefer different configurations.

    User u's training and validation items come from item cluster u % 4, its
    test item from cluster (u + 2) % 4. Training (learning_rate 0.05) ranks the
    user's own cluster first: validation improves and test gets worse than with
    no training at all (learning_rate 0). A search that looked at test would
    pick learning_rate 0.
    """
    rng = np.random.default_rng(0)
    clusters = np.arange(40) % 4
    splits = {"train": [], "valid": [], "test": []}
    for u in range(60):
        liked = rng.choice(np.flatnonzero(clusters == u % 4), size=7, replace=False)
        splits["train"] += [(u, i) for i in liked[:-1]]
        splits["valid"].append((u, liked[-1]))
        splits["test"].append((u, rng.choice(np.flatnonzero(clusters == (u + 2) % 4))))
    # Content that carries no cluster information, so CI2MG cannot reach the
    # test cluster through its modality either.
    v = np.random.default_rng(5).standard_normal((40, 4)).astype(np.float32)
    settings = write_benchmark(tmp_path / "data", "dis", splits, {"v": (v, None)})
    return {**settings, "epochs": 2}


@pytest.fixture
def lr_space(tmp_path):
    path = tmp_path / "lr.hyper"
    path.write_text(LR_SPACE)
    return path


@pytest.mark.parametrize("model", ["CI2MG", "LightGCN"])
def test_exhaustive_search_selects_on_valid_and_reports_test(disagreeing, lr_space, tmp_path, model):
    output = tmp_path / "out" / "search.result"
    summary = tune(model, "dis", lr_space, algo="exhaustive", config_dict=disagreeing, output_file=output)

    trials = summary["trials"]
    assert sorted(trial["params"]["learning_rate"] for trial in trials) == [0.0, 0.05]
    by_valid = max(trials, key=lambda trial: trial["valid_score"])
    assert by_valid["valid_score"] > min(trial["valid_score"] for trial in trials)  # no tie to break
    if model == "LightGCN":  # RecBole's model, fixed by its pin; CI2MG is still tuned
        by_test = max(trials, key=lambda trial: trial["test_result"]["recall@20"])
        assert by_valid is not by_test, "the data no longer separates valid from test selection"
    assert summary["best"] is by_valid and summary["best"]["params"] == {"learning_rate": 0.05}
    assert summary["best"]["valid_score"] == summary["best"]["valid_result"]["recall@20"]

    text = output.read_text()
    assert text.startswith("Best of 2 trials") and "learning_rate:0.05" in text.splitlines()[1]
    saved = json.loads((tmp_path / "out" / "search.result.json").read_text())
    assert saved["best"]["params"] == {"learning_rate": 0.05}
    assert saved["best"]["test_result"] == pytest.approx(dict(summary["best"]["test_result"]))
    assert f"recall@20 : {saved['best']['test_result']['recall@20']}" in text
    assert len(saved["trials"]) == 2 and saved["valid_metric"] == "Recall@20"


def test_selection_never_looks_at_test(tiny, tmp_path, monkeypatch):
    # Scripted scores: validation prefers K = 32, test prefers K = 16.
    valid = {16: 0.0, 32: 0.3, 64: 0.1, 128: 0.2, 256: 0.05}
    test = {16: 0.9, 32: 0.1, 64: 0.5, 128: 0.3, 256: 0.6}

    def scripted_objective(config_dict, config_file_list=None):
        k = config_dict["n_prototypes"]
        return {
            "model": "CI2MG",
            "best_valid_score": valid[k],
            "valid_score_bigger": True,
            "best_valid_result": {"recall@20": valid[k]},
            "test_result": {"recall@20": test[k]},
        }

    monkeypatch.setattr(tuning, "objective_function", scripted_objective)
    space = tmp_path / "k.hyper"
    space.write_text("n_prototypes choice [16, 32, 64, 128, 256]\n")
    orders = set()
    for search_seed in (0, 1):  # exhaustive search visits the values in another order
        summary = tune("CI2MG", "tiny", space, config_dict=tiny, search_seed=search_seed)
        orders.add(tuple(trial["params"]["n_prototypes"] for trial in summary["trials"]))
        assert sorted(trial["params"]["n_prototypes"] for trial in summary["trials"]) == sorted(valid)
        assert summary["best"]["params"] == {"n_prototypes": 32}
        assert summary["best"]["test_result"] == {"recall@20": 0.1}
    assert len(orders) == 2


def test_best_trial_is_the_first_best_and_zero_is_a_score():
    trials = [{"valid_score": 0.0, "id": 0}, {"valid_score": 0.0, "id": 1}, {"valid_score": 0.5, "id": 2}]
    assert best_trial(trials, bigger=True)["id"] == 2
    assert best_trial(trials, bigger=False)["id"] == 0
    assert best_trial(trials[:2], bigger=True)["id"] == 0


def test_trials_share_split_and_mask_whatever_the_training_seed(tiny, tmp_path, monkeypatch):
    masks = []
    create_dataset = quick_start.create_dataset

    def recording_create_dataset(config):
        dataset = create_dataset(config)
        masks.append({name: mask.clone() for name, mask in dataset.modality_observed.items()})
        return dataset

    monkeypatch.setattr(quick_start, "create_dataset", recording_create_dataset)
    space = tmp_path / "seed.hyper"
    space.write_text("seed choice [2020, 2021]\n")
    summary = tune("LightGCN-M", "tiny", space, config_dict={**tiny, "epochs": 1, "missing_rate": 0.5})

    assert sorted(trial["params"]["seed"] for trial in summary["trials"]) == [2020, 2021]
    assert len(masks) == 2 and set(masks[0]) == {"v", "t"}
    for name in masks[0]:
        assert 0 < int((~masks[0][name]).sum()) < len(masks[0][name])
        assert bool((masks[0][name] == masks[1][name]).all())


@pytest.mark.parametrize(
    "line, message",
    [
        ("n_prototypes choice [16,32", r"line 2 .*choice needs a non-empty Python list"),
        ("n_prototypes choice []", r"line 2 .*choice needs a non-empty Python list"),
        ("n_prototypes choise [16,32]", r"line 2 .*unknown type 'choise'"),
        ("cl_temperature uniform 1.0,0.1", r"line 2 .*low \(1\) must be below high \(0.1\)"),
        ("cl_temperature loguniform -7.6", r"line 2 .*loguniform needs 2 comma-separated numbers"),
        ("hyper_layers [1,2]", r"line 2 .*expected 'name type values'"),
        ("learning_rate choice [0.1]", r"line 2 .*'learning_rate' is already defined"),
    ],
)
def test_bad_params_file_line_names_file_line_and_fix(tmp_path, line, message):
    path = tmp_path / "bad.hyper"
    path.write_text(f"learning_rate choice [0.001, 0.01]  # a comment\n{line}\n")
    with pytest.raises(ValueError, match=rf"bad\.hyper, {message}"):
        read_params_file(path)


def test_search_refuses_unknown_fixed_or_unenumerable_settings(tiny, tmp_path):
    path = tmp_path / "space.hyper"
    path.write_text("n_prototype choice [16, 32]\n")
    unknown = r"space\.hyper: 'n_prototype' is not a setting of CI2MG.*did you mean n_prototypes"
    with pytest.raises(ValueError, match=unknown):
        tune("CI2MG", "tiny", path, config_dict=tiny)
    path.write_text("n_prototypes choice [16, 32]\n")
    with pytest.raises(ValueError, match=r"'n_prototypes' is searched and also fixed to 8"):
        tune("CI2MG", "tiny", path, config_dict={**tiny, "n_prototypes": 8})
    path.write_text("cl_temperature uniform 0.1,1.0\n")
    with pytest.raises(ValueError, match=r"exhaustive search needs every parameter to be a 'choice'"):
        tune("CI2MG", "tiny", path, algo="exhaustive", config_dict=tiny)


def test_fixed_settings_of_a_search_are_checked_before_any_trial(tiny, lr_space, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a trial ran")

    monkeypatch.setattr(tuning, "objective_function", no_training)
    with pytest.raises(ValueError, match=r"'cl_wieght' is not a setting of CI2MG.*did you mean cl_weight"):
        tune("CI2MG", "tiny", lr_space, config_dict={**tiny, "cl_wieght": 5})
    mask = tmp_path / "m.mask"
    with pytest.raises(ValueError, match=r"mask_file = .*m\.mask.* and missing_rate = 0.9 .*one or the other"):
        tune("CI2MG", "tiny", lr_space, config_dict={**tiny, "mask_file": str(mask), "missing_rate": 0.9})


def test_shipped_ci2mg_space_is_the_papers(tiny):
    params = read_params_file(REPO / "properties" / "hyper" / "CI2MG.hyper")
    weights = [0.001, 0.01, 0.1, 1.0]
    assert params["n_prototypes"] == ("choice", [16, 32, 64, 128, 256])
    assert params["hyper_layers"] == ("choice", [1, 2, 3, 4])
    assert params["cl_weight"] == params["rec_weight"] == params["reg_weight"] == ("choice", weights)
    low, high = params["cl_temperature"][1]
    assert params["cl_temperature"][0] == "uniform" and 0 < low < high == 1.0
    kind, (low, high) = params["learning_rate"]
    assert kind == "loguniform" and np.exp(low) == pytest.approx(5e-4, rel=0.01)
    assert np.exp(high) == pytest.approx(5e-3, rel=0.01)
    config = tuning.check_settings("CI2MG", "tiny", list(params), "CI2MG.hyper", config_dict=tiny)
    assert all(name in config.final_config_dict for name in params)


def test_sensitivity_writes_plot_and_tables(disagreeing, tmp_path, monkeypatch):
    seen = []
    objective = tuning.objective_function

    def recording_objective(config_dict, config_file_list=None):
        seen.append((config_dict["n_prototypes"], config_dict["seed"]))
        return objective(config_dict, config_file_list)

    monkeypatch.setattr(tuning, "objective_function", recording_objective)
    stem = tmp_path / "plots" / "k"
    sweep = tuning.sensitivity(
        "CI2MG", "dis", "n_prototypes", [2, 4], seeds=[2020, 2021], config_dict=disagreeing, output_stem=stem
    )

    assert seen == [(2, 2020), (2, 2021), (4, 2020), (4, 2021)]
    assert (tmp_path / "plots" / "k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "plots" / "k.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["n_prototypes"], row["seed"]) for row in rows] == [("2", "2020"), ("2", "2021"), ("4", "2020"), ("4", "2021")]
    for row, run in zip(rows, sweep["runs"]):
        assert float(row["valid_recall@20"]) == run["valid"] and float(row["test_recall@20"]) == run["test"]
    table = (tmp_path / "plots" / "k.md").read_text().splitlines()
    assert table[2] == "| n_prototypes | seeds | valid recall@20 | test recall@20 |"
    first = sweep["summary"][0]
    assert first["valid_mean"] == pytest.approx((sweep["runs"][0]["valid"] + sweep["runs"][1]["valid"]) / 2)
    assert table[4].startswith(f"| 2 | 2 | {first['valid_mean']:.4f} ± {first['valid_std']:.4f} |")


def test_run_hyper_command_line(disagreeing, lr_space, tmp_path):
    config_file = tmp_path / "dis.yaml"
    config_file.write_text(yaml.safe_dump({key: value for key, value in disagreeing.items() if key != "epochs"}))
    output = tmp_path / "cli.result"
    command = [
        sys.executable, str(REPO / "run_hyper.py"), "--model=LightGCN", "--dataset=dis",
        f"--config_files={config_file}", f"--params_file={lr_space}", f"--output_file={output}", "--epochs=2", "--seed=2021",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best params (2 trials, selected on valid Recall@20): learning_rate:0.05" in done.stdout
    saved = json.loads((tmp_path / "cli.result.json").read_text())
    # --seed is a setting, not an abbreviation of --seeds
    assert saved["fixed"] == {"epochs": 2, "seed": 2021} and saved["best"]["params"] == {"learning_rate": 0.05}

    bad = subprocess.run(command + ["stray"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Unrecognised argument 'stray'" in bad.stderr
    bad = subprocess.run(command + ["--n_layer=2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "'n_layer' is not a setting of LightGCN" in bad.stderr
    assert "did you mean n_layers" in bad.stderr


def test_ray_tune_selects_on_valid_like_hyperopt(disagreeing, lr_space):
    pytest.importorskip("pyarrow", reason="--tool=Ray needs pyarrow (pip install -e '.[ray]')")
    ray = tune("LightGCN", "dis", lr_space, tool="Ray", config_dict=disagreeing)
    hyperopt = tune("LightGCN", "dis", lr_space, config_dict=disagreeing)

    def scores(summary):
        return {t["params"]["learning_rate"]: (t["valid_score"], t["test_result"]["recall@20"]) for t in summary["trials"]}

    # The same seeds and trials: Ray's worker processes train the same models
    # as the in-process search (up to float summation order: Ray runs its
    # workers with one thread).
    assert scores(ray).keys() == scores(hyperopt).keys() == {0.0, 0.05}
    for lr, (valid, test) in scores(hyperopt).items():
        assert scores(ray)[lr] == pytest.approx((valid, test), abs=2e-3)
    assert ray["best"]["params"] == {"learning_rate": 0.05}
    assert ray["best"]["valid_score"] > scores(ray)[0.0][0] and ray["best"]["test_result"]["recall@20"] < scores(ray)[0.0][1]


def test_search_space_strings_are_never_run(disagreeing, tmp_path):
    # A params file from elsewhere: its choices reach RecBole's Config as trial settings.
    marker = tmp_path / "PWNED"
    space = tmp_path / "crafted.hyper"
    space.write_text(f"note choice [\"__import__('pathlib').Path('{marker}').touch()\"]\n")  # no spaces
    declared = tmp_path / "note.yaml"
    declared.write_text("note: none\n")
    summary = tune("BPR", "dis", space, config_file_list=[str(declared)], config_dict={**disagreeing, "epochs": 1})
    assert not marker.exists()
    assert summary["best"]["params"]["note"].startswith("__import__")


def scripted_k_objective(calls, fail_at=None):
    r"""A deterministic objective over ``n_prototypes`` that counts its calls and can fail once."""

    def objective(config_dict, config_file_list=None):
        k = config_dict["n_prototypes"]
        calls.append(k)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("the session ended")
        score = 1.0 / (1 + abs(k - 40))
        return {
            "model": "CI2MG",
            "best_valid_score": score,
            "valid_score_bigger": True,
            "best_valid_result": {"recall@20": score},
            "test_result": {"recall@20": score / 2},
        }

    return objective


@pytest.mark.parametrize("algo", ["random", "bayes"])
def test_an_interrupted_search_resumes_where_it_stopped(tiny, tmp_path, monkeypatch, algo):
    space = tmp_path / "k.hyper"
    space.write_text("n_prototypes choice [8, 16, 24, 32, 40, 48, 56, 64]\n")
    search = dict(config_dict=tiny, algo=algo, max_evals=6, early_stop=100, search_seed=3)

    whole_calls = []
    monkeypatch.setattr(tuning, "objective_function", scripted_k_objective(whole_calls))
    whole = tune("CI2MG", "tiny", space, output_file=tmp_path / "whole" / "s.result", **search)
    order = [trial["params"]["n_prototypes"] for trial in whole["trials"]]
    assert len(order) == 6 and whole_calls == order

    output = tmp_path / "cut" / "s.result"
    first_calls = []
    monkeypatch.setattr(tuning, "objective_function", scripted_k_objective(first_calls, fail_at=4))
    with pytest.raises(KeyboardInterrupt):
        tune("CI2MG", "tiny", space, output_file=output, **search)
    log = tuning.trials_path(output).read_text().splitlines()
    assert len(log) == 1 + 3  # the search's description, then the three trials that finished

    second_calls = []
    monkeypatch.setattr(tuning, "objective_function", scripted_k_objective(second_calls))
    resumed = tune("CI2MG", "tiny", space, output_file=output, **search)
    assert second_calls == order[3:]  # the recorded trials were not run again
    assert [trial["params"]["n_prototypes"] for trial in resumed["trials"]] == order
    best_k = max(order, key=lambda k: 1.0 / (1 + abs(k - 40)))
    assert resumed["best"]["params"] == whole["best"]["params"] == {"n_prototypes": best_k}
    assert resumed["best"]["test_result"] == pytest.approx(whole["best"]["test_result"])

    more_calls = []
    monkeypatch.setattr(tuning, "objective_function", scripted_k_objective(more_calls))
    extended = tune("CI2MG", "tiny", space, output_file=output, **{**search, "max_evals": 8})
    longer = [trial["params"]["n_prototypes"] for trial in extended["trials"]]
    assert len(longer) == 8 and longer[:6] == order
    assert more_calls == list(dict.fromkeys(k for k in longer[6:] if k not in order))  # a repeat is not rerun


def test_a_trials_file_of_another_search_or_a_cut_line_is_refused(tiny, tmp_path, monkeypatch):
    space = tmp_path / "k.hyper"
    space.write_text("n_prototypes choice [16, 32]\n")
    output = tmp_path / "s.result"
    monkeypatch.setattr(tuning, "objective_function", scripted_k_objective([]))
    tune("CI2MG", "tiny", space, config_dict=tiny, output_file=output)
    with pytest.raises(ValueError, match=r"s\.result\.trials\.jsonl records another search.*--output_file"):
        tune("CI2MG", "tiny", space, config_dict={**tiny, "learning_rate": 0.01}, output_file=output)
    with pytest.raises(ValueError, match="records another search"):
        tune("CI2MG", "tiny", space, config_dict=tiny, output_file=output, search_seed=7)
    path = tuning.trials_path(output)
    path.write_text(path.read_text() + '{"params": {"n_prot')
    with pytest.raises(ValueError, match=r"trials\.jsonl, line 4, is not a JSON record"):
        tune("CI2MG", "tiny", space, config_dict=tiny, output_file=output)


@pytest.mark.parametrize("path", sorted((REPO / "properties" / "hyper").glob("*.hyper")), ids=lambda p: p.stem)
def test_every_shipped_search_space_names_settings_its_model_knows(tiny, path):
    model = {"VBPR-demo": "VBPR"}.get(path.stem, path.stem)
    params = read_params_file(path)
    assert params
    tuning.check_settings(model, "tiny", list(params), path.name, config_dict=tiny)  # refuses unknown names
