#!/usr/bin/env bash
# Issue 12's tuning with equal budgets: every model gets the same search (random, 8 trials,
# sampler seed 2020, selection on validation Recall@20 only) over its own search space
# (properties/hyper/<model>.hyper), on TikTok at 90 % missing. Resumable: rerun the same
# command and the recorded trials (benchmarks/results/tuning/*.trials.jsonl) are skipped.
#
#   OMP_NUM_THREADS=1 bash benchmarks/tune_equal_budget.sh LightGCN FREEDOM   # one process
#   OMP_NUM_THREADS=1 bash benchmarks/tune_equal_budget.sh CI2MG NCL          # a second one
#
# Checkpoints go to ./saved of the folder it is started from (run it from a scratch folder).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$REPO/benchmarks/results/tuning"
mkdir -p "$OUT"
for model in "$@"; do
    python "$REPO/run_hyper.py" --model="$model" --dataset=tiktok --missing_rate=0.9 \
        --params_file="$REPO/properties/hyper/$model.hyper" --algo=random --max_evals=8 --early_stop=8 \
        --search_seed=2020 --show_progress=False --output_file="$OUT/tiktok_missing0.9_$model.result"
done
