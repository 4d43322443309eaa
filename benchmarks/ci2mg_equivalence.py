"""Does this checkout train and score CI2MG as another one does? Losses, parameters and scores compared (issue 11).

Each side runs in its own process with its own ``recbole_ci2mg`` on the path
(``--reference DIR``: a checkout, e.g. ``git archive <commit> | tar -x -C DIR``;
the other side is this checkout). Both build the model with the same seed,
take the same ``--steps`` Adam steps on RecBole's training batches (the
trainer's ``model.train()`` at each epoch), record every loss, then score
``--users`` users by full ranking in evaluation mode. Parameters are compared
at the start and the end, and gradients at the first step, after renaming the reference's keys to this
checkout's (``RENAMES``). The verdict is printed as JSON: the largest relative
difference of the losses and of the scores, and of each tensor (in norm).
``--this DIR --this-threads 2`` compares a checkout with itself under another
summation order, the size of round-off's own effect.

    OMP_NUM_THREADS=1 python benchmarks/ci2mg_equivalence.py --reference /tmp/ci2mg-old \\
        --config-file properties/dataset/tiktok.yaml --steps 40
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# reference parameter name prefix -> this checkout's (the restructure of issue 11)
RENAMES = {
    "projections.": "content.projections.",
    "generators.": "fusion.generators.",
    "generator_norms.": "fusion.norms.",
    "decoders.": "fusion.decoders.",
}


def renamed(name):
    for old, new in RENAMES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def child(spec, out):
    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_ci2mg.quick_start import build_config, create_dataset
    from recbole_ci2mg.registry import get_model

    torch.set_num_threads(spec["threads"])
    config = build_config(spec["model"], spec["dataset"], spec["config_files"],
                          {"missing_rate": spec["missing_rate"], "show_progress": False, **spec["overrides"]})
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(spec["model"])(config, train_data._dataset).to(config["device"])
    start = {renamed(k): v.detach().clone() for k, v in model.state_dict().items()}
    users = torch.arange(1, min(model.n_users, spec["users"] + 1))
    scores_start = scores_of(model, users)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    losses = []
    while len(losses) < spec["steps"]:
        model.train()
        for interaction in train_data:
            if len(losses) == spec["steps"]:
                break
            optimizer.zero_grad()
            loss = model.calculate_loss(interaction.to(config["device"]))
            loss.backward()
            if not losses:
                first_grads = {renamed(k): p.grad.detach().clone() for k, p in model.named_parameters()
                               if p.grad is not None}
            optimizer.step()
            losses.append(float(loss.detach()))
    scores = scores_of(model, users)
    end = {renamed(k): v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"losses": losses, "start": start, "first_grads": first_grads, "end": end, "scores": scores,
                "scores_start": scores_start, "source": spec["source"]}, out)


def scores_of(model, users):
    """Full-ranking scores of ``users`` in evaluation mode, ``[len(users), N_V]``."""
    import torch
    from recbole.data.interaction import Interaction

    model.eval()
    with torch.no_grad():
        return model.full_sort_predict(Interaction({model.USER_ID: users})).view(len(users), -1)


def run_side(name, source, threads, spec, workdir):
    out = Path(workdir) / f"{name}.pt"
    env = {**os.environ, "PYTHONPATH": source, "OMP_NUM_THREADS": str(threads)}
    spec = {**spec, "source": source, "threads": threads}
    subprocess.run([sys.executable, __file__, "--child", json.dumps(spec), str(out)], check=True, env=env,
                   cwd=workdir)
    return out


def max_relative(a, b):
    """Largest entry of ``|a - b|`` over the largest of ``|b|``."""
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def norm_relative(a, b):
    """``||a - b|| / ||b||``."""
    return float((a - b).norm()) / max(float(b.norm()), 1e-30)


def compare(reference, this):
    import torch

    ref, new = torch.load(reference), torch.load(this)
    report = {"steps": len(new["losses"])}
    report["loss_max_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(new["losses"], ref["losses"]))
    report["losses_first_last"] = {"this": [new["losses"][0], new["losses"][-1]],
                                   "reference": [ref["losses"][0], ref["losses"][-1]]}
    report["losses_first_5_rel_diff"] = [abs(a - b) / max(abs(b), 1e-12)
                                         for a, b in zip(new["losses"][:5], ref["losses"][:5])]
    for when in ("start", "first_grads", "end"):
        common = sorted(set(ref[when]) & set(new[when]))
        diffs = {k: norm_relative(new[when][k].float(), ref[when][k].float()) for k in common}
        worst = max(diffs, key=diffs.get)
        report[f"params_{when}_max_rel_diff"] = [diffs[worst], worst]
        if os.environ.get("EQUIVALENCE_DETAIL"):
            report[f"params_{when}_all"] = {
                k: f"{v:.2e} (|ref| {float(ref[when][k].float().norm()):.2e}, "
                   f"|diff| {float((new[when][k].float() - ref[when][k].float()).norm()):.2e})"
                for k, v in sorted(diffs.items(), key=lambda kv: -kv[1])}
        report[f"params_{when}_only_reference"] = sorted(set(ref[when]) - set(new[when]))
        report[f"params_{when}_only_this"] = sorted(set(new[when]) - set(ref[when]))
    report["scores_before_training_max_rel_diff"] = max_relative(new["scores_start"], ref["scores_start"])
    report["scores_max_rel_diff"] = max_relative(new["scores"], ref["scores"])
    top_ref = ref["scores"].topk(20, dim=1).indices
    top_new = new["scores"].topk(20, dim=1).indices
    overlap = (top_new.unsqueeze(2) == top_ref.unsqueeze(1)).any(2).float().mean()
    report["top20_overlap"] = float(overlap)
    return report


def main():
    if sys.argv[1:2] == ["--child"]:
        return child(json.loads(sys.argv[2]), sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="the other checkout's root")
    parser.add_argument("--this", default=str(REPO), help="the checkout compared with it (default: this one)")
    parser.add_argument("--this-threads", type=int, default=1,
                        help="torch threads of --this (2 against the reference itself shows what round-off does)")
    parser.add_argument("--model", default="CI2MG")
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--config-file", action="append", default=[], help="extra config files (both sides)")
    parser.add_argument("--missing-rate", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override on both sides (a Python literal, else a string)")
    args = parser.parse_args()
    import ast

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    spec = {"model": args.model, "dataset": args.dataset, "missing_rate": args.missing_rate, "steps": args.steps,
            "users": args.users, "overrides": overrides,
            "config_files": [str(Path(f).resolve()) for f in args.config_file]}
    with tempfile.TemporaryDirectory() as workdir:
        reference = run_side("reference", str(Path(args.reference).resolve()), 1, spec, workdir)
        this = run_side("this", str(Path(args.this).resolve()), args.this_threads, spec, workdir)
        print(json.dumps({"model": args.model, "overrides": overrides, **compare(reference, this)}, indent=1))


if __name__ == "__main__":
    main()
