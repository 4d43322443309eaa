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
resumes it. The tables (:mod:`recbole_ci2mg.tables`) cover the runs of the
command and go to ``--table=PREFIX`` (``PREFIX.md``, ``.csv``, ``.tex``, and
``.png`` for several missing rates; by default the results file's path without
``.jsonl``). ``--table-only`` rebuilds them from the results file without
training (``--model`` then picks and orders the models shown).

Any other ``--key=value`` overrides that config key for every run and is part
of each run's record key, as ``--seed`` and ``--missing_rate`` are.
"""

import argparse
import os
import platform
import sys
from pathlib import Path
from time import perf_counter
from unittest import mock

import torch

from recbole_ci2mg.compat import read_setting
from recbole_ci2mg.data import EMBEDDED_DATASET
from recbole_ci2mg.quick_start import run_recbole
from recbole_ci2mg.registry import get_model
from recbole_ci2mg.results import (
    append_record,
    read_records,
    record_key,
    save_per_user,
)
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


def config_value(text):
    """A command-line value as RecBole's ``Config`` reads it, without running it (see ``compat.read_setting``)."""
    return read_setting(text)


def parse_overrides(args):
    r"""``["--epochs=2", "--reg_weight=1e-4"]`` -> ``{"epochs": 2, "reg_weight": 0.0001}``."""
    overrides = {}
    for arg in args:
        key, sep, value = arg[2:].partition("=")
        if not arg.startswith("--") or not sep or not key:
            raise ValueError(
                f"Unrecognised argument '{arg}': config overrides are written --key=value "
                f"(run with -h for the comparison options)."
            )
        overrides[key] = config_value(value)
    return overrides


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


def train(run, results):
    r"""Train and test one planned run through :func:`recbole_ci2mg.quick_start.run_recbole`; its record.

    The per-user test scores the trainer kept are written beside ``results``.
    """
    config_dict = {**run["settings"], **run["overrides"], "seed": run["seed"], "missing_rate": run["missing_rate"]}
    start = perf_counter()
    result = run_recbole(
        run["model"], run["dataset"], config_file_list=run["config_files"] or None, config_dict=config_dict, saved=True
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
    )
    per_user = getattr(result["test_result"], "per_user", None)
    record["per_user_file"] = save_per_user(results, record, per_user) if per_user else None
    return record


def run_comparison(runs, results):
    r"""Train every planned run that ``results`` does not hold yet, appending each record as it finishes.

    Returns:
        list: the records of ``runs``, in plan order (old and new).
    """
    done = {record_key(record): record for record in read_records(results)}
    for number, run in enumerate(runs, start=1):
        key = record_key(run)
        what = f"{run['model']} seed {run['seed']} missing {run['missing_rate']:g} {run['overrides'] or ''}"
        if key in done:
            print(f"[{number}/{len(runs)}] {what}: in {results}, skipped", flush=True)
            continue
        record = train(run, results)
        append_record(results, record)
        done[key] = record
        print(f"[{number}/{len(runs)}] {what}: test {record['test']}", flush=True)
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
    return plan_runs(args.dataset or EMBEDDED_DATASET, models, seeds, rates, overrides, variants, settings,
                     config_files)


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
        # RecBole's Config reads --key=value from sys.argv and ranks it above
        # config_dict, which would override each run's seed and missing rate
        # (and read this command's own flags as config keys): every setting
        # goes through config_dict instead.
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            records = run_comparison(runs, results)
    text, paths = write_tables(records, table_prefix(args, results), results)
    print(text)
    print("Written: " + ", ".join(map(str, paths)))
    return records


if __name__ == "__main__":
    main()
