"""Results files of issue 12's tables, from the runs of several sessions (BENCHMARKS.md, issue 12).

TikTok at 0 % missing: CI²MG-S's runs, beside the multimodal models' 0 % records and the
ID-only models' records. ID-only models read no content, so their runs at 90 % missing are
their 0 % runs (SimGCL was run at both and gives identical numbers, BENCHMARKS.md, issue 13):
their records are copied with ``missing_rate`` 0.0 and ``id_only_from_rate`` 0.9 added, so that
they sit in the same table section. Run from anywhere: ``python benchmarks/combine_issue12.py``,
then ``python -m recbole_ci2mg.compare --table-only --results=<file>`` for each file written.
"""
import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
ID_ONLY = {"LightGCN", "NCL"}


def read(name, keep=lambda r: True):
    path = R / name
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if keep(r)]


def as_rate_zero(record):
    return {**record, "missing_rate": 0.0, "id_only_from_rate": record["missing_rate"]}


def write(name, records):
    (R / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {R / name}: {len(records)} records")


others = read("tiktok_missing0.0_issue13_all.jsonl", lambda r: r["model"] in {"FREEDOM", "LightGCN-M", "DGMRec"})
others += read("tiktok_missing0.0_recweight.jsonl", lambda r: r["overrides"].get("rec_weight") == 0.01)
id_only = read("tiktok_missing0.9_issue13_all.jsonl", lambda r: r["model"] in ID_ONLY)
id_only += read("tiktok_missing0.9_tuned.jsonl", lambda r: r["model"] == "LightGCN")
others += [as_rate_zero(r) for r in id_only]
# the first row is each table's Wilcoxon reference: CI2MG-S with NCL's objective, then at its defaults
write("tiktok_missing0.0_issue12.jsonl", read("tiktok_missing0.0_idcontrast.jsonl") + read("tiktok_missing0.0_ci2mgs.jsonl") + others)
write("tiktok_missing0.0_issue12_defaults.jsonl", read("tiktok_missing0.0_ci2mgs.jsonl") + others)

# TikTok missing-rate sweep, seed 2020: CI2MG-S at its defaults beside the issue-13 sweep
sweep = read("tiktok_missing0.0_ci2mgs.jsonl", lambda r: r["seed"] == 2020) + read("tiktok_sweep_issue12.jsonl")
sweep += read("tiktok_sweep_issue13_all.jsonl", lambda r: r["model"] in {"FREEDOM", "LightGCN-M", "CI2MG"})
write("tiktok_sweep_issue12_all.jsonl", sorted(sweep, key=lambda r: r["missing_rate"]))
