"""One results file per issue-13 table, from the runs of several sessions (BENCHMARKS.md, issue 13).

CI2MG's rows are the runs after the zero-row fix (``*_zerorow.jsonl``); the
older CI2MG records are left out, since they share their run key. Run from
anywhere: ``python benchmarks/combine_issue13.py``.
"""
import json
from pathlib import Path

R = str(Path(__file__).resolve().parent / "results") + "/"
def read(name, keep=lambda r: True):
    out = []
    try:
        for line in open(R + name):
            r = json.loads(line)
            if keep(r):
                out.append(line)
    except FileNotFoundError:
        pass
    return out
def write(name, lines):
    with open(R + name, "w") as f:
        f.writelines(lines)
# 90 %: every model; CI2MG is the fixed code's (zerorow), not the old records'
lines = read("tiktok_missing0.9_all.jsonl", lambda r: r["model"] != "CI2MG")
lines += read("tiktok_missing0.9_zerorow.jsonl") + read("tiktok_missing0.9_issue13.jsonl")
write("tiktok_missing0.9_issue13_all.jsonl", lines)
# 0 %: the fixed CI2MG's records where they exist, else the code's before the fix
fixed = read("tiktok_missing0.0_zerorow.jsonl")
lines = read("tiktok_missing0.0_issue4.jsonl", lambda r: r["model"] != "CI2MG" or not fixed)
lines += fixed + read("tiktok_missing0.0_issue13.jsonl", lambda r: r["model"] != "SimGCL")
write("tiktok_missing0.0_issue13_all.jsonl", lines)
# sweep, seed 2020 at every rate
rates = lambda r: r["seed"] == 2020 and r["model"] in {"CI2MG", "LightGCN-M", "FREEDOM", "DGMRec", "BM3", "MILK"} and not r["overrides"].keys() - {"reg_weight"}
lines = read("tiktok_missing0.9_issue13_all.jsonl", rates) + read("tiktok_missing0.0_issue13_all.jsonl", rates) + read("tiktok_sweep_issue13.jsonl", rates)
write("tiktok_sweep_issue13_all.jsonl", sorted(lines, key=lambda line: json.loads(line)["missing_rate"]))
