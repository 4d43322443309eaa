r"""Comparison tables and the missing-rate plot, built from a results file's records.

One row per (dataset, missing rate, model, overrides, config files), its
seeds pooled: test metrics as mean ± sample standard deviation over seeds,
seconds per training epoch, best epochs, a two-sided Wilcoxon
signed-rank test of the section's first row against the row on per-user test
Recall@20, and a two-sided paired t-test of the same over the seeds (each seed
one observation: the per-user test averages the seed-to-seed spread away).
Records that hold ``test_segments`` add test Recall@20 within cold items (no
training interaction: the new items of ``new_item_rate``, and any item the
split gives none) and within warm items; older records show n/a
there, and a table none of whose rows has a cold test interaction (or the
breakdown at all) shows no such columns.
Written as Markdown (best mean of each column in bold), CSV (fractions, not
%, one column per statistic), LaTeX, and, when a dataset has several missing
rates, a PNG of test Recall@20 against the rate (the paper's Figure 3).
"""

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
from scipy.stats import ttest_rel, wilcoxon

from recbole_ci2mg.results import load_per_user, record_key

METRICS = ("recall@20", "ndcg@20", "precision@20")
METRIC_NAMES = {"recall@20": "Recall@20", "ndcg@20": "NDCG@20", "precision@20": "Precision@20",
                "cold_recall@20": "Recall@20 cold items", "warm_recall@20": "Recall@20 warm items"}
TEST_METRIC = "recall@20"  # the per-user score of the Wilcoxon test
# Test Recall@20 within each item segment (recbole_ci2mg.trainer.segment_recall), from a record's test_segments.
SEGMENT_METRICS = ("cold_recall@20", "warm_recall@20")
COLUMNS = METRICS + SEGMENT_METRICS


def record_value(record, metric):
    """A record's test value of ``metric`` (a segment metric from its ``test_segments``), or None."""
    if metric in SEGMENT_METRICS:
        segment, _, name = metric.partition("_")
        return ((record.get("test_segments") or {}).get(segment) or {}).get(name)
    return record["test"].get(metric)


def paired_wilcoxon(reference, other):
    r"""Two-sided Wilcoxon signed-rank test of two ``{user: score}`` maps over their common users.

    ``scipy.stats.wilcoxon`` with its defaults: users whose two scores are
    equal are dropped (``zero_method="wilcox"``), and large samples use the
    normal approximation.

    Returns:
        tuple: ``(p, n_users)``; ``p`` is None when there is nothing to test
        (no common user, or every difference zero).
    """
    users = sorted(set(reference) & set(other))
    x = np.array([reference[user] for user in users])
    y = np.array([other[user] for user in users])
    if not users or np.all(x == y):
        return None, len(users)
    return float(wilcoxon(x, y, alternative="two-sided").pvalue), len(users)


def paired_seed_ttest(reference, other):
    r"""Two-sided paired t-test of two ``{seed: test score}`` maps over their common seeds.

    Returns:
        tuple: ``(p, seeds)``; ``p`` is None with fewer than two common seeds
        or when every seed's difference is the same (no spread to test against).
    """
    seeds = sorted(set(reference) & set(other))
    x = np.array([reference[seed] for seed in seeds])
    y = np.array([other[seed] for seed in seeds])
    if len(seeds) < 2 or np.allclose(x - y, (x - y)[0]):
        return None, seeds
    return float(ttest_rel(x, y).pvalue), seeds


def pooled_scores(per_user_runs, metric=TEST_METRIC):
    r"""``{user: mean over runs of the user's metric}``, over the users every run has.

    Args:
        per_user_runs (list): one ``{"user_id": ..., metric: ...}`` per seed.
    """
    by_run = [dict(zip(run["user_id"].tolist(), run[metric].tolist())) for run in per_user_runs]
    users = set.intersection(*(set(scores) for scores in by_run))
    return {user: float(np.mean([scores[user] for scores in by_run])) for user in users}


def summarise(records, results=None):
    r"""Table rows from records, in the order their first record appears.

    Args:
        records (list): records of :mod:`recbole_ci2mg.results`.
        results (str or Path): the results file, whose folder holds the
            per-user files the records name.

    Returns:
        list: one dict per row with ``dataset``, ``missing_rate``, ``model``,
        ``overrides``, ``label``, ``seeds``, ``mean`` and ``std`` (metric ->
        value, for :data:`COLUMNS`; None where no record has it),
        ``cold_counts`` (the (users, interactions) of the cold segment),
        ``best`` (metrics whose best mean in the section this is),
        ``seconds``, ``best_epochs``, ``per_seed`` (seed -> that run's
        per-user scores, or None), ``common`` (the overrides every row of the
        dataset shares, left out of the labels), ``reference`` (the section's
        first row's label), ``p``, ``n_users`` and ``test_seeds`` (Wilcoxon
        test against it over the seeds both rows have; p is None where
        untestable), ``test_status`` ("reference", "tested", "no per-user
        scores", "no common seed" or "no difference"), and ``seed_p`` and
        ``seed_p_seeds`` (the paired t-test over seeds, :func:`paired_seed_ttest`;
        None for the reference). A section is one dataset at one missing rate.
    """
    # The latest record of a run wins if a file holds it twice.
    latest = {record_key(record): record for record in records}
    groups = {}
    for record in latest.values():
        row_key = (
            record["dataset"],
            float(record["missing_rate"]),
            record["model"],
            json.dumps(record.get("overrides") or {}, sort_keys=True),
            json.dumps(list(record.get("config_files") or [])),
        )
        groups.setdefault(row_key, []).append(record)

    rows = [_row(group, results) for group in groups.values()]
    _label(rows)
    for section in _sections(rows).values():
        _mark_best(section)
        _test_against_first(section)
    return rows


def _row(group, results):
    first = group[0]
    per_user = [load_per_user(record, results) for record in group] if results else [None]
    seconds = [r["train_epoch_seconds"] for r in group if r.get("train_epoch_seconds") is not None]
    values = {metric: [v for v in (record_value(r, metric) for r in group) if v is not None] for metric in COLUMNS}
    cold = [(r.get("test_segments") or {}).get("cold") for r in group]
    return {
        "dataset": first["dataset"],
        "missing_rate": float(first["missing_rate"]),
        "model": first["model"],
        "overrides": first.get("overrides") or {},
        "config_files": list(first.get("config_files") or []),
        "seeds": [r["seed"] for r in group],
        "mean": {m: float(np.mean(v)) if v else None for m, v in values.items()},
        # Sample standard deviation; undefined for a single seed.
        "std": {m: float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in values.items()},
        "seconds": float(np.mean(seconds)) if seconds else None,
        "best_epochs": [r.get("best_epoch") for r in group],
        "per_seed": dict(zip((r["seed"] for r in group), per_user)) if all(p is not None for p in per_user) else None,
        "seed_scores": {r["seed"]: r["test"][TEST_METRIC] for r in group if r["test"].get(TEST_METRIC) is not None},
        "cold_counts": sorted({(c["users"], c["interactions"]) for c in cold if c}),
    }


def _label(rows):
    r"""Label each row by its model and the overrides that tell it apart from its dataset's other rows.

    Overrides every row of a dataset shares are in the footnote instead
    (``common``). Booleans read ``+name`` (on) or ``-name`` (off), so
    ablation rows are labelled by their switches.
    """
    for dataset_rows in _by(rows, "dataset").values():
        shared = dict(dataset_rows[0]["overrides"])
        for row in dataset_rows[1:]:
            shared = {k: v for k, v in shared.items() if k in row["overrides"] and row["overrides"][k] == v}
        for row in dataset_rows:
            parts = [
                (f"+{key}" if value else f"-{key}") if isinstance(value, bool) else f"{key}={value}"
                for key, value in row["overrides"].items()
                if key not in shared
            ]
            if row["config_files"] and any(r["config_files"] != row["config_files"] for r in dataset_rows):
                parts.append("config " + " ".join(row["config_files"]))
            row["label"] = " ".join([row["model"], *parts])
            row["common"] = shared


def _by(rows, *fields):
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[field] for field in fields), []).append(row)
    return groups


def _sections(rows):
    """Rows compared with each other: one dataset at one missing rate."""
    return _by(rows, "dataset", "missing_rate")


def _mark_best(section):
    for row in section:
        row["best"] = set()
    for metric in COLUMNS:
        means = [row["mean"][metric] for row in section if row["mean"][metric] is not None]
        if not means:
            continue
        for row in section:
            if row["mean"][metric] is not None and np.isclose(row["mean"][metric], max(means)):
                row["best"].add(metric)


def _test_against_first(section):
    r"""Each row's Wilcoxon test against the section's first row, on per-user scores averaged over
    the seeds both rows have: a mean over three seeds against one seed's scores would differ in
    spread alone, and the signed-rank test would read that as a difference."""
    reference = section[0]
    for row in section:
        row["reference"] = reference["label"]
        row["p"], row["n_users"], row["test_seeds"] = None, None, []
        row["seed_p"], row["seed_p_seeds"] = (None, []) if row is reference else paired_seed_ttest(
            reference["seed_scores"], row["seed_scores"])
        if row is reference:
            row["test_status"] = "reference"
        elif reference["per_seed"] is None or row["per_seed"] is None:
            row["test_status"] = "no per-user scores"
        elif not (shared := sorted(set(reference["per_seed"]) & set(row["per_seed"]))):
            row["test_status"] = "no common seed"
        else:
            row["test_seeds"] = shared
            pooled = [pooled_scores([r["per_seed"][seed] for seed in row["test_seeds"]]) for r in (reference, row)]
            row["p"], row["n_users"] = paired_wilcoxon(*pooled)
            row["test_status"] = "tested" if row["p"] is not None else "no difference"


def _metric_cell(row, metric, bold):
    mean, std = row["mean"][metric], row["std"][metric]
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"
    return bold(text) if metric in row["best"] else text


def _p_cell(row):
    return {
        "reference": "—",
        "no per-user scores": "n/a",
        "no difference": "n/a (equal)",
        "no common seed": "n/a (no common seed)",
    }.get(row["test_status"]) or f"{row['p']:.2g}"


def _seed_p_cell(row):
    if row["test_status"] == "reference":
        return "—"
    return "n/a" if row["seed_p"] is None else f"{row['seed_p']:.2g}"


def _shown_metrics(rows):
    """The metric columns of a table: the segment ones only when a row has test interactions with cold items."""
    has_cold = any(row["mean"]["cold_recall@20"] is not None for row in rows)
    return COLUMNS if has_cold else METRICS


def _cells(row, bold, metrics=METRICS):
    """The cells of a row as the Markdown and LaTeX tables show them."""
    return [
        f"{row['missing_rate']:g}",
        row["label"],
        ", ".join(map(str, row["seeds"])),
        *(_metric_cell(row, metric, bold) for metric in metrics),
        f"{row['seconds']:.2f}" if row["seconds"] is not None else "n/a",
        ", ".join("n/a" if e is None else str(e) for e in row["best_epochs"]),
        _p_cell(row),
        _seed_p_cell(row),
    ]


def header(metrics=METRICS):
    return ["missing", "model", "seeds", *(f"{METRIC_NAMES[m]} (%)" for m in metrics),
            "s / train epoch", "best epoch", "Wilcoxon p", "seeds t p"]


def footnote(rows):
    r"""What the table's numbers are, and exactly what the Wilcoxon column tested."""
    references = sorted({row["reference"] for row in rows})
    users = sorted({row["n_users"] for row in rows if row["n_users"]})
    tested_users = f" ({' / '.join(map(str, users))} users)" if users else ""
    common = {k: v for row in rows for k, v in row["common"].items()}
    lines = [
        "Test metrics in %, mean ± sample standard deviation over the seeds listed (one seed: its "
        "value); bold: the best mean of the column at that missing rate. s / train epoch: mean over "
        "seeds of the mean training-epoch time (evaluation excluded). best epoch: the epoch whose "
        "validation Recall@20 was kept, per seed, counted from 0.",
        f"Wilcoxon p: two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences "
        f"dropped) of the per-user test Recall@20 of the first row at the same missing rate "
        f"({', '.join(references)}) against this row's, paired by user over the test users both "
        f"have{tested_users}; each user's score is the mean of that user's Recall@20 over the seeds "
        f"both rows have (a row with fewer seeds than the first is tested on those alone). —: the "
        f"reference row; n/a: per-user scores not recorded for this row or the reference; n/a "
        f"(equal): every user's score is the same; n/a (no common seed): the two rows share no seed.",
        "seeds t p: two-sided paired t-test (scipy.stats.ttest_rel) of the first row's test Recall@20 against "
        "this row's, paired by seed over the seeds both rows have, each seed one observation. The Wilcoxon "
        "test's users are many but its per-user means average the seed-to-seed spread away, so it can call a "
        "difference that another draw of seeds would not repeat; this test keeps that spread, and with three "
        "seeds it finds only large differences. n/a: fewer than two common seeds, or the same difference at "
        "every seed.",
    ]
    if _shown_metrics(rows) != METRICS:
        counts = sorted({count for row in rows for count in row["cold_counts"]})
        described = " / ".join(f"{users} users, {n} interactions" for users, n in counts)
        lines.append(
            f"Recall@20 cold items: test Recall@20 within the test interactions whose item has no training "
            f"interaction (the new items drawn at new_item_rate, and any item the split gives none; "
            f"{described or 'none'}); warm items: within the others. Per user, the user's test items "
            f"of that segment in the top 20 over their number, averaged over the users having any; the top 20 "
            f"is the full ranking, not one per segment. n/a: no test interaction in that segment, or "
            f"not recorded (runs recorded before the breakdown was kept)."
        )
    if common:
        lines.append("All rows: " + ", ".join(f"{k}={v}" for k, v in common.items()) + ".")
    return lines


def markdown(rows):
    r"""The rows as Markdown, one table per dataset, with the footnote."""
    out = []
    for (dataset,), dataset_rows in _by(rows, "dataset").items():
        metrics = _shown_metrics(dataset_rows)
        head = header(metrics)
        out += [f"### {dataset}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(_cells(row, lambda text: f"**{text}**", metrics)) + " |" for row in dataset_rows]
        out += [""] + footnote(dataset_rows) + [""]
    return "\n".join(out)


def latex(rows):
    r"""The rows as LaTeX ``tabular`` environments (booktabs rules), best means in bold."""
    def escape(text):
        return text.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("—", "--")

    out = []
    for (dataset,), dataset_rows in _by(rows, "dataset").items():
        metrics = _shown_metrics(dataset_rows)
        head = header(metrics)
        out += [f"% {dataset}", r"\begin{tabular}{rl" + "l" * (len(head) - 2) + "}", r"\toprule"]
        out.append(" & ".join(escape(h) for h in head) + r" \\")
        out.append(r"\midrule")
        for row in dataset_rows:
            cells = _cells(row, lambda text: f"BOLD{{{text}}}", metrics)
            out.append(" & ".join(escape(c).replace("BOLD{", r"\textbf{") for c in cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


def write_csv(rows, path):
    r"""The rows as CSV: metric fractions (RecBole's scale), one column per statistic."""
    fields = ["dataset", "missing_rate", "model", "label", "overrides", "seeds"]
    fields += [f"{m}_{stat}" for m in COLUMNS for stat in ("mean", "std")]
    fields += ["cold_test_users", "best", "train_epoch_seconds", "best_epochs", "wilcoxon_reference", "wilcoxon_p",
               "wilcoxon_users", "wilcoxon_seeds", "wilcoxon_status", "seeds_ttest_p", "seeds_ttest_seeds"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({
                "dataset": row["dataset"],
                "missing_rate": row["missing_rate"],
                "model": row["model"],
                "label": row["label"],
                "overrides": json.dumps(row["overrides"], sort_keys=True),
                "seeds": ";".join(map(str, row["seeds"])),
                **{f"{m}_{stat}": row[stat][m] for m in COLUMNS for stat in ("mean", "std")},
                "cold_test_users": ";".join(f"{users}/{n}" for users, n in row["cold_counts"]),
                "best": ";".join(m for m in COLUMNS if m in row["best"]),
                "train_epoch_seconds": row["seconds"],
                "best_epochs": ";".join(map(str, row["best_epochs"])),
                "wilcoxon_reference": row["reference"],
                "wilcoxon_p": row["p"],
                "wilcoxon_users": row["n_users"],
                "wilcoxon_seeds": ";".join(map(str, row["test_seeds"])),
                "wilcoxon_status": row["test_status"],
                "seeds_ttest_p": row["seed_p"],
                "seeds_ttest_seeds": ";".join(map(str, row["seed_p_seeds"])),
            })


def plot_missing_rates(rows, path):
    r"""Test Recall@20 (mean over seeds, std as error bars) against the missing rate, one line per row label.

    One panel per dataset; written with matplotlib's Agg canvas, so no
    display is needed and the caller's pyplot backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = _by(rows, "dataset")
    figure = Figure(figsize=(5.5 * len(datasets), 4), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, ((dataset,), dataset_rows) in zip(np.atleast_1d(figure.subplots(1, len(datasets))), datasets.items()):
        for (label,), line in _by(dataset_rows, "label").items():
            line = sorted(line, key=lambda row: row["missing_rate"])
            axes.errorbar(
                [row["missing_rate"] for row in line],
                [100 * row["mean"][TEST_METRIC] for row in line],
                yerr=[100 * (row["std"][TEST_METRIC] or 0.0) for row in line],
                marker="o", capsize=3, label=textwrap.fill(label, 60),
            )
        axes.set(title=dataset, xlabel="missing rate", ylabel="test Recall@20 (%)")
        axes.grid(alpha=0.3)
        # below the panel: a label carries the row's overrides and can be longer than the panel is wide
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0.0, -0.2))
    figure.savefig(path, dpi=150, bbox_inches="tight")


def write_tables(records, prefix, results=None):
    r"""Write ``prefix.md``, ``prefix.csv``, ``prefix.tex`` and, for a missing-rate sweep, ``prefix.png``.

    Returns:
        tuple: ``(markdown text, list of written paths)``.
    """
    rows = summarise(records, results)
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows)
    paths = [prefix.with_name(prefix.name + ext) for ext in (".md", ".csv", ".tex")]
    paths[0].write_text(text)
    write_csv(rows, paths[1])
    paths[2].write_text(latex(rows))
    if any(len({row["missing_rate"] for row in dataset_rows}) > 1 for dataset_rows in _by(rows, "dataset").values()):
        paths.append(prefix.with_name(prefix.name + ".png"))
        plot_missing_rates(rows, paths[-1])
    return text, paths
