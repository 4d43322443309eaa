r"""Comparisons: every model × seed × missing rate, or CI²MG's ablation rows, on one split.

    python run_recbole.py --model=CI2MG,LightGCN,SGL --dataset=tiktok --seeds=2020,2021,2022
    python run_recbole.py --model=CI2MG,LightGCN-M,LightGCN --dataset=tiktok --missing_rates=0,0.3,0.5,0.7,0.9
    python run_recbole.py --ablation --dataset=tiktok --missing_rate=0.9 --seeds=2020
    python -m recbole_ci2mg.compare --table-only --results=saved/comparison/tiktok.jsonl

Every model of a comparison reads the dataset's split and, at each missing
rate, the same mask: the mask depends only on ``mask_seed``, ``missing_rate``
and ``missing_mode`` (:mod:`recbole_ci2mg.data.masks`), never on the model or
the training seed.

Each finished run is appended to the results file (``--results``, by default
``saved/comparison/<dataset>.jsonl``, ``<dataset>-ablation.jsonl`` for
``--ablation``) with its per-user test scores beside it
(:mod:`recbole_ci2mg.results`); a run already recorded is skipped, so an
interrupted comparison loses at most the run in progress and the same command
resumes it. The same command started several times (processes, GPUs or
machines sharing the results folder) shares the runs out: each is claimed
before training (:mod:`recbole_ci2mg.claims`) and trained once. A record
keeps a fingerprint of the data it was trained on
(:mod:`recbole_ci2mg.data.fingerprint`); a record of other data (the dataset
converted again since) stops the comparison, with how to keep both. The tables (:mod:`recbole_ci2mg.tables`) cover the runs of the
command and go to ``--table=PREFIX`` (``PREFIX.md``, ``.csv``, ``.tex``, and
``.png`` for several missing rates; by default the results file's path without
``.jsonl``). ``--table-only`` rebuilds them from the results file without
training (``--model`` then picks and orders the models shown).

Any other ``--key=value`` overrides that config key for every run and is part
of each run's record key, as ``--seed`` and ``--missing_rate`` are. Every model
of the comparison must know it (:mod:`recbole_ci2mg.settings`), and a
``--mask_file`` excludes a missing rate: both are checked before the first run.
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path
import time
from time import perf_counter

import torch
import yaml

from recbole_ci2mg.claims import describe, take_claim
from recbole_ci2mg.data import EMBEDDED_DATASET
from recbole_ci2mg.data.fingerprint import data_fingerprint, fingerprint_changes
from recbole_ci2mg.data.masks import check_mask_source
from recbole_ci2mg.quick_start import build_config, properties_files, run_recbole
from recbole_ci2mg.registry import get_model
from recbole_ci2mg.results import (
    ResultsFileError,
    append_record,
    locked,
    read_records,
    record_key,
    save_per_user,
)
from recbole_ci2mg.settings import parse_overrides
from recbole_ci2mg.tables import write_tables

DEFAULT_MODEL = "CI2MG"
DEFAULT_SEED = 2020  # properties/overall.yaml's seed
DEFAULT_MISSING_RATE = 0.0  # properties/overall.yaml's missing_rate

# Table 3 of the paper, in its order. use_contrastive aligns the inter view,
# so it comes after use_inter; the names are CI2MG's config keys
# (properties/model/CI2MG.yaml).
ABLATION_SWITCHES = ("use_intra", "use_inter", "use_contrastive", "use_task_guided")

# Settings that choose where and how visibly a run executes, not what it
# computes: passed on to every run but left out of its record key, so that a
# rerun on another device or with other logging finds its records.
UNKEYED_SETTINGS = ("show_progress", "state", "use_gpu", "gpu_id", "checkpoint_dir", "log_wandb")

# How often a process whose remaining runs are claimed by others looks for their records.
POLL_SECONDS = 2

COMPARISON_FLAGS = ("--seeds", "--missing_rates", "--ablation", "--results", "--table", "--table-only", "--table_only")


def wants_comparison(argv):
    """Whether a ``run_recbole.py`` command line asks for a comparison rather than single runs."""
    return any(arg.split("=", 1)[0] in COMPARISON_FLAGS for arg in argv)


def parse_seeds(text, flag="--seeds"):
    r"""``"2020,2021"`` -> ``[2020, 2021]``."""
    seeds = []
    for part in text.split(","):
        try:
            seeds.append(int(part.strip()))
        except ValueError:
            raise ValueError(
                f"{flag}={text}: '{part.strip()}' is not an integer seed; give integers separated "
                f"by commas, e.g. {flag}=2020,2021,2022."
            ) from None
    return _no_repeats(seeds, flag)


def parse_rates(text, flag="--missing_rates"):
    r"""``"0,0.5"`` -> ``[0.0, 0.5]``, each in [0, 1]."""
    rates = []
    for part in text.split(","):
        try:
            rate = float(part.strip())
        except ValueError:
            rate = None
        if rate is None or not 0.0 <= rate <= 1.0:
            raise ValueError(
                f"{flag}={text}: '{part.strip()}' is not a missing rate in [0, 1]; give rates "
                f"separated by commas, e.g. {flag}=0,0.3,0.5,0.7,0.9."
            )
        rates.append(rate)
    return _no_repeats(rates, flag)


def _no_repeats(values, flag):
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{flag} lists {', '.join(map(str, repeated))} more than once.")
    return values


def ablation_variants():
    r"""Table 3's rows: every switch off (LightGCN-M), then each switch turned on in turn.

    The last row, every switch on, is the full CI²MG.
    """
    return [{switch: i < n for i, switch in enumerate(ABLATION_SWITCHES)} for n in range(len(ABLATION_SWITCHES) + 1)]


def plan_runs(dataset, models, seeds, rates, overrides=None, variants=(None,), settings=None,
              config_files=(), model_overrides=None):
    r"""The runs of a comparison, missing rate by missing rate, then model by model, then seed by seed.

    Args:
        overrides (dict): config keys set for every run (part of each run's key).
        variants (list): further overrides, one row of the table each (the ablation).
        settings (dict): settings of :data:`UNKEYED_SETTINGS`, not part of the key.
        model_overrides (dict): model name -> overrides for that model only;
            the command line's ``overrides`` win over them.

    Returns:
        list: run dicts with ``dataset``, ``model``, ``seed``, ``missing_rate``,
        ``overrides``, ``config_files`` (the record key) and ``settings``.
    """
    return [
        {
            "dataset": dataset,
            "model": model,
            "seed": seed,
            "missing_rate": rate,
            "overrides": {**(model_overrides or {}).get(model, {}), **(overrides or {}), **(variant or {})},
            "config_files": list(config_files),
            "settings": dict(settings or {}),
        }
        for rate in rates
        for model in models
        for variant in variants
        for seed in seeds
    ]


def machine():
    """The machine a run was timed on, for the record."""
    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def run_config_dict(run):
    """The ``config_dict`` a planned run is trained with."""
    return {**run["settings"], **run["overrides"], "seed": run["seed"], "missing_rate": run["missing_rate"]}


def run_config(run):
    """The RecBole ``Config`` of a planned run, as its YAML files and overrides give it now."""
    return build_config(run["model"], run["dataset"], run["config_files"] or None, run_config_dict(run))


def run_fingerprint(run, config=None):
    r"""The :func:`recbole_ci2mg.data.fingerprint.data_fingerprint` of the data a planned run reads
    (``config``: the run's :func:`run_config`, built now when not given)."""
    return data_fingerprint(config if config is not None else run_config(run))


# keys of the project's YAML files that say where a run reads and writes, or how fast it runs, not what it learns
# (a mask file's content is in data_fingerprint)
SETTINGS_NOT_COMPARED = ("data_path", "checkpoint_dir", "torch_threads", "eval_batch_size", "mask_file")


def run_settings(run, config=None):
    r"""What a planned run trains with: the value of every key that ``overall.yaml`` and the model's own
    YAML files set (so the model's defaults, after the run's files and overrides), as JSON values
    (``config``: the run's :func:`run_config`, built now when not given).

    Recorded as ``settings``, so that a record trained before a default changed is not taken for a
    run of the new default (:func:`check_data`).
    """
    config = config if config is not None else run_config(run)
    files = [Path(f) for f in properties_files(get_model(run["model"]), run["dataset"])]
    keys = set()
    for path in files:
        if path.parent.name != "dataset":  # the dataset's own file: its data, covered by data_fingerprint
            keys |= set(yaml.safe_load(path.read_text()) or {})
    values = {key: config[key] for key in sorted(keys - set(SETTINGS_NOT_COMPARED))}
    return json.loads(json.dumps(values, default=str))


def settings_changes(recorded, current):
    """The keys set in both whose value differs, as ``key (then -> now)`` phrases (a key added since is not compared)."""
    return [f"{key} ({recorded[key]!r} -> {current[key]!r})" for key in sorted(set(recorded) & set(current))
            if recorded[key] != current[key]]


def train(run, results):
    r"""Train and test one planned run through :func:`recbole_ci2mg.quick_start.run_recbole`; its record.

    The per-user test scores the trainer kept are written beside ``results``;
    the record's ``data_fingerprint`` is that of the data as it is when the run ends. Its ``settings``
    are read when it starts, as training reads them: a YAML file edited while it trains neither
    changes them nor, if it no longer builds, loses the finished run.
    """
    config = run_config(run)
    settings = run_settings(run, config)
    start = perf_counter()
    result = run_recbole(
        run["model"], run["dataset"], config_file_list=run["config_files"] or None, config_dict=run_config_dict(run),
        saved=True,
    )
    record = {key: run[key] for key in ("dataset", "model", "seed", "missing_rate", "overrides", "config_files")}
    record.update(
        test=dict(result["test_result"]),
        valid=dict(result["best_valid_result"] or {}),
        best_epoch=result["best_epoch"],
        epochs_trained=result["epochs_trained"],
        train_epoch_seconds=result["train_epoch_seconds"],
        wall_seconds=perf_counter() - start,
        machine=machine(),
        saved_model_file=result.get("saved_model_file"),
        data_fingerprint=run_fingerprint(run, config),
        settings=settings,
    )
    record["test_segments"] = getattr(result["test_result"], "segments", None)
    per_user = getattr(result["test_result"], "per_user", None)
    record["per_user_file"] = save_per_user(results, record, per_user) if per_user else None
    return record


def describe_run(run):
    return f"{run['model']} seed {run['seed']} missing {run['missing_rate']:g} {run['overrides'] or ''}".rstrip()


def check_data(runs, records, results):
    r"""Refuse records of ``runs`` trained on other data than the dataset holds now, or with other settings.

    Compares each record's ``data_fingerprint`` with the data its run reads
    now, and its ``settings`` with :func:`run_settings` now (a model default
    changed since). Records written before fingerprints or settings were kept
    cannot be checked; they are reused as before, with a warning.

    Raises:
        ResultsFileError: a record's data or settings differ, saying how to keep both results.
    """
    changed, resettled, unverified, unsettled = [], [], [], []
    for run in runs:
        record = records.get(record_key(run))
        if record is None:
            continue
        config = run_config(run)
        if record.get("settings") is None:
            unsettled.append(run)
        else:
            changes = settings_changes(record["settings"], run_settings(run, config))
            if changes:
                resettled.append((run, changes))
        if record.get("data_fingerprint") is None:
            unverified.append(run)
            continue
        changes = fingerprint_changes(record["data_fingerprint"], run_fingerprint(run, config))
        if changes:
            changed.append((run, changes))
    keep = Path(results).with_name(Path(results).stem + "-new.jsonl")
    advice = (f"To keep both, run it with another results file (e.g. --results={keep}); to train again in "
              f"{results}, delete the old records from it.")
    for found, what, new in ((changed, "on other data than the dataset has now", "the new data"),
                             (resettled, "with other settings than its YAML files give now", "the new settings")):
        if found:
            run, changes = found[0]
            others = f" (and {len(found) - 1} more run(s) of this comparison)" if len(found) > 1 else ""
            raise ResultsFileError(
                f"{results} holds {describe_run(run)}{others} trained {what}: {'; '.join(changes)}. "
                f"The comparison stops rather than report old results for {new}. {advice}"
            )
    if unsettled:
        print(
            f"Warning: {len(unsettled)} run(s) of this comparison are reused from {results} without their "
            f"settings (recorded before settings were kept), so whether a default of their model changed "
            f"since cannot be checked; delete their lines to train them again (e.g. {describe_run(unsettled[0])}).",
            file=sys.stderr, flush=True,
        )
    if unverified:
        print(
            f"Warning: {len(unverified)} run(s) of this comparison are reused from {results} without a "
            f"data_fingerprint (recorded before fingerprints were kept), so whether their dataset changed "
            f"since cannot be checked; delete their lines to train them again (e.g. {describe_run(unverified[0])}).",
            file=sys.stderr, flush=True,
        )


def run_comparison(runs, results):
    r"""Train every planned run that ``results`` does not hold yet, appending each record as it finishes.

    Several processes (on one machine or several sharing the folder) may run
    the same comparison on one results file: each run is claimed before it is
    trained (:mod:`recbole_ci2mg.claims`), so it is trained and recorded once,
    and a process whose remaining runs are claimed by others waits for their
    records (checking every :data:`POLL_SECONDS`) before it returns. Records
    of other data are refused (:func:`check_data`).

    Returns:
        list: the records of ``runs``, in plan order (old and new).
    """
    with locked(results):
        done = {record_key(record): record for record in read_records(results)}
    check_data(runs, done, results)
    pending = list(enumerate(runs, start=1))
    waiting = set()
    while pending:
        left = []
        for number, run in pending:
            key, what = record_key(run), f"[{number}/{len(runs)}] {describe_run(run)}"
            with locked(results):
                recorded = {record_key(record): record for record in read_records(results)}
                claim, holder, stale = (None, None, None) if key in recorded else take_claim(results, key)
            if key in recorded:
                if key in done:
                    print(f"{what}: in {results}, skipped", flush=True)
                else:  # recorded by another process since this one started
                    check_data([run], recorded, results)
                    print(f"{what}: recorded by another process", flush=True)
                done[key] = recorded[key]
            elif claim is None:
                if key not in waiting:
                    print(f"{what}: being trained by {describe(holder)}; waiting for its record", flush=True)
                    waiting.add(key)
                left.append((number, run))
            else:
                if holder is not None:
                    print(f"{what}: taking over the claim of {describe(holder)} ({stale})", flush=True)
                with claim:
                    record = train(run, results)
                    written = append_record(results, record)
                if not written:
                    print(f"{what}: recorded by another process meanwhile; this result was not written",
                          file=sys.stderr, flush=True)
                    record = {record_key(other): other for other in read_records(results)}[key]
                done[key] = record
                print(f"{what}: test {record['test']}", flush=True)
        pending = left
        if pending:
            time.sleep(POLL_SECONDS)
    return [done[record_key(run)] for run in runs]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_recbole.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --seed must not be read as an abbreviation of --seeds
    )
    parser.add_argument("--model", "-m", help=f"models separated by commas, the first one the Wilcoxon "
                                              f"reference (default {DEFAULT_MODEL})")
    parser.add_argument("--dataset", "-d", help=f"dataset name (default {EMBEDDED_DATASET})")
    parser.add_argument("--config_files", help="config files, separated by spaces")
    parser.add_argument("--seeds", help="training seeds separated by commas (default --seed, or 2020)")
    parser.add_argument("--missing_rates", help="missing rates separated by commas (default --missing_rate, or 0)")
    parser.add_argument("--ablation", action="store_true", help="CI2MG's ablation rows (Table 3) instead of --model")
    parser.add_argument("--results", help="JSONL results file (default saved/comparison/<dataset>[-ablation].jsonl)")
    parser.add_argument("--table", metavar="PREFIX", help="where the tables go (default: --results without .jsonl)")
    parser.add_argument("--table-only", "--table_only", dest="table_only", action="store_true",
                        help="rebuild the tables of --results without training")
    return parser


def plan_from_args(args, rest):
    r"""Check a comparison command line and turn it into runs; ValueError names what is wrong."""
    models = [name.strip() for name in (args.model or DEFAULT_MODEL).split(",") if name.strip()]
    for model in models:
        get_model(model)  # an unknown name fails here, before any training
    overrides = parse_overrides(rest)
    settings = {key: overrides.pop(key) for key in UNKEYED_SETTINGS if key in overrides}
    if "seed" in overrides and args.seeds:
        raise ValueError("Give the seeds either as --seeds or as --seed, not both.")
    if "missing_rate" in overrides and args.missing_rates:
        raise ValueError("Give the missing rates either as --missing_rates or as --missing_rate, not both.")
    seeds = parse_seeds(args.seeds or str(overrides.pop("seed", DEFAULT_SEED)),
                        "--seeds" if args.seeds else "--seed")
    rates = parse_rates(args.missing_rates or str(overrides.pop("missing_rate", DEFAULT_MISSING_RATE)),
                        "--missing_rates" if args.missing_rates else "--missing_rate")
    variants = [None]
    if args.ablation:
        if models != ["CI2MG"]:
            raise ValueError(f"--ablation runs CI2MG's rows; leave out --model={args.model}.")
        clash = [switch for switch in ABLATION_SWITCHES if switch in overrides]
        if clash:
            raise ValueError(f"--ablation sets {', '.join(clash)} itself; leave out --{clash[0]}.")
        variants = ablation_variants()
    config_files = args.config_files.split() if args.config_files else []
    for file in config_files:
        if not Path(file).is_file():
            raise ValueError(f"--config_files: {file} does not exist.")
    dataset = args.dataset or EMBEDDED_DATASET
    for model in models:  # every model's settings, before the first run trains
        config = build_config(model, dataset, config_files, {**settings, **overrides, **(variants[-1] or {})})
        for rate in rates:
            check_mask_source(config["mask_file"], rate)
    return plan_runs(dataset, models, seeds, rates, overrides, variants, settings, config_files)


def default_results(dataset, ablation):
    return Path("saved") / "comparison" / f"{dataset}{'-ablation' if ablation else ''}.jsonl"


def table_prefix(args, results):
    return Path(args.table) if args.table else Path(results).with_suffix("")


def table_only(args, results):
    r"""The records of ``results`` to tabulate: all of them, or those of ``--model``, in its order."""
    records = read_records(results)
    if not records:
        raise ValueError(f"{results} holds no records; run the comparison first, or name the file with --results.")
    if args.dataset:
        records = [r for r in records if r["dataset"] == args.dataset]
    if args.model:
        models = [name.strip() for name in args.model.split(",") if name.strip()]
        records = sorted((r for r in records if r["model"] in models), key=lambda r: models.index(r["model"]))
    if not records:
        raise ValueError(f"{results} holds no records of --model={args.model} --dataset={args.dataset}.")
    return records


def main(argv=None):
    r"""The comparison command line (``run_recbole.py`` hands its arguments here)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    results = Path(args.results) if args.results else default_results(args.dataset or EMBEDDED_DATASET, args.ablation)
    try:
        if args.table_only:
            if rest or args.seeds or args.missing_rates or args.ablation:
                raise ValueError(
                    "--table-only trains nothing; it takes only --results, --table, --model and --dataset."
                )
            records = table_only(args, results)
        else:
            runs = plan_from_args(args, rest)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    if not args.table_only:
        try:
            records = run_comparison(runs, results)
        except ResultsFileError as error:
            parser.error(str(error))
    text, paths = write_tables(records, table_prefix(args, results), results)
    print(text)
    print("Written: " + ", ".join(map(str, paths)))
    return records


if __name__ == "__main__":
    main()
