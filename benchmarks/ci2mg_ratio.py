"""CI2MG's cost against LightGCN's, measured in one process, round-robin (issue 11).

On a shared machine two timings taken minutes apart see different loads. Here
every model trains on the same batches in turn, one step each per round
(``calculate_loss``, backward, Adam step), so a load change falls on all of
them alike; the ratio of the median step times is reported, and of one
full-ranking validation pass each (also round-robin, ``--eval-rounds``).
Memory is not measured here (one process holds every model): see
``benchmarks/ci2mg_scaling.py``.

Variants are ``NAME`` or ``NAME:key=value,key=value`` (config overrides of that
model only); the first one is the baseline of the ratios::

    OMP_NUM_THREADS=1 python benchmarks/ci2mg_ratio.py --dataset tiktok --rounds 30 \\
        LightGCN LightGCN-M CI2MG CI2MG:ot_solver=prototype CI2MG:ot_plan_refresh=epoch

A dataset converted by ``benchmarks/ci2mg_scaling.py`` (synthetic features) is
read with ``--config-file /tmp/ci2mg_scaling/dataset/properties/dataset/sports.yaml``.
"""

import argparse
import ast
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recbole_ci2mg

import torch  # noqa: E402
from recbole.data import data_preparation  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_ci2mg.quick_start import build_config, create_dataset  # noqa: E402
from recbole_ci2mg.registry import get_model  # noqa: E402
from recbole_ci2mg.trainer import get_trainer  # noqa: E402


def parse_variant(text):
    name, _, options = text.partition(":")
    overrides = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return name, overrides


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--config-file", action="append", default=[])
    parser.add_argument("--missing-rate", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=30, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--eval-rounds", type=int, default=3, help="timed validation passes per model")
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = {"missing_rate": args.missing_rate, "show_progress": False}
    variants = [parse_variant(v) for v in args.variants]
    config = build_config(variants[0][0], args.dataset, args.config_file, base)
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))

    runs = []
    for label, (name, overrides) in zip(args.variants, variants):
        model_config = build_config(name, args.dataset, args.config_file, {**base, **overrides})
        init_seed(model_config["seed"], model_config["reproducibility"])
        model = get_model(name)(model_config, train_data._dataset).to(model_config["device"])
        optimizer = torch.optim.Adam(model.parameters(), lr=model_config["learning_rate"])
        trainer = get_trainer(model_config["MODEL_TYPE"], model_config["model"])(model_config, model)
        trainer.eval_collector.data_collect(train_data)
        runs.append({"label": label, "model": model, "optimizer": optimizer, "trainer": trainer, "steps": [],
                     "evals": []})

    def batches():
        while True:
            for run in runs:
                run["model"].train()  # a new epoch for every model, as the trainer starts one
            yield from train_data

    source = batches()
    for index in range(args.warmup + args.rounds):
        interaction = next(source)
        for run in runs:
            start = time.perf_counter()
            run["optimizer"].zero_grad()
            loss = run["model"].calculate_loss(interaction)
            (sum(loss) if isinstance(loss, tuple) else loss).backward()
            run["optimizer"].step()
            if index >= args.warmup:
                run["steps"].append(time.perf_counter() - start)
    for _ in range(args.eval_rounds):
        for run in runs:
            run["model"].train()  # the cache of the last pass is dropped, as after a training epoch
            start = time.perf_counter()
            run["trainer"].evaluate(valid_data, load_best_model=False)
            run["evals"].append(time.perf_counter() - start)

    steps_per_epoch = len(train_data)
    base_step = statistics.median(runs[0]["steps"])
    base_eval = statistics.median(runs[0]["evals"])
    print(f"{args.dataset}, missing {args.missing_rate}, {args.rounds} steps each, round-robin, "
          f"{steps_per_epoch} steps/epoch, torch threads {torch.get_num_threads()}")
    print(f"\n| model | s/step (median) | × {runs[0]['label']} | s/epoch (extrapolated) "
          f"| s/validation pass (median) | × {runs[0]['label']} |\n|---|---:|---:|---:|---:|---:|")
    for run in runs:
        step, evaluation = statistics.median(run["steps"]), statistics.median(run["evals"])
        print(f"| {run['label']} | {step:.3f} | {step / base_step:.2f}× | {step * steps_per_epoch:.1f} "
              f"| {evaluation:.2f} | {evaluation / base_eval:.2f}× |")


if __name__ == "__main__":
    main()
