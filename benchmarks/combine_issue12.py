"""Results files of issue 12's tables, from the runs of several sessions (BENCHMARKS.md, issue 12).

TikTok at 0 % missing: CI²MG-S's runs, beside the multimodal models' 0 % records and the
ID-only models' records. ID-only models read no content, so their runs at 90 % missing are
their 0 % runs (SimGCL was run at both and gives identical numbers, BENCHMARKS.md, issue 13):
their records are copied with ``missing_rate`` 0.0 (or the sweep's rates) and
``id_only_from_rate`` 0.9 added, so that they sit in the same table section. Run from anywhere: ``python benchmarks/combine_issue12.py``,
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


def as_rate(record, rate=0.0):
    return {**record, "missing_rate": rate, "id_only_from_rate": record["missing_rate"]}


def write(name, records):
    (R / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {R / name}: {len(records)} records")


others = read("tiktok_missing0.0_issue13_all.jsonl", lambda r: r["model"] in {"FREEDOM", "LightGCN-M", "DGMRec"})
others += read("tiktok_missing0.0_recweight.jsonl", lambda r: r["overrides"].get("rec_weight") == 0.01)
id_only = read("tiktok_missing0.9_issue13_all.jsonl", lambda r: r["model"] in ID_ONLY)
id_only += read("tiktok_missing0.9_tuned.jsonl", lambda r: r["model"] == "LightGCN")
others += [as_rate(r) for r in id_only]
# the first row is each table's Wilcoxon reference: CI2MG-S with NCL's objective, then at its defaults
write("tiktok_missing0.0_issue12.jsonl", read("tiktok_missing0.0_idcontrast.jsonl") + read("tiktok_missing0.0_ci2mgs.jsonl") + others)
write("tiktok_missing0.0_issue12_defaults.jsonl", read("tiktok_missing0.0_ci2mgs.jsonl") + others)

# TikTok missing-rate sweep, seed 2020: CI2MG-S at its defaults beside the issue-13 sweep
seed2020 = lambda r: r["seed"] == 2020  # noqa: E731
sweep = read("tiktok_missing0.0_ci2mgs.jsonl", seed2020) + read("tiktok_sweep_issue12.jsonl", lambda r: seed2020(r) and r["model"] == "CI2MG-S")
sweep += read("tiktok_sweep_issue13_all.jsonl", lambda r: r["model"] in {"FREEDOM", "LightGCN-M", "CI2MG"})
write("tiktok_sweep_issue12_all.jsonl", sorted(sweep, key=lambda r: r["missing_rate"]))

# TikTok at 90 % missing: the CI2MG family's best on validation (NCL's objective, the raw graph with
# empty rows, 3 layers), 3 seeds, beside the tuned table's rows and the models' defaults
at90 = read("tiktok_missing0.9_idcontrast.jsonl")
at90 += read("tiktok_missing0.9_issue13_all.jsonl", lambda r: r["model"] in {"NCL", "LightGCN", "FREEDOM", "LightGCN-M"})
at90 += read("tiktok_missing0.9_tuned.jsonl", lambda r: r["model"] in {"LightGCN", "CI2MG-S"})
at90 += read("tiktok_missing0.9_recweight.jsonl")
at90 += read("tiktok_sweep_issue12.jsonl", lambda r: r["missing_rate"] == 0.9 and r["model"] == "CI2MG-S")
write("tiktok_missing0.9_issue12.jsonl", at90)

# the sweep at 3 seeds: the seed-2020 sweep above, seeds 2021 and 2022 at 30 and 60 % (and CI2MG-S
# at 90 %), CI2MG at its rec_weight default 0.01 at 30 and 60 % (as many seeds as were run), and the
# 3-seed 0 % and 90 % records of the same models at their defaults; LightGCN reads no content: its
# records at every rate
sweep3 = read("tiktok_missing0.0_ci2mgs.jsonl") + read("tiktok_sweep_issue12.jsonl")
sweep3 += read("tiktok_missing0.0_recweight.jsonl", lambda r: r["overrides"].get("rec_weight") == 0.01)
sweep3 += read("tiktok_missing0.9_recweight.jsonl")
sweep3 += read("tiktok_sweep_issue13_all.jsonl", lambda r: r["model"] in {"FREEDOM", "LightGCN-M"})
sweep3 += read("tiktok_missing0.0_issue13_all.jsonl", lambda r: r["model"] in {"FREEDOM", "LightGCN-M"} and r["seed"] != 2020)
sweep3 += read("tiktok_missing0.9_issue13_all.jsonl", lambda r: r["model"] in {"FREEDOM", "LightGCN-M"} and r["seed"] != 2020)
lightgcn = read("tiktok_missing0.9_issue13_all.jsonl", lambda r: r["model"] == "LightGCN")  # reads no content
sweep3 += [as_rate(r, rate) for rate in (0.0, 0.3, 0.6) for r in lightgcn] + lightgcn
write("tiktok_sweep3_issue12_all.jsonl", sorted(sweep3, key=lambda r: r["missing_rate"]))

# TikTok at 90 % missing, NCL's objective inside CI2MG-S with and without the raw graph (the same
# model, so the same draws at each seed: a paired reading of the graph), the graph-contrastive
# screen, and RecBole's NCL
# (two files: each first row is its table's Wilcoxon reference)
graph, control = read("tiktok_missing0.9_idcontrast.jsonl"), read("tiktok_missing0.9_idcontrast_control.jsonl")
contrast = read("tiktok_missing0.9_idcontrast_screen.jsonl", lambda r: r["overrides"].get("item_graph_role") == "contrast")
ncl = read("tiktok_missing0.9_issue13_all.jsonl", lambda r: r["model"] == "NCL")
write("tiktok_missing0.9_graph_paired.jsonl", graph + control + contrast + ncl)
write("tiktok_missing0.9_contrast_paired.jsonl", contrast + control + graph + ncl)

# SimGCL's objective inside CI2MG-S (id_noise_contrast, id_readout propagated, SimGCL's tuned settings):
# TikTok at 90 % missing, the raw graph with empty rows first (the Wilcoxon reference), its no-graph
# control, tuned and untuned SimGCL, NCL and tuned LightGCN; with complete content, the raw graph
# beside the same ID-only rows (their 90 % runs) and the 0 % multimodal rows
noise = read("tiktok_missing0.9_noise.jsonl")
noise_graph = [r for r in noise if r["overrides"].get("item_graph") == "raw"]
simgcl = read("tiktok_missing0.9_tuned.jsonl", lambda r: r["model"] == "SimGCL")
simgcl += read("tiktok_missing0.9_issue13_all.jsonl", lambda r: r["model"] == "SimGCL" and not r["overrides"])
best_id = simgcl + read("tiktok_missing0.9_issue13_all.jsonl", lambda r: r["model"] == "NCL")
best_id += read("tiktok_missing0.9_tuned.jsonl", lambda r: r["model"] == "LightGCN")
noise_control = [r for r in noise if r["overrides"].get("item_graph") == "none"]
write("tiktok_missing0.9_noise_all.jsonl", noise_graph + noise_control + best_id)
at0 = read("tiktok_missing0.0_noise.jsonl") + [as_rate(r) for r in noise_control + best_id]
at0 += read("tiktok_missing0.0_idcontrast.jsonl") + read("tiktok_missing0.0_ci2mgs.jsonl")
at0 += read("tiktok_missing0.0_issue13_all.jsonl", lambda r: r["model"] == "FREEDOM")
write("tiktok_missing0.0_noise_all.jsonl", at0)

# the embedded ml-100k-mm at 90 % missing: the family with SimGCL's objective (the raw graph's self-loops
# first), beside SimGCL and the models of the ml-100k-mm table above
ml = read("ml-100k-mm_missing0.9_noise.jsonl")
ml_self = [r for r in ml if r["model"] == "CI2MG-S" and r["overrides"]["item_graph"] == "raw"
           and "item_graph_missing" not in r["overrides"]]
write("ml-100k-mm_missing0.9_noise_all.jsonl", ml_self + [r for r in ml if r not in ml_self]
      + read("ml-100k-mm_missing0.9_issue12.jsonl"))

# the sweep at 3 seeds with CI2MG-S's new defaults (SimGCL's objective, the raw graph with self-loops, given as
# overrides) first, tuned SimGCL at every rate (it reads no content), and the 3-seed sweep's other models
first3 = lambda r: r["seed"] in (2020, 2021, 2022)  # noqa: E731
new_defaults = read("tiktok_missing0.0_noise.jsonl", first3) + read("tiktok_sweep_noise.jsonl")
new_defaults += [r for r in noise_graph if "item_graph_missing" not in r["overrides"] and first3(r)]
# some of these runs were given --data_path, which changes no setting; left out so that the rows share one label
no_path = lambda rs: [{**r, "overrides": {k: v for k, v in r["overrides"].items() if k != "data_path"}} for r in rs]  # noqa: E731
new_defaults = no_path(new_defaults)
tuned_simgcl = [r for r in simgcl if r["overrides"] and first3(r)]
sweep_noise = new_defaults + [as_rate(r, rate) for rate in (0.0, 0.3, 0.6) for r in tuned_simgcl] + tuned_simgcl
sweep_noise += [r for r in sweep3 if r["model"] != "CI2MG-S"]
write("tiktok_sweep_noise_all.jsonl", sorted(sweep_noise, key=lambda r: r["missing_rate"]))

# Sports at 90 % missing: CI2MG-S at its new defaults (given as overrides), tuned SimGCL, the earlier Sports runs
write("sports_missing0.9_noise_all.jsonl", read("sports_missing0.9_noise.jsonl") + read("sports_missing0.9_simgcl.jsonl")
      + read("sports_missing0.9_issue12.jsonl"))

# the layer-0 gate by degree (empty rows, layer0_gate degree, layer0_gate_degree 200, given as overrides) first,
# at 90 % missing, beside the rows of the tables above
gate = lambda c: (lambda r: r["overrides"].get("layer0_gate") == "degree"  # noqa: E731
                  and r["overrides"].get("layer0_gate_degree") == c)
write("tiktok_missing0.9_gate_all.jsonl", no_path(read("tiktok_missing0.9_gate_screen.jsonl", gate(200))
                                                   + noise_graph + noise_control + best_id))
write("ml-100k-mm_missing0.9_gate_all.jsonl", read("ml-100k-mm_missing0.9_gate_screen.jsonl", gate(200))
      + read("ml-100k-mm_missing0.9_gate_screen.jsonl", gate(100)) + ml_self + [r for r in ml if r not in ml_self])

# feature propagation (item_graph imputed, 5 steps, empty rows, the degree gate: CI2MG-S's defaults from stop 26,
# given as overrides), first, then without the gate, at 90 % missing, beside the gate's rows and the rows of the
# tables above (stop 26)
imputed = lambda gated: (lambda r: r["overrides"].get("item_graph") == "imputed"  # noqa: E731
                         and r["overrides"].get("item_graph_imputation_steps") == 5
                         and (r["overrides"].get("layer0_gate") == "degree") == gated)
screen26 = read("tiktok_missing0.9_stop26_screen.jsonl")
write("tiktok_missing0.9_imputed_all.jsonl", no_path([r for r in screen26 if imputed(True)(r)]
                                                      + [r for r in screen26 if imputed(False)(r)]
                                                      + read("tiktok_missing0.9_gate_screen.jsonl", gate(200))
                                                      + noise_graph + noise_control + best_id))
ml26 = read("ml-100k-mm_missing0.9_stop26_screen.jsonl")
write("ml-100k-mm_missing0.9_imputed_all.jsonl", [r for r in ml26 if imputed(True)(r)]
      + read("ml-100k-mm_missing0.9_gate_screen.jsonl", gate(200)) + ml_self + [r for r in ml if r not in ml_self])

# the content control at 0 % missing: CI2MG-S at its 0 % settings on TikTok with the feature rows shuffled among
# items (benchmarks/shuffled_features.py: the same users, items, splits and mask), beside the same model on the
# real features, its no-graph control and the imputed graph with the gate; the shuffled records are relabelled
# as tiktok, their source named in an added "features" key, so that the rows share one table and per-user tests
shuffled = [{**r, "dataset": "tiktok", "overrides": {**r["overrides"], "features": r["dataset"]}}
            for r in read("tiktok-shuffled_missing0.0_stop26.jsonl")]
write("tiktok_missing0.0_shuffled_all.jsonl", no_path(read("tiktok_missing0.0_noise.jsonl", first3) + shuffled
                                                       + read("tiktok_missing0.0_stop26.jsonl")
                                                       + [as_rate(r) for r in noise_control + best_id if first3(r)]))

# the content control on ml-100k-mm at 90 % missing: CI2MG-S's stop-26 defaults on the real features, then on the
# features shuffled among items (relabelled as above), beside the former defaults
ml_shuffled = [{**r, "dataset": "ml-100k-mm", "overrides": {**r["overrides"], "features": r["dataset"]}}
               for r in read("ml-100k-mm-shuffled_missing0.9_stop26.jsonl")]
write("ml-100k-mm_missing0.9_shuffled_all.jsonl", [r for r in ml26 if imputed(True)(r)] + ml_shuffled + ml_self)
# stop 27. The sweep at 3 seeds at CI2MG-S's stop-26 defaults (imputed graph, empty rows, the degree gate): 0.3 and
# 0.6 new, 0 and 0.9 the runs of stop 26 (their first three seeds). The flags that repeat a default (the steps,
# the gate's degree) and data_path are left out so that the four rates share one label; beside them the sweep's
# other rows above (the former defaults, tuned SimGCL at every rate, LightGCN, FREEDOM, LightGCN-M, CI2MG)
repeats = ("data_path", "item_graph_imputation_steps", "layer0_gate_degree")
as_defaults = lambda rs: [{**r, "overrides": {k: v for k, v in r["overrides"].items() if k not in repeats}}  # noqa: E731
                          for r in rs]
defaults26 = as_defaults(read("tiktok_missing0.0_stop26.jsonl") + [r for r in screen26 if imputed(True)(r) and first3(r)]
                         + read("tiktok_sweep_stop27.jsonl"))
write("tiktok_sweep_stop27_all.jsonl", sorted(defaults26 + sweep_noise, key=lambda r: r["missing_rate"]))
# the content-free control: CI2MG-S with item_graph interactions (each item's nearest items by their training users)
# in place of the imputed graph, the other stop-26 defaults given as overrides, first, beside the tables above
cf = lambda r: r["overrides"].get("item_graph") == "interactions"  # noqa: E731
write("tiktok_missing0.9_interactions_all.jsonl", as_defaults(read("tiktok_missing0.9_stop27.jsonl", cf)
                                                               + [r for r in screen26 if imputed(True)(r)]
                                                               + [r for r in screen26 if imputed(False)(r)])
      + no_path(noise_graph + noise_control + best_id))
write("ml-100k-mm_missing0.9_interactions_all.jsonl", as_defaults(read("ml-100k-mm_missing0.9_stop27.jsonl", cf)
                                                                   + [r for r in ml26 if imputed(True)(r)])
      + ml_shuffled + ml_self + [r for r in ml if r not in ml_self])
# the interactions graph beside the imputed graphs (the stop-26 defaults otherwise), beside the two graphs alone.
# These runs were recorded with the switch item_graph_add_interactions True, which the value
# item_graph: imputed+interactions replaced before the stop ended: relabelled so that the tables name the setting
# a user gives now (the settings the runs read stay as recorded)
hybrid = lambda r: r["overrides"].get("item_graph_add_interactions") is True  # noqa: E731
# (item_graph_missing none and layer0_gate degree, given as flags then, are the defaults and left out, as in the
# runs recorded with the value)
defaults27 = {"item_graph_add_interactions": True, "item_graph_missing": "none", "layer0_gate": "degree"}
as_value = lambda rs: [{**r, "overrides": {**{k: v for k, v in r["overrides"].items()  # noqa: E731
                                               if k not in defaults27 or defaults27[k] != v},
                                           "item_graph": r["overrides"]["item_graph"] + "+interactions"}} for r in rs]
hybrid90 = as_value(read("tiktok_missing0.9_stop27.jsonl", hybrid)) + read("tiktok_missing0.9_hybrid.jsonl")  # 2023, 2024
write("tiktok_missing0.9_hybrid_all.jsonl", as_defaults(hybrid90 + read("tiktok_missing0.9_stop27.jsonl", cf)
                                                         + [r for r in screen26 if imputed(True)(r)])
      + no_path(noise_graph + noise_control + best_id))
write("ml-100k-mm_missing0.9_hybrid_all.jsonl", as_defaults(as_value(read("ml-100k-mm_missing0.9_stop27.jsonl", hybrid))
                                                             + read("ml-100k-mm_missing0.9_stop27.jsonl", cf)
                                                             + [r for r in ml26 if imputed(True)(r)])
      + ml_shuffled + ml_self + [r for r in ml if r not in ml_self])
# Sports at 90 % missing, seed 2020, at the stop-26 defaults (given as overrides), beside the Sports table above
sports27 = (read("sports_missing0.9_stop27.jsonl", lambda r: not hybrid(r)) + read("sports_missing0.9_noise.jsonl")
            + read("sports_missing0.9_simgcl.jsonl") + read("sports_missing0.9_issue12.jsonl"))
write("sports_missing0.9_stop27_all.jsonl", sports27)
# imputed+interactions at 0 % missing (there imputed is raw), 3 seeds, beside the stop-26 defaults and the sweep's
# 0 % rows (the former defaults, tuned SimGCL, LightGCN, FREEDOM, LightGCN-M, CI2MG)
write("tiktok_missing0.0_hybrid_all.jsonl", as_defaults(as_value(read("tiktok_missing0.0_stop27.jsonl", hybrid))
                                                         + read("tiktok_missing0.0_stop26.jsonl"))
      + [r for r in sweep_noise if r["missing_rate"] == 0.0])
# the sweep with imputed+interactions: 0.3 and 0.6 new, 0 and 0.9 the runs above, beside the sweep's other rows
hybrid_sweep = (as_value(read("tiktok_missing0.0_stop27.jsonl", hybrid)) + read("tiktok_sweep_hybrid.jsonl")
                + [r for r in hybrid90 if first3(r)])
write("tiktok_sweep_hybrid_all.jsonl", sorted(as_defaults(hybrid_sweep) + defaults26 + sweep_noise,
                                              key=lambda r: r["missing_rate"]))
# Sports at the current default, seeds 2020 to 2022 (2021: stop 28; 2022 and 2020 again: stop 29, stop 27's record lost),
# first, beside the Sports rows above
# (without the issue-12 table's CI2MG-S row: run at that time's defaults with no overrides, it would merge with these)
write("sports_missing0.9_hybrid_all.jsonl", no_path(read("sports_missing0.9_hybrid.jsonl"))
      + [r for r in sports27 if not (r["model"] == "CI2MG-S" and not r["overrides"])])
# item_graph_mix learned (stop 29), seed 2020, beside the default and the interactions graph alone at seed 2020
# (the default first: the Wilcoxon reference)
for at90_all in ("tiktok_missing0.9", "ml-100k-mm_missing0.9"):
    mixes = {"imputed+interactions": 0, "interactions": 1}
    same_seed = sorted(read(f"{at90_all}_hybrid_all.jsonl", lambda r: r["seed"] == 2020 and r["model"] == "CI2MG-S"
                            and r["overrides"].get("item_graph") in mixes
                            and r["overrides"].get("features") is None),
                       key=lambda r: mixes[r["overrides"]["item_graph"]])
    write(f"{at90_all}_graph_mix_all.jsonl", same_seed[:1] + no_path(read(f"{at90_all}_graph_mix.jsonl")) + same_seed[1:])
