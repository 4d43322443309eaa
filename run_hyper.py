"""Tune a model's hyperparameters, ours or RecBole's, as RecBole's own run_hyper.py does.

    python run_hyper.py --model=CI2MG --dataset=tiktok --params_file=properties/hyper/CI2MG.hyper \\
        --algo=bayes --max_evals=50 --output_file=hyper-CI2MG-tiktok.result --missing_rate=0.9
    python run_hyper.py --model=LightGCN --dataset=ml-100k-mm --params_file=my.hyper --algo=exhaustive

Trials are selected on the validation score (valid_metric); the best
configuration's valid and test results are printed and written to
--output_file and <output_file>.json, with every trial's.

A Hyperopt search is resumable: each finished trial is recorded at once in
<output_file>.trials.jsonl, and the same command run again skips the
recorded trials (an interruption loses only the trial in progress); a larger
--max_evals extends a finished search.

One-parameter sensitivity (the paper's Figure 4): valid and test scores against
the values of one setting, as a PNG, a CSV and a Markdown table:

    python run_hyper.py --model=CI2MG --dataset=tiktok --sensitivity=n_prototypes:16,32,64,128,256 --seeds=2020,2021

Any other --key=value is a config setting fixed for every trial; a key that
no config file, model, dataset or RecBole default knows is refused (declare
new keys with extra_keys, see README).
"""

import argparse
from pathlib import Path

from recbole_ci2mg.data import EMBEDDED_DATASET
from recbole_ci2mg.quick_start import build_config
from recbole_ci2mg.settings import parse_overrides
from recbole_ci2mg.tuning import ALGOS, TOOLS, format_best, parse_sweep, sensitivity, tune

DEFAULT_MODEL = "CI2MG"


def main():
    # allow_abbrev=False: argparse would otherwise take the config setting
    # --seed=2021 for an abbreviation of --seeds.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help="model name")
    parser.add_argument("--dataset", "-d", default=EMBEDDED_DATASET, help="dataset name")
    parser.add_argument("--config_files", default=None, help="fixed config files, separated by spaces")
    parser.add_argument("--params_file", default=None, help="search space (default properties/hyper/<model>.hyper)")
    parser.add_argument("--output_file", default=None, help="results file (default hyper-<model>-<dataset>.result)")
    parser.add_argument("--tool", default="Hyperopt", choices=TOOLS, help="tuning tool")
    parser.add_argument("--algo", default="exhaustive", choices=ALGOS, help="search algorithm")
    parser.add_argument("--max_evals", type=int, default=100, help="trials at most (random, bayes)")
    parser.add_argument("--early_stop", type=int, default=None,
                        help="stop after this many trials without improvement (default 10; never for exhaustive)")
    parser.add_argument("--search_seed", type=int, default=None, help="seed of the hyperopt sampler (default: the config's seed)")
    parser.add_argument("--sensitivity", default=None, help="KEY:V1,V2,... sweep one setting instead of searching")
    parser.add_argument("--seeds", default=None, help="training seeds of the sweep, e.g. 2020,2021,2022")
    args, rest = parser.parse_known_args()
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        overrides = parse_overrides(rest)
        build_config(args.model, args.dataset, config_file_list, dict(overrides))  # refuses unknown keys
    except ValueError as error:
        parser.error(str(error))

    if args.sensitivity:
        try:
            key, values = parse_sweep(args.sensitivity)
            seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else None
        except ValueError as error:
            parser.error(f"{error} (--sensitivity=KEY:V1,V2 --seeds=2020,2021)")
        stem = str(Path(args.output_file).with_suffix("")) if args.output_file else None
        sweep = sensitivity(args.model, args.dataset, key, values, seeds, config_file_list, overrides, stem)
        print(sweep["files"]["md"].read_text())
        print("written: " + ", ".join(str(path) for path in sweep["files"].values()))
        return

    if args.seeds:
        parser.error("--seeds belongs to --sensitivity; to fix the training seed of every trial, give --seed=N.")
    output_file = args.output_file or f"hyper-{args.model}-{args.dataset}.result"
    summary = tune(
        args.model,
        args.dataset,
        params_file=args.params_file,
        algo=args.algo,
        max_evals=args.max_evals,
        early_stop=args.early_stop,
        config_file_list=config_file_list,
        config_dict=overrides,
        output_file=output_file,
        tool=args.tool,
        search_seed=args.search_seed,
    )
    print(format_best(summary))
    print(f"written: {output_file}, {output_file}.json")


if __name__ == "__main__":
    main()
