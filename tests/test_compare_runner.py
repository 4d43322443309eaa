"""The comparison runner and its results file: processes sharing it, records of other data, lines that are not records."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from conftest import REPO, planted_interactions, write_benchmark
from recbole_ci2mg import claims, compare
from recbole_ci2mg.results import append_record, read_records, record_key


def tiny_comparison(root):
    """A 60-user benchmark dataset in ``root/data`` and its config file; returns the config file."""
    splits, clusters = planted_interactions()
    settings = write_benchmark(root / "data", "tiny", splits, {"v": (np.eye(4, dtype=np.float32)[clusters], None)})
    (root / "tiny.yaml").write_text(yaml.safe_dump(settings))
    return root / "tiny.yaml"


def fake_run_recbole(calls):
    """A training function that records its calls and returns fixed results at once."""
    def run_recbole(model, dataset, config_file_list=None, config_dict=None, saved=True):
        calls.append((model, config_dict["seed"]))
        return {"test_result": {"recall@20": 0.1, "ndcg@20": 0.1, "precision@20": 0.01},
                "best_valid_result": {}, "best_epoch": 0, "epochs_trained": 1,
                "train_epoch_seconds": 0.1, "saved_model_file": None}
    return run_recbole


def test_two_processes_on_one_results_file_train_and_record_each_run_once(tmp_path):
    config = tiny_comparison(tmp_path)
    command = [sys.executable, str(REPO / "run_recbole.py"), "--model=BPR", "--dataset=tiny", "--seeds=1,2,3,4",
               "--epochs=1", "--results=out/runs.jsonl", "--table=out/table", f"--config_files={config}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    trained = [line for out, _ in outputs for line in out.splitlines() if re.match(r"\[\d/4\] BPR .*: test \{", line)]
    assert len(trained) == 4  # each run trained once, by one of the two
    records = read_records(tmp_path / "out" / "runs.jsonl")
    assert sorted(r["seed"] for r in records) == [1, 2, 3, 4]
    assert list((tmp_path / "out" / "runs.claims").glob("*.claim")) == []
    for out, _ in outputs:  # each process ends with the table of the whole comparison
        assert "| 0 | BPR | 1, 2, 3, 4 |" in out


def a_run_claimed_by(tmp_path, holder, age=0.0):
    """One planned run and its claim file in ``tmp_path/runs.claims``, held by ``holder``, ``age`` seconds old."""
    run = compare.plan_runs("tiny", ["BPR"], [1], [0.0])[0]
    results = tmp_path / "runs.jsonl"
    path = claims.claim_path(results, record_key(run))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**holder, "started": "earlier", "key": record_key(run)}))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return run, results, path


def ended_process():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def never_wait(seconds):
    raise AssertionError("waited for a run whose claim should have been taken over")


def test_the_claim_of_a_process_that_ended_is_taken_over(tmp_path, monkeypatch, capsys):
    dead = ended_process()
    run, results, path = a_run_claimed_by(tmp_path, {"pid": dead, "host": socket.gethostname()})
    calls = []
    monkeypatch.setattr(compare, "run_recbole", fake_run_recbole(calls))
    monkeypatch.setattr(compare.time, "sleep", never_wait)
    records = compare.run_comparison([run], results)
    assert calls == [("BPR", 1)] and len(read_records(results)) == 1 and records[0]["seed"] == 1
    assert f"taking over the claim of process {dead} on {socket.gethostname()}" in capsys.readouterr().out
    assert not path.exists()


@pytest.mark.parametrize("holder, age, stale", [
    ({"pid": os.getpid(), "host": socket.gethostname()}, 0, None),
    ({"pid": os.getpid(), "host": socket.gethostname()}, claims.STALE_SECONDS + 60, "no heartbeat"),
    ({"pid": 1, "host": "another-machine"}, 60, None),  # its pid means nothing here: only its heartbeat counts
    ({"pid": 1, "host": "another-machine"}, claims.STALE_SECONDS + 60, "no heartbeat"),
    ({}, claims.STALE_SECONDS + 60, "no heartbeat"),
])
def test_a_claim_is_stale_when_its_process_ended_or_its_heartbeat_stopped(tmp_path, holder, age, stale):
    _, _, path = a_run_claimed_by(tmp_path, holder, age)
    reason = claims.stale_reason(path, claims.read_claim(path))
    assert reason is None if stale is None else stale in reason


def test_a_claimed_run_is_waited_for_and_not_trained_again(tmp_path, monkeypatch, capsys):
    run, results, path = a_run_claimed_by(tmp_path, {"pid": os.getpid(), "host": socket.gethostname()})
    record = {key: run[key] for key in ("dataset", "model", "seed", "missing_rate", "overrides", "config_files")}
    record["test"] = {"recall@20": 0.3}

    def other_process_finishes():
        append_record(results, record)
        path.unlink()

    calls = []
    monkeypatch.setattr(compare, "run_recbole", fake_run_recbole(calls))
    monkeypatch.setattr(compare, "POLL_SECONDS", 0.05)
    finisher = threading.Timer(0.5, other_process_finishes)
    finisher.start()
    records = compare.run_comparison([run], results)
    finisher.join()
    assert calls == [] and records[0]["test"] == {"recall@20": 0.3}
    out = capsys.readouterr().out
    assert f"being trained by process {os.getpid()}" in out and "recorded by another process" in out


def test_an_append_never_records_a_run_twice(tmp_path):
    record = {"dataset": "d", "model": "A", "seed": 1, "missing_rate": 0.0, "test": {"recall@20": 0.1}}
    assert append_record(tmp_path / "runs.jsonl", record)
    assert not append_record(tmp_path / "runs.jsonl", {**record, "test": {"recall@20": 0.2}})
    assert [r["test"] for r in read_records(tmp_path / "runs.jsonl")] == [{"recall@20": 0.1}]



def comparison_of(config, *extra):
    return ["--model=BPR", "--dataset=tiny", "--seeds=1,2", f"--config_files={config}", "--results=out/runs.jsonl",
            *extra]


def reconvert_features(config):
    data = yaml.safe_load(config.read_text())["data_path"]
    np.save(f"{data}/tiny/v.npy", np.ones((40, 4), np.float32))


def reconvert_split(config):
    data = yaml.safe_load(config.read_text())["data_path"]
    splits, clusters = planted_interactions(seed=1)
    write_benchmark(data, "tiny", splits, {"v": (np.eye(4, dtype=np.float32)[clusters], None)})


def redraw_mask(config):
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "mask_seed": 7}))


@pytest.mark.parametrize("change, what", [
    (reconvert_features, r"features v \(sha256:\w{8} -> sha256:\w{8}\)"),
    (reconvert_split, r"test.inter \(sha256:\w{8} -> sha256:\w{8}\); train.inter .*; valid.inter"),
    (redraw_mask, r"mask \(drawn: missing_mode independent, mask_seed 2023 -> drawn: .*mask_seed 7\)"),
])
def test_a_rerun_on_changed_data_is_refused_not_skipped(tmp_path, monkeypatch, capsys, change, what):
    config = tiny_comparison(tmp_path)
    calls = []
    monkeypatch.setattr(compare, "run_recbole", fake_run_recbole(calls))
    compare.main(comparison_of(config))
    compare.main(comparison_of(config))
    assert len(calls) == 2  # the unchanged data's runs are skipped
    capsys.readouterr()

    change(config)
    with pytest.raises(SystemExit):
        compare.main(comparison_of(config))
    error = capsys.readouterr().err
    assert re.search(r"out/runs.jsonl holds BPR seed 1 missing 0 .*\(and 1 more run\(s\) of this comparison\) "
                     r"trained on other data than the dataset has now: " + what, error), error
    assert "--results=out/runs-new.jsonl" in error and len(calls) == 2
    compare.main(comparison_of(config, "--results=out/runs-new.jsonl"))  # keeping both
    assert len(calls) == 4 and len(read_records("out/runs.jsonl")) == len(read_records("out/runs-new.jsonl")) == 2


def test_a_rerun_with_changed_settings_is_refused_not_skipped(tmp_path, monkeypatch, capsys):
    config = tiny_comparison(tmp_path)
    calls = []
    monkeypatch.setattr(compare, "run_recbole", fake_run_recbole(calls))
    compare.main(comparison_of(config))
    record = read_records(tmp_path / "out" / "runs.jsonl")[0]
    assert record["settings"]["stopping_step"] == 10 and record["settings"]["train_batch_size"] == 2048
    assert "data_path" not in record["settings"]  # where the data lies is not what a run learns
    compare.main(comparison_of(config))
    assert len(calls) == 2
    capsys.readouterr()

    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "stopping_step": 3}))
    with pytest.raises(SystemExit):
        compare.main(comparison_of(config))
    error = capsys.readouterr().err
    assert re.search(r"out/runs.jsonl holds BPR seed 1 missing 0 .*\(and 1 more run\(s\) of this comparison\) "
                     r"trained with other settings than its YAML files give now: stopping_step \(10 -> 3\)", error), error
    assert len(calls) == 2


def test_a_config_edited_while_a_run_trains_neither_changes_nor_loses_its_record(tmp_path, monkeypatch):
    config = tiny_comparison(tmp_path)
    calls, original = [], config.read_text()
    train = fake_run_recbole(calls)

    def edits_then_trains(*args, **kwargs):  # the config file changes, then disappears, while the run trains
        config.write_text(yaml.safe_dump({**yaml.safe_load(original), "stopping_step": 3}))
        result = train(*args, **kwargs)
        config.unlink()
        return result

    monkeypatch.setattr(compare, "run_recbole", edits_then_trains)
    compare.main(comparison_of(config, "--seeds=1"))
    records = read_records(tmp_path / "out" / "runs.jsonl")
    assert len(calls) == len(records) == 1
    assert records[0]["settings"]["stopping_step"] == 10  # what the run read when it started
    assert records[0]["data_fingerprint"]["train.inter"].startswith("sha256:")


def test_the_same_data_in_another_folder_matches_its_records(tmp_path, monkeypatch):
    config = tiny_comparison(tmp_path)
    calls = []
    monkeypatch.setattr(compare, "run_recbole", fake_run_recbole(calls))
    compare.main(comparison_of(config))
    (tmp_path / "data").rename(tmp_path / "moved")
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "data_path": str(tmp_path / "moved")}))
    compare.main(comparison_of(config))
    assert len(calls) == 2


@pytest.mark.parametrize("field, warning", [
    ("data_fingerprint", "without a data_fingerprint"),
    ("settings", "without their settings"),
])
def test_records_without_a_fingerprint_or_settings_are_reused_with_a_warning(tmp_path, monkeypatch, capsys, field,
                                                                               warning):
    config = tiny_comparison(tmp_path)
    calls = []
    monkeypatch.setattr(compare, "run_recbole", fake_run_recbole(calls))
    compare.main(comparison_of(config))
    results = tmp_path / "out" / "runs.jsonl"
    old = [{k: v for k, v in record.items() if k != field} for record in read_records(results)]
    results.write_text("".join(json.dumps(record) + "\n" for record in old))
    capsys.readouterr()
    compare.main(comparison_of(config))
    assert len(calls) == 2
    assert f"Warning: 2 run(s) of this comparison are reused from out/runs.jsonl {warning}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line, message",
    [
        ("123", r"line 2, is a JSON number, not a record"),
        ('["d", "A"]', r"line 2, is a JSON array, not a record"),
        ('{"dataset": "d", "model": "A", "seed": "x", "missing_rate": 0, "test": {}}',
         r"line 2: seed is 'x', not an integer"),
        ('{"dataset": "d", "model": "A", "seed": true, "missing_rate": 0, "test": {}}',
         r"line 2: seed is True, not an integer"),
        ('{"dataset": "d", "model": "A", "seed": 1, "missing_rate": "high", "test": {}}',
         r"line 2: missing_rate is 'high', not a number in \[0, 1\]"),
        ('{"dataset": "d", "model": "A", "seed": 1, "missing_rate": 2, "test": {}}',
         r"line 2: missing_rate is 2, not a number in \[0, 1\]"),
        ('{"dataset": 5, "model": "A", "seed": 1, "missing_rate": 0, "test": {}}',
         r"line 2: dataset is 5, not a name"),
        ('{"dataset": "d", "model": "A", "seed": 1, "missing_rate": 0, "test": {"recall@20": "0.1"}}',
         r"line 2: test is \{'recall@20': '0.1'\}, not metrics"),
        ('{"dataset": "d", "model": "A", "seed": 1, "missing_rate": 0, "test": {}, "overrides": [1]}',
         r"line 2: overrides is \[1\], not a mapping"),
        ('{"dataset": "d", "model": "A", "seed": 1, "missing_rate": 0, "test": {}, "config_files": "a.yaml"}',
         r"line 2: config_files is 'a.yaml', not a list of file names"),
    ],
)
def test_a_line_that_is_not_a_record_names_the_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"dataset": "d", "model": "A", "seed": 1, "missing_rate": 0, "test": {}}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"runs.jsonl, " + message) as error:
        read_records(path)
    assert "delete that line" in str(error.value)


def test_a_comparison_resumed_on_a_damaged_results_file_names_the_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "runs.jsonl").write_text("123\n")
    monkeypatch.setattr(compare, "run_recbole", None)  # nothing may train
    with pytest.raises(SystemExit):
        compare.main(["--model=BPR", "--dataset=tiny", "--results=runs.jsonl"])
    assert "runs.jsonl, line 1, is a JSON number, not a record" in capsys.readouterr().err
