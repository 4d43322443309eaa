"""Where a CI2MG training step's time goes: cProfile over a few hundred steps, one thread (issue 11).

The model is built as :func:`recbole_ci2mg.quick_start.run_recbole` builds it
and trained with ``calculate_loss``, backward and an Adam step on RecBole's
training batches (as the trainer does). After ``--warmup`` untimed steps,
``--steps`` steps run under :mod:`cProfile`; the report gives each step phase
(fetching the batch, the forward pass and losses, backward, the optimiser)
and, inside the forward pass, the cumulative time of every function of
``recbole_ci2mg`` and of POT, as a share of a step. ``--eval`` also profiles
one full-ranking evaluation of the validation set.

Run from the repository root (the dataset's YAML is in ``properties/dataset``)::

    OMP_NUM_THREADS=1 python benchmarks/ci2mg_profile.py --dataset tiktok --steps 300
    OMP_NUM_THREADS=1 python benchmarks/ci2mg_profile.py --model LightGCN-M --steps 300

Any ``--key=value`` after the options is a config override (``--ot_plan_refresh=epoch``).
"""

import argparse
import ast
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recbole_ci2mg

import torch  # noqa: E402
from recbole.data import data_preparation  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_ci2mg.quick_start import build_config, create_dataset  # noqa: E402
from recbole_ci2mg.registry import get_model  # noqa: E402


def build(model_name, dataset, overrides, config_files=None):
    config = build_config(model_name, dataset, config_files,
                          {"missing_rate": 0.9, "show_progress": False, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(model_name)(config, train_data._dataset).to(config["device"])
    return config, model, train_data, valid_data


def batches(model, train_data):
    while True:
        model.train()  # a new epoch, as the trainer starts one
        yield from train_data


def phase(name, times, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    times[name] = times.get(name, 0.0) + time.perf_counter() - start
    return out


def train_steps(model, optimizer, source, n, times):
    for _ in range(n):
        interaction = phase("batch (RecBole loader)", times, next, source)
        optimizer.zero_grad()
        loss = phase("forward + losses", times, model.calculate_loss, interaction)
        phase("backward", times, loss.backward)
        phase("optimiser step", times, optimizer.step)


def function_shares(profile, total, prefixes, top):
    """(cumulative s, share, name) of the functions whose file starts with one of ``prefixes``."""
    stats = pstats.Stats(profile)
    rows = []
    for (file, line, name), (_, calls, _, cumulative, _) in stats.stats.items():
        if any(p in file for p in prefixes):
            short = file.split("site-packages/")[-1].split("recbole_ci2mg/")[-1]
            rows.append((cumulative, calls, f"{short}:{line}({name})"))
    rows.sort(reverse=True)
    return [(c, c / total, calls, name) for c, calls, name in rows[:top]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="CI2MG")
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--config-file", action="append", default=[],
                        help="extra config files, e.g. a dataset YAML benchmarks/ci2mg_scaling.py wrote")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--eval", action="store_true", help="also profile one full-ranking validation pass")
    args, extra = parser.parse_known_args()
    overrides = {}
    for item in extra:
        key, _, value = item.lstrip("-").partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value

    torch.set_num_threads(1)
    config, model, train_data, valid_data = build(args.model, args.dataset, overrides, args.config_file)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    source = batches(model, train_data)
    train_steps(model, optimizer, source, args.warmup, {})

    times = {}
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    train_steps(model, optimizer, source, args.steps, times)
    profile.disable()
    total = time.perf_counter() - start
    print(f"{args.model} on {args.dataset}, {args.steps} steps, {total / args.steps * 1000:.1f} ms/step "
          f"under cProfile, {len(train_data)} steps/epoch, torch threads {torch.get_num_threads()}")
    print("\n| phase | ms/step | share |\n|---|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds / args.steps * 1000:.1f} | {seconds / total:.0%} |")
    print("\n| function (cumulative, inside the steps) | ms/step | share | calls |\n|---|---:|---:|---:|")
    for seconds, share, calls, name in function_shares(profile, total, ("recbole_ci2mg/", "/ot/"), args.top):
        print(f"| {name} | {seconds / args.steps * 1000:.1f} | {share:.0%} | {calls} |")

    if args.eval:
        from recbole_ci2mg.trainer import get_trainer

        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        trainer.eval_collector.data_collect(train_data)
        model.train()
        start = time.perf_counter()
        trainer.evaluate(valid_data, load_best_model=False)
        print(f"\none full-ranking validation pass: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
