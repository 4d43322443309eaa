"""Markdown tables of the equal-budget searches (benchmarks/tune_equal_budget.sh), from their trial logs.

    python benchmarks/tuning_table.py [benchmarks/results/tuning]

One row per model: trials recorded, the best trial (chosen on validation Recall@20, as the
search chooses it) with its parameters and its test Recall@20 at the same epoch. Then every trial.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recbole_ci2mg

from recbole_ci2mg.compat import best_trial  # noqa: E402
from recbole_ci2mg.results import json_lines  # noqa: E402


COMMON = ("missing_rate", "show_progress")  # fixed for every search of the protocol


def read_trials(path):
    lines = [entry for _, entry in json_lines(path, "a trial")]
    return lines[0]["search"], lines[1:]


def short(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(folder="benchmarks/results/tuning"):
    logs = sorted(Path(folder).glob("*.trials.jsonl"))
    print("| model | trials | best valid R@20 % | its test R@20 % | best parameters |")
    print("|---|---:|---:|---:|---|")
    every = []
    for path in logs:
        search, trials = read_trials(path)
        if not trials:
            continue
        best = best_trial(trials, bigger=True)  # Recall@20: bigger is better
        params = ", ".join(f"{k} {short(v)}" for k, v in sorted(best["params"].items()))
        label = search["model"] + "".join(f", {k} {v}" for k, v in sorted(search["fixed"].items()) if k not in COMMON)
        print(f"| {label} | {len(trials)} | {100 * best['valid_score']:.2f} | "
              f"{100 * best['test_result']['recall@20']:.2f} | {params} |")
        every.append((label, trials))
    for model, trials in every:
        print(f"\n{model}, every trial in run order (valid / test Recall@20 %):\n")
        for trial in trials:
            params = ", ".join(f"{k} {short(v)}" for k, v in sorted(trial["params"].items()))
            print(f"- {100 * trial['valid_score']:.2f} / {100 * trial['test_result']['recall@20']:.2f}: {params}")


if __name__ == "__main__":
    main(*sys.argv[1:])
