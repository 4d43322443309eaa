"""Benchmark RecBole's baselines (or any models) through this package's comparison runner.

    python benchmarks/baselines.py --datasets tiktok ml-100k-mm \
        --models BPR NGCF LightGCN SGL NCL --seed 2020 --out benchmarks/results/baselines.jsonl
    python benchmarks/baselines.py --table --out benchmarks/results/baselines.jsonl

A thin wrapper of :mod:`recbole_ci2mg.compare` (resumable JSONL records,
tables) that adds the benchmark's per-model settings below, which
``run_recbole.py`` cannot give one model at a time. The Markdown table of
everything in ``--out`` is printed at the end.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recbole_ci2mg.compare import plan_runs, run_comparison  # noqa: E402
from recbole_ci2mg.results import read_records  # noqa: E402
from recbole_ci2mg.tables import markdown, summarise  # noqa: E402

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

    if not args.table:
        settings = {"show_progress": False, "use_gpu": args.device != "cpu",
                    "gpu_id": "" if args.device == "cpu" else args.device}
        for dataset in args.datasets:
            runs = plan_runs(dataset, args.models, [args.seed], [args.missing_rate], settings=settings,
                             model_overrides={model: overrides(dataset, model) for model in args.models})
            run_comparison(runs, args.out)
    print(markdown(summarise(read_records(args.out), args.out)))


if __name__ == "__main__":
    main()
