"""Seconds per training epoch and peak memory of CI2MG against LightGCN, from TikTok to Amazon-Clothing (issue 3).

Every case (dataset, model, OT solver, config overrides) runs in a fresh
subprocess, so its peak resident memory is its own. The subprocess builds the
dataset and the model exactly as ``recbole_ci2mg.quick_start.run_recbole``
does (``build_config``, ``create_dataset``, ``data_preparation``, seed, model
class from the registry), then trains with ``model.calculate_loss`` and an
Adam step on the training batches: ``--warmup`` untimed steps, then
``--steps`` timed steps (each timed from fetching its batch to the optimiser
step, as an epoch of RecBole's trainer would spend it). It reports seconds per
step, steps per epoch (``len(train_data)``) and the **extrapolated** seconds
per epoch (s/step x steps/epoch; with ``ot_plan_refresh=epoch`` the one plan
solve of the epoch, measured as first warm-up step minus a timed step, is
added once). ``--full-epoch`` also times one whole epoch.

Memory: ``ru_maxrss`` (peak resident set of the subprocess) once the model is
built and at the end, plus the resident set right after the model is built,
so the training overhead is visible. Each subprocess runs under an address
space limit (``RLIMIT_AS``, ``--mem-limit-gib``) and a wall-time limit
(``--timeout``); a case that runs out of either is recorded as
``out of memory`` / ``timed out`` (with what it completed), and the benchmark
goes on.

Datasets: ``tiktok`` with its real features (the project's converted copy,
``properties/dataset/tiktok.yaml``, or converted here when absent);
``sports``, ``clothing`` (and ``baby``) from ``../shared/datasets/``, their
interaction graphs converted with ``dataset_prep`` into ``--data-dir``, with
synthetic item features of the paper's dimensions (seeded standard Gaussian,
float32; ``v`` 4096-d, ``t`` 1024-d; sports' real 384-d text is replaced).
Every case uses ``missing_rate`` 0.9 (``--missing-rate``), as in the paper.

Results: one JSON line per case appended to ``--results``; a case already
there (same key) is skipped, so an interrupted run resumes. ``--redo-failed``
reruns cases recorded as failed (e.g. with a higher ``--mem-limit-gib``).
A Markdown table of the invocation's cases is printed at the end
(``--table-only`` prints it without running anything).

Overrides: every ``--key=value`` argument that is not an option below is a
RecBole config override (``--ot_plan_refresh=epoch``, ``--train_batch_size=4096``)
and part of the case key. Keys that only CI2MG reads (those of
``properties/model/CI2MG.yaml`` absent from ``LightGCNM.yaml``) apply to CI2MG
cases only, so the LightGCN baseline of a comparison is not rerun for them.

Run from a scratch folder (RecBole may write ``log/``, ``saved/`` into the cwd)::

    cd /tmp/ci2mg_scaling && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        /work/main/.venv/bin/python /work/main/benchmarks/ci2mg_scaling.py \\
        --results /work/main/benchmarks/results/ci2mg_scaling.jsonl
"""

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, in the parent and in every child

from recbole_ci2mg.settings import parse_overrides  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
GIB = 1024 ** 3

# dataset -> how its features come; the order is the order of the table.
DATASETS = {
    "tiktok": {"features": "real"},
    "baby": {"features": "synthetic"},
    "sports": {"features": "synthetic"},
    "clothing": {"features": "synthetic"},
}
DEFAULT_DATASETS = ["tiktok", "sports", "clothing"]
# (model, solver) cases per dataset; solver None for models without OT.
REAL_CASES = [("LightGCN", None), ("LightGCN-M", None), ("CI2MG", "scalable"), ("CI2MG", "dense")]
SYNTHETIC_CASES = [("LightGCN", None), ("CI2MG", "scalable"), ("CI2MG", "dense")]
SYNTHETIC_DIMS = {"v": 4096, "t": 1024}  # the paper's visual and textual dimensions
SYNTHETIC_SEED = 2024
BASELINE = "LightGCN"

OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "out of memory", "not enough memory",
               "std::bad_alloc", "failed to allocate")


# ----------------------------------------------------------------------------- cases and keys


def ci2mg_only_keys():
    """Config keys only CI2MG reads: in properties/model/CI2MG.yaml, not in LightGCNM.yaml."""
    import yaml

    def keys(name):
        path = REPO / "properties" / "model" / f"{name}.yaml"
        if not path.is_file():
            return set()
        with open(path) as handle:
            return set(yaml.safe_load(handle) or {})

    return keys("CI2MG") - keys("LightGCNM")


def case_overrides(model, overrides, only_ci2mg):
    """The overrides that apply to ``model`` (sorted, JSON-able)."""
    return {k: overrides[k] for k in sorted(overrides) if model == "CI2MG" or k not in only_ci2mg}


def make_case(dataset, model, solver, overrides, protocol):
    return {"dataset": dataset, "model": model, "solver": solver, "overrides": overrides, **protocol}


def case_key(case):
    """What makes two records the same measurement."""
    fields = ("dataset", "model", "solver", "overrides", "warmup", "steps", "budget_s", "full_epoch",
              "missing_rate", "threads", "synthetic")
    return json.dumps({f: case.get(f) for f in fields}, sort_keys=True, default=str)


def planned_cases(args, overrides):
    only = ci2mg_only_keys()
    cases = []
    for dataset in args.datasets:
        synthetic = DATASETS.get(dataset, {"features": "synthetic"})["features"] == "synthetic"
        pairs = REAL_CASES if not synthetic else SYNTHETIC_CASES
        if args.models:
            pairs = [(m, s) for m in args.models for s in ((args.solvers or ["scalable", "dense"]) if m == "CI2MG" else [None])]
        elif args.solvers:
            pairs = [(m, s) for m, s in pairs if s is None or s in args.solvers]
        protocol = {
            "warmup": args.warmup,
            "steps": args.steps,
            "budget_s": args.budget_s,
            "full_epoch": args.full_epoch,
            "missing_rate": args.missing_rate,
            "threads": args.threads,
            "synthetic": synthetic_spec(args) if synthetic else None,
        }
        for model, solver in pairs:
            cases.append(make_case(dataset, model, solver, case_overrides(model, overrides, only), protocol))
    return cases


def synthetic_spec(args):
    return {"dims": dict(args.synthetic_dims), "seed": args.synthetic_seed, "dist": "standard normal float32"}


# ----------------------------------------------------------------------------- datasets


def project_yaml(dataset):
    path = REPO / "properties" / "dataset" / f"{dataset}.yaml"
    return path if path.is_file() else None


def prepare_dataset(dataset, synthetic, args):
    """Convert ``dataset`` when needed; return the config files its cases add (a list)."""
    from dataset_prep.convert import prepare_dataset as convert, resolve_layout
    from dataset_prep.features import FeatureSpec
    from dataset_prep.layouts import read_layout

    data_dir = Path(args.data_dir).resolve()
    props = data_dir / "properties"
    yaml_file = props / "dataset" / f"{dataset}.yaml"
    src = Path(args.shared_dir) / dataset
    if synthetic is None:
        # Real features: the project's converted copy when there is one.
        if project_yaml(dataset) is not None:
            return []
        if not yaml_file.is_file():
            print(f"[prep] converting {dataset} (real features) into {data_dir}", flush=True)
            convert(dataset, src, data_dir, properties_dir=props)
        return [str(yaml_file)]

    stamp = data_dir / dataset / "synthetic.json"
    if yaml_file.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == synthetic:
        return [str(yaml_file)]
    start = time.perf_counter()
    layout = resolve_layout(dataset, getattr(args, "layout", None))
    n_rows = int(read_layout(layout, src, dataset).item_ids().max()) + 1
    print(f"[prep] {dataset}: {n_rows} feature rows, synthetic {synthetic['dims']}, seed {synthetic['seed']}",
          flush=True)
    import numpy as np

    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        specs = []
        for index, (modality, dim) in enumerate(sorted(synthetic["dims"].items())):
            rng = np.random.default_rng([synthetic["seed"], index, dim])
            path = Path(tmp) / f"synthetic_{modality}{dim}.npy"
            np.save(path, rng.standard_normal((n_rows, dim), dtype=np.float32))
            specs.append(FeatureSpec(modality, path))
        # Known defaults of the same modality name (sports' 384-d text 't') are replaced;
        # any other known default would stay, so drop those explicitly by converting
        # with only the synthetic modalities.
        from dataset_prep import known

        saved = known.KNOWN_DATASETS.get(dataset)
        if saved is not None:
            known.KNOWN_DATASETS[dataset] = type(saved)(saved.layout, {})
        try:
            convert(dataset, src, data_dir, layout, specs, properties_dir=props)
        finally:
            if saved is not None:
                known.KNOWN_DATASETS[dataset] = saved
    stamp.write_text(json.dumps(synthetic, sort_keys=True))
    print(f"[prep] {dataset} written to {data_dir / dataset} in {time.perf_counter() - start:.0f} s", flush=True)
    return [str(yaml_file)]


# ----------------------------------------------------------------------------- the subprocess


def rss_bytes():
    """Current resident set of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def is_oom(error):
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return any(marker in text for marker in OOM_MARKERS)


def run_case(case, config_files, progress=None):
    """Build and train one case in this process; return its record (also on failure).

    ``progress(record)`` is called after each stage and step with the record so
    far, so that a killed process leaves what it finished.
    """
    record = {"status": "running", "stage": "import"}
    report = progress or (lambda r: None)
    try:
        _run_case(case, config_files, record, report)
        record["status"] = "ok"
        record.pop("stage", None)
    except Exception as error:  # noqa: BLE001 - every failure is a result here
        record["status"] = "out of memory" if is_oom(error) else "error"
        record["error"] = f"{type(error).__name__}: {str(error)[:500]}"
        record["traceback_tail"] = traceback.format_exc()[-1500:]
    record["peak_rss_gib"] = peak_rss_bytes() / GIB
    report(record)
    return record


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_case(case, config_files, record, report):
    import logging

    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_ci2mg.quick_start import build_config, create_dataset
    from recbole_ci2mg.registry import get_model

    logging.getLogger().setLevel(logging.WARNING)
    if case.get("threads"):
        torch.set_num_threads(int(case["threads"]))
    record["torch_threads"] = torch.get_num_threads()
    record["rss_after_import_gib"] = rss_bytes() / GIB

    config_dict = {"missing_rate": case["missing_rate"], "show_progress": False, **case["overrides"]}
    if case["solver"] is not None:
        config_dict["ot_solver"] = case["solver"]
    record["stage"] = "dataset"
    start = time.perf_counter()
    config = build_config(case["model"], case["dataset"], config_files, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    record["dataset_s"] = time.perf_counter() - start
    record.update(
        users=dataset.user_num - 1,  # RecBole's id 0 is padding
        items=dataset.item_num - 1,
        interactions=dataset.inter_num,
        train_interactions=train_data._dataset.inter_num,
        steps_per_epoch=len(train_data),
        train_batch_size=config["train_batch_size"],
        device=str(config["device"]),
        feature_dims={m: int(f.shape[1]) for m, f in getattr(dataset, "modality_features", {}).items()},
    )
    report(record)

    record["stage"] = "model"
    start = time.perf_counter()
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(case["model"])(config, train_data._dataset).to(config["device"])
    device = torch.device(config["device"])
    _sync(device)
    record["model_s"] = time.perf_counter() - start
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["rss_after_build_gib"] = rss_bytes() / GIB
    record["peak_rss_after_build_gib"] = peak_rss_bytes() / GIB
    if device.type == "cuda":
        record["gpu_after_build_gib"] = torch.cuda.memory_allocated(device) / GIB
    report(record)

    record["stage"] = "train"
    weight_decay = config["weight_decay"] or 0.0
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=weight_decay)
    clip = config["clip_grad_norm"]

    def step(batches):
        interaction = next(batches).to(device)
        optimizer.zero_grad()
        losses = model.calculate_loss(interaction)
        loss = sum(losses) if isinstance(losses, tuple) else losses
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), **clip)
        optimizer.step()
        _sync(device)
        return float(loss.detach())

    def epochs():
        while True:  # RecBole's loader reshuffles and resamples negatives at every pass
            model.train()  # a new epoch: ot_plan_refresh=epoch solves its plans at the first step
            yield from train_data

    batches = epochs()
    record["warmup_step_s"], record["step_s"] = [], []
    budget = case.get("budget_s") or float("inf")
    for key, count in (("warmup_step_s", case["warmup"]), ("step_s", case["steps"])):
        for _ in range(count):
            start = time.perf_counter()
            record["loss"] = step(batches)
            record[key].append(time.perf_counter() - start)
            record["peak_rss_gib"] = peak_rss_bytes() / GIB
            report(record)
            # Slow cases (the dense solver at 18k+ items) stop early: one warm-up step when
            # it alone takes a quarter of the budget, timed steps once another would overrun it.
            spent = sum(record[key])
            if key == "warmup_step_s" and spent > budget / 4:
                break
            if key == "step_s" and spent + spent / len(record[key]) > budget:
                break
    if len(record["step_s"]) < case["steps"]:
        record["steps_cut_by_budget"] = True
    if record["step_s"]:
        timed = record["step_s"]
        record["s_per_step"] = sum(timed) / len(timed)
        per_epoch = record["s_per_step"] * record["steps_per_epoch"]
        refresh = getattr(getattr(model, "transport", None), "refresh", None)
        record["ot_plan_refresh"] = refresh
        if refresh == "epoch" and record["warmup_step_s"]:
            # The epoch's plans are solved in its first step only; timed steps reuse them.
            record["plan_solve_s_est"] = max(record["warmup_step_s"][0] - record["s_per_step"], 0.0)
            per_epoch += record["plan_solve_s_est"]
        record["s_per_epoch_extrapolated"] = per_epoch
    if case["full_epoch"]:
        record["stage"] = "full epoch"
        model.train()
        start = time.perf_counter()
        full = iter(train_data)
        for _ in range(len(train_data)):
            step(full)
        record["s_per_epoch_measured"] = time.perf_counter() - start
    if device.type == "cuda":
        record["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB


def child_main(spec_file, out_file):
    spec = json.loads(Path(spec_file).read_text())

    def progress(record):
        tmp = out_file + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(record, handle, default=str)
        os.replace(tmp, out_file)

    run_case(spec["case"], spec["config_files"], progress)
    return 0


# ----------------------------------------------------------------------------- the parent


def machine_info():
    info = {
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_total_gib"] = int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    try:
        from importlib.metadata import version

        info["torch"] = version("torch")
        info["recbole"] = version("recbole")
    except Exception:  # noqa: BLE001 - informational
        pass
    return info


def read_results(path):
    records = []
    if Path(path).is_file():
        with open(path) as handle:
            for line in handle:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        print(f"[warn] skipping unreadable line in {path}", file=sys.stderr)
    return records


def latest_by_key(records):
    latest = {}
    for record in records:
        if "key" in record:
            latest[record["key"]] = record
    return latest


def default_mem_limit_gib(cap=20.0):
    """20 GiB, or less when the machine has less available (the limit must bind before the kernel's OOM killer)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable"):
                return round(min(cap, int(line.split()[1]) * 1024 / GIB - 1.0), 1)
    except OSError:
        pass
    return cap


def run_subprocess(case, config_files, args, machine):
    """Run ``case`` in a fresh process under the memory and time limits; return its record."""
    workdir = Path(args.workdir).resolve()
    (workdir / "cases").mkdir(parents=True, exist_ok=True)
    name = f"{case['dataset']}-{case['model']}-{case['solver'] or 'none'}-{int(time.time())}"
    spec_file = workdir / "cases" / f"{name}.json"
    out_file = workdir / "cases" / f"{name}.result.json"
    log_file = workdir / "cases" / f"{name}.log"
    spec_file.write_text(json.dumps({"case": case, "config_files": config_files}))
    limit = int(args.mem_limit_gib * GIB) if args.mem_limit_gib > 0 else None

    def limits():
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_file), str(out_file)],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limits,
            start_new_session=True,
        )
        timed_out = False
        try:
            returncode = process.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)  # the group of this child only
            returncode = process.wait()
    wall = time.perf_counter() - start
    record = json.loads(out_file.read_text()) if out_file.is_file() else {"status": "running", "stage": "start"}
    if timed_out:
        record["status"] = "timed out"
        record["error"] = f"wall-time limit {args.timeout} s reached during stage '{record.get('stage')}'"
    elif returncode != 0 and record.get("status") in ("running", "ok"):
        if returncode < 0:
            sig = signal.Signals(-returncode).name
            oom = " (likely the kernel's OOM killer)" if -returncode == signal.SIGKILL else ""
            record["status"] = "out of memory" if oom else "error"
            record["error"] = f"killed by {sig}{oom} during stage '{record.get('stage')}'"
        else:
            record["status"] = "error"
            record["error"] = f"exit status {returncode} during stage '{record.get('stage')}'"
    if record["status"] != "ok":
        tail = log_file.read_text()[-1500:] if log_file.is_file() else ""
        record.setdefault("log_tail", tail)
        # an allocation failure outside Python (abort) still says so in the log
        if record["status"] == "error" and any(m in tail.lower() for m in OOM_MARKERS):
            record["status"] = "out of memory"
    # The timed steps stand even when a later stage failed; say what is partial.
    if record.get("step_s") and "s_per_step" not in record:
        record["s_per_step"] = sum(record["step_s"]) / len(record["step_s"])
        record["s_per_step_partial"] = True
        if record.get("steps_per_epoch"):
            record["s_per_epoch_extrapolated"] = record["s_per_step"] * record["steps_per_epoch"]
    record.update(
        key=case_key(case),
        case=case,
        wall_s=wall,
        mem_limit_gib=args.mem_limit_gib if limit else None,
        timeout_s=args.timeout,
        loadavg_before=load_before,
        loadavg_after=os.getloadavg(),
        machine=machine,
        log_file=str(log_file),
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    for path in (spec_file, out_file):
        path.unlink(missing_ok=True)
    return record


# ----------------------------------------------------------------------------- the table


def _fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ratio(value, base):
    if value is None or not base:
        return "–"
    return f"{value / base:.1f}×" if value / base >= 10 else f"{value / base:.2f}×"


def baseline_key(case):
    only = ci2mg_only_keys()
    base = dict(case, model=BASELINE, solver=None, overrides={k: v for k, v in case["overrides"].items() if k not in only})
    return case_key(base)


def markdown_table(cases, records):
    by_key = latest_by_key(records)
    lines = [
        "| dataset | items | users | train inter. | model | solver | overrides | s/step | steps/epoch "
        "| s/epoch (extrapolated) | × LightGCN s/epoch | RSS after build GiB | peak RSS GiB "
        "| × LightGCN peak | status |",
        "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        record = by_key.get(case_key(case))
        if record is None:
            continue
        base = by_key.get(baseline_key(case))
        base_ok = base if base is not None and base.get("status") == "ok" else None
        epoch = record.get("s_per_epoch_extrapolated")
        if record.get("s_per_epoch_measured") is not None:
            epoch_text = f"{_fmt(epoch)} (measured {_fmt(record['s_per_epoch_measured'])})"
        else:
            epoch_text = _fmt(epoch)
        overrides = ", ".join(f"{k}={v}" for k, v in case["overrides"].items()) or "–"
        status = record.get("status", "?")
        if status == "ok" and record.get("steps_cut_by_budget"):
            status = f"ok, {len(record['step_s'])} of {case['steps']} timed steps (time budget)"
        if status not in ("ok",) and not status.startswith("ok,"):
            status = f"{status} ({record.get('stage', '?')}"
            if status.startswith("out of memory") and record.get("mem_limit_gib"):
                status += f", limit {record['mem_limit_gib']} GiB"
            if status.startswith("timed out") and record.get("timeout_s"):
                status += f", limit {record['timeout_s']} s"
            status += ")"
            if record.get("s_per_step_partial"):
                status += f", {len(record['step_s'])} of {case['steps']} steps"
        peak = record.get("peak_rss_gib")
        lines.append(
            "| " + " | ".join([
                case["dataset"], _fmt(record.get("items")), _fmt(record.get("users")),
                _fmt(record.get("train_interactions")), case["model"], case["solver"] or "–", overrides,
                _fmt(record.get("s_per_step"), 3), _fmt(record.get("steps_per_epoch")), epoch_text,
                _ratio(epoch, base_ok and base_ok.get("s_per_epoch_extrapolated")),
                _fmt(record.get("rss_after_build_gib")), _fmt(peak),
                _ratio(peak, base_ok and base_ok.get("peak_rss_gib")), status,
            ]) + " |"
        )
    return "\n".join(lines)


def machine_line(records):
    machines = [r["machine"] for r in records if r.get("machine")]
    if not machines:
        return ""
    m = machines[-1]
    threads = sorted({r.get("torch_threads") for r in records if r.get("torch_threads")})
    return (f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count')} cores, {_fmt(m.get('mem_total_gib'), 1)} GiB, "
            f"torch {m.get('torch')}, RecBole {m.get('recbole')}, torch threads {threads}, "
            f"OMP_NUM_THREADS={m.get('OMP_NUM_THREADS')}. s/epoch = s/step × steps/epoch (extrapolated).")


# ----------------------------------------------------------------------------- command line


def parse_dims(text):
    dims = {}
    for part in text.split(","):
        modality, _, dim = part.partition("=")
        dims[modality.strip()] = int(dim)
    return dims


def build_parser():
    parser = argparse.ArgumentParser(
        description="Epoch time and peak memory of CI2MG (dense | scalable OT) against LightGCN, per dataset.",
        epilog="Any other --key=value is a RecBole config override, part of the case key.",
    )
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS,
                        help=f"default: {' '.join(DEFAULT_DATASETS)} (also: baby, or any converted dataset)")
    parser.add_argument("--models", nargs="+", help="run these models on every dataset (default: per dataset, "
                        "LightGCN, [LightGCN-M on tiktok,] CI2MG)")
    parser.add_argument("--solvers", nargs="+", choices=["scalable", "dense", "prototype"],
                        help="CI2MG solvers (default: scalable and dense)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (default 5)")
    parser.add_argument("--budget-s", type=float, default=900.0,
                        help="time budget of the timed steps, s: fewer warm-up/timed steps (at least one each) "
                             "when steps are slow; 0 for none (default 900)")
    parser.add_argument("--full-epoch", action="store_true", help="also time one whole training epoch")
    parser.add_argument("--missing-rate", type=float, default=0.9, help="missing_rate of every case (default 0.9)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in each case (default: the environment's, e.g. OMP_NUM_THREADS)")
    parser.add_argument("--mem-limit-gib", type=float, default=None,
                        help="address-space limit (RLIMIT_AS) of each case, GiB; 0 for none (default: 20, "
                             "or the machine's available memory less 1 GiB when that is lower)")
    parser.add_argument("--timeout", type=int, default=3600, help="wall-time limit of each case, s (default 3600)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "ci2mg_scaling.jsonl"))
    parser.add_argument("--workdir", default=None, help="cwd of the cases, and their logs (default: the cwd)")
    parser.add_argument("--data-dir", default="/tmp/ci2mg_scaling/dataset",
                        help="where the converted datasets and their YAML go (default /tmp/ci2mg_scaling/dataset)")
    parser.add_argument("--shared-dir", default=str(SHARED), help="the published datasets (../shared/datasets)")
    parser.add_argument("--layout", choices=["mmrec", "mmssl", "diffmm"], default=None,
                        help="published layout of a dataset dataset_prep does not know (synthetic features)")
    parser.add_argument("--synthetic-dims", type=parse_dims, default=dict(SYNTHETIC_DIMS),
                        help="synthetic modalities, e.g. v=4096,t=1024 (default)")
    parser.add_argument("--synthetic-seed", type=int, default=SYNTHETIC_SEED)
    parser.add_argument("--redo-failed", action="store_true", help="rerun cases recorded as failed")
    parser.add_argument("--table-only", action="store_true", help="print the table of recorded cases, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="list the cases and whether they would run")
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1], argv[2])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(extra)
    except ValueError as error:
        parser.error(str(error))
    args.workdir = args.workdir or os.getcwd()
    if args.mem_limit_gib is None:
        args.mem_limit_gib = default_mem_limit_gib()
    cases = planned_cases(args, overrides)
    records = read_results(args.results)
    done = latest_by_key(records)

    if not args.table_only:
        machine = machine_info()
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        prepared = {}
        for index, case in enumerate(cases, 1):
            label = f"[{index}/{len(cases)}] {case['dataset']} {case['model']} {case['solver'] or ''} {case['overrides'] or ''}"
            previous = done.get(case_key(case))
            if previous is not None and (previous.get("status") == "ok" or not args.redo_failed):
                print(f"{label}: recorded ({previous.get('status')}), skipped", flush=True)
                continue
            if args.dry_run:
                print(f"{label}: would run", flush=True)
                continue
            if case["dataset"] not in prepared:
                prepared[case["dataset"]] = prepare_dataset(case["dataset"], case["synthetic"], args)
            print(f"{label}: running (limits {args.mem_limit_gib} GiB, {args.timeout} s)", flush=True)
            record = run_subprocess(case, prepared[case["dataset"]], args, machine)
            with open(args.results, "a") as handle:
                handle.write(json.dumps(record, default=str) + "\n")
            records.append(record)
            done[record["key"]] = record
            print(f"{label}: {record['status']}, s/step {_fmt(record.get('s_per_step'), 3)}, "
                  f"s/epoch (extrapolated) {_fmt(record.get('s_per_epoch_extrapolated'))}, "
                  f"peak RSS {_fmt(record.get('peak_rss_gib'))} GiB, wall {record['wall_s']:.0f} s", flush=True)
    if args.dry_run:
        return 0
    relevant = [done[case_key(c)] for c in cases if case_key(c) in done]
    print()
    print(markdown_table(cases, records))
    print()
    print(machine_line(relevant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
