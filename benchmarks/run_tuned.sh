#!/usr/bin/env bash
# Issue 12's tuned table: each model at the configuration its equal-budget search chose on
# validation (benchmarks/tune_equal_budget.sh; the "best" of benchmarks/results/tuning/
# tiktok_missing0.9_<model>.result.json), trained at seeds 2020-2022 on TikTok at 90 % missing.
# Records (with per-user test scores) go to benchmarks/results/tiktok_missing0.9_tuned.jsonl;
# the runner's claims let two processes share the runs and a rerun skips recorded ones.
#
#   OMP_NUM_THREADS=1 bash benchmarks/run_tuned.sh LightGCN FREEDOM CI2MG
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
for model in "$@"; do
    flags=$(python - "$REPO/benchmarks/results/tuning/tiktok_missing0.9_$model.result.json" <<'PY'
import json, sys
best = json.load(open(sys.argv[1]))["best"]["params"]
print(" ".join(f"--{key}={value!r}" for key, value in sorted(best.items())))
PY
)
    # shellcheck disable=SC2086  # one word per setting
    python "$REPO/run_recbole.py" --model="$model" --dataset=tiktok --missing_rate=0.9 --seeds=2020,2021,2022 \
        $flags --show_progress=False --results="$REPO/benchmarks/results/tiktok_missing0.9_tuned.jsonl"
done
