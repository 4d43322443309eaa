"""benchmarks/ci2mg_scaling.py: cases, limits, resumable records, the table, and one tiny real case."""

import importlib.util
import json
import sys
from argparse import Namespace

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "ci2mg_scaling.py"


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("ci2mg_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ci2mg_scaling"] = module
    spec.loader.exec_module(module)
    return module


def parse(scaling, argv):
    args, extra = scaling.build_parser().parse_known_args(argv)
    return args, scaling.parse_overrides(extra)


def test_cases_overrides_and_keys(scaling):
    args, overrides = parse(scaling, ["--ot_plan_refresh=epoch", "--train_batch_size=4096"])
    cases = scaling.planned_cases(args, overrides)
    summary = [(c["dataset"], c["model"], c["solver"]) for c in cases]
    assert summary[:4] == [("tiktok", "LightGCN", None), ("tiktok", "LightGCN-M", None),
                           ("tiktok", "CI2MG", "scalable"), ("tiktok", "CI2MG", "dense")]
    assert ("sports", "CI2MG", "dense") in summary and ("clothing", "LightGCN", None) in summary
    assert ("sports", "LightGCN-M", None) not in summary
    for case in cases:
        # a CI2MG-only key (OT) reaches CI2MG only; a shared key reaches every model
        assert case["overrides"]["train_batch_size"] == 4096
        assert ("ot_plan_refresh" in case["overrides"]) == (case["model"] == "CI2MG")
        assert (case["synthetic"] is None) == (case["dataset"] == "tiktok")
    keys = [scaling.case_key(c) for c in cases]
    assert len(set(keys)) == len(keys)
    ci2mg = next(c for c in cases if c["model"] == "CI2MG")
    assert json.loads(scaling.baseline_key(ci2mg))["overrides"] == {"train_batch_size": 4096}
    with pytest.raises(ValueError, match="Unrecognised argument 'stray'"):
        scaling.parse_overrides(["stray"])


def test_oom_is_recognised(scaling):
    import torch

    with pytest.raises(RuntimeError) as error:
        torch.empty(2 ** 45)  # 128 TiB: torch's own allocation failure message
    assert scaling.is_oom(error.value) and scaling.is_oom(MemoryError())
    assert not scaling.is_oom(ValueError("bad config"))


def test_table_ratios_and_failures(scaling):
    args, overrides = parse(scaling, ["--datasets", "sports"])
    cases = scaling.planned_cases(args, overrides)
    base, scalable, dense = cases
    records = [
        {"key": scaling.case_key(base), "status": "ok", "items": 18357, "users": 35598, "train_interactions": 218409,
         "s_per_step": 0.5, "steps_per_epoch": 107, "s_per_epoch_extrapolated": 53.5, "peak_rss_gib": 1.0,
         "rss_after_build_gib": 0.8},
        {"key": scaling.case_key(scalable), "status": "ok", "s_per_step": 2.5, "steps_per_epoch": 107,
         "s_per_epoch_extrapolated": 267.5, "peak_rss_gib": 2.5, "rss_after_build_gib": 1.4},
        {"key": scaling.case_key(dense), "status": "out of memory", "stage": "train", "peak_rss_gib": 19.5},
    ]
    table = scaling.markdown_table(cases, records).splitlines()
    assert len(table) == 5
    assert "| 5.00× |" in table[3] and "| 2.50× |" in table[3]
    assert "out of memory (train)" in table[4]


def test_resumes_and_records_failures(scaling, tmp_path, monkeypatch):
    calls = []

    def fake_run(case, config_files, args, machine):
        calls.append(case["model"])
        status = "timed out" if case["solver"] == "dense" else "ok"
        return {"key": scaling.case_key(case), "case": case, "status": status, "stage": "train", "wall_s": 1.0}

    monkeypatch.setattr(scaling, "run_subprocess", fake_run)
    monkeypatch.setattr(scaling, "prepare_dataset", lambda dataset, synthetic, args: [])
    argv = ["--datasets", "tiktok", "--results", str(tmp_path / "r.jsonl"), "--workdir", str(tmp_path)]
    scaling.main(argv)
    assert calls == ["LightGCN", "LightGCN-M", "CI2MG", "CI2MG"]
    scaling.main(argv)  # everything recorded: nothing reruns
    assert len(calls) == 4
    scaling.main(argv + ["--redo-failed"])  # only the timed-out dense case
    assert len(calls) == 5 and len(scaling.read_results(tmp_path / "r.jsonl")) == 5


def test_wall_time_limit_kills_the_case(scaling, tmp_path):
    args, overrides = parse(scaling, ["--datasets", "tiktok", "--models", "LightGCN", "--timeout", "1",
                                      "--mem-limit-gib", "0", "--workdir", str(tmp_path)])
    case = scaling.planned_cases(args, overrides)[0]
    record = scaling.run_subprocess(case, [], args, {})
    assert record["status"] == "timed out" and record["wall_s"] < 30


def test_tiny_synthetic_case_end_to_end(scaling, tmp_path):
    # an MMRec-layout source, converted with synthetic features, built and trained in-process
    src = tmp_path / "shared" / "tinyscale"
    src.mkdir(parents=True)
    lines = ["userID\titemID\tx_label"]
    for u in range(30):
        items = [(u + k * 3) % 24 for k in range(6)]
        lines += [f"{u}\t{i}\t{0 if k < 4 else k - 3}" for k, i in enumerate(items)]
    (src / "tinyscale.inter").write_text("\n".join(lines) + "\n")
    args = Namespace(data_dir=str(tmp_path / "data"), shared_dir=str(tmp_path / "shared"), layout="mmrec")
    synthetic = {"dims": {"v": 16, "t": 8}, "seed": 1, "dist": "standard normal float32"}
    files = scaling.prepare_dataset("tinyscale", synthetic, args)
    assert files == scaling.prepare_dataset("tinyscale", synthetic, args)  # stamped: not converted again
    case = {"dataset": "tinyscale", "model": "CI2MG", "solver": "dense", "warmup": 1, "steps": 2,
            "budget_s": None, "full_epoch": True, "missing_rate": 0.9, "threads": None,
            "overrides": {"n_prototypes": 4, "train_batch_size": 64}}
    seen = []
    record = scaling.run_case(case, files, progress=lambda r: seen.append(r.get("stage")))
    assert record["status"] == "ok", record.get("traceback_tail")
    assert record["items"] == 24 and record["users"] == 30 and record["train_interactions"] == 120
    assert record["feature_dims"] == {"t": 8, "v": 16}
    assert record["steps_per_epoch"] == 2 and len(record["step_s"]) == 2
    assert record["s_per_epoch_extrapolated"] == pytest.approx(record["s_per_step"] * 2)
    assert record["s_per_epoch_measured"] > 0
    assert record["peak_rss_gib"] >= record["peak_rss_after_build_gib"] > 0
    assert {"dataset", "model", "train"} <= set(seen)

    # a step budget cuts a slow case to one warm-up and one timed step
    case.update(warmup=3, steps=3, budget_s=1e-9, full_epoch=False)
    record = scaling.run_case(case, files)
    assert record["status"] == "ok" and record["steps_cut_by_budget"]
    assert len(record["warmup_step_s"]) == 1 and len(record["step_s"]) == 1
