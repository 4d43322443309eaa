"""Benchmark RecBole's baselines through this package's pipeline.

    python benchmarks/baselines.py --datasets tiktok ml-100k-mm \
        --models BPR NGCF LightGCN SGL NCL --seed 2020 --out benchmarks/results/baselines.jsonl
    python benchmarks/baselines.py --table --out benchmarks/results/baselines.jsonl

Each finished run is appended to ``--out`` as one JSON line, and runs already
there are skipped, so an interrupted benchmark resumes where it stopped. The
Markdown table of everything in ``--out`` is printed at the end.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recbole_ci2mg.quick_start import run_recbole  # noqa: E402

# Hyperparameters that differ from RecBole's defaults, and why.
MODEL_OVERRIDES = {
    # The LightGCN setting whose TikTok numbers DEVELOPERS.md records
    # (9.27 / 8.53 / 9.00 % test Recall@20 on seeds 2020 / 2021 / 2022).
    "LightGCN": {"reg_weight": 1e-4},
}
# Per dataset: NCL's default 1000 user prototypes need at least 1000 users
# (faiss k-means refuses fewer points than clusters); ml-100k has 943.
DATASET_MODEL_OVERRIDES = {("ml-100k-mm", "NCL"): {"num_clusters": 100}}


def overrides(dataset, model):
    return {**MODEL_OVERRIDES.get(model, {}), **DATASET_MODEL_OVERRIDES.get((dataset, model), {})}


def machine():
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}"


def run_key(record):
    return (record["dataset"], record["model"], record["seed"], record["missing_rate"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=[])
    parser.add_argument("--models", nargs="+", default=["BPR", "NGCF", "LightGCN", "SGL", "NCL"])
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--missing_rate", type=float, default=0.0)
    parser.add_argument("--out", default="benchmarks/results/baselines.jsonl")
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA gpu_id such as 0")
    parser.add_argument("--table", action="store_true", help="only print the table of --out")
    args = parser.parse_args()
    if args.table:
        print(markdown_table([json.loads(line) for line in Path(args.out).read_text().splitlines()]))
        return
    sys.argv = sys.argv[:1]  # RecBole's Config would read our flags as config keys

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {run_key(json.loads(line)) for line in out.read_text().splitlines()} if out.exists() else set()
    for dataset in args.datasets:
        for model in args.models:
            key = (dataset, model, args.seed, args.missing_rate)
            if key in done:
                continue
            settings = {
                "seed": args.seed,
                "missing_rate": args.missing_rate,
                "show_progress": False,
                "use_gpu": args.device != "cpu",
                "gpu_id": "" if args.device == "cpu" else args.device,
                **overrides(dataset, model),
            }
            start = time.perf_counter()
            result = run_recbole(model, dataset, config_dict=settings, saved=True)
            record = {
                "dataset": dataset,
                "model": model,
                "seed": args.seed,
                "missing_rate": args.missing_rate,
                "overrides": overrides(dataset, model),
                "test": dict(result["test_result"]),
                "valid": dict(result["best_valid_result"]),
                "best_epoch": result["best_epoch"],
                "epochs_trained": result["epochs_trained"],
                "train_epoch_seconds": result["train_epoch_seconds"],
                "wall_seconds": time.perf_counter() - start,
                "machine": machine(),
                "device": args.device,
            }
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
    print(markdown_table([json.loads(line) for line in out.read_text().splitlines()]))


def markdown_table(records):
    lines = [
        "| dataset | model | missing | seed | Recall@20 | NDCG@20 | Precision@20 | best epoch | s / train epoch | wall s | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        t = r["test"]
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['missing_rate']} | {r['seed']} | "
            f"{100 * t['recall@20']:.2f} | {100 * t['ndcg@20']:.2f} | {100 * t['precision@20']:.2f} | "
            f"{r['best_epoch']} | {r['train_epoch_seconds']:.2f} | {r['wall_seconds']:.0f} | {r['device']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
