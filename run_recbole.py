"""Train and evaluate a model, ours or RecBole's, as RecBole's own run_recbole.py does.

    python run_recbole.py --model=LightGCN --dataset=tiktok --missing_rate=0.9
    python run_recbole.py --model=BPR,LightGCN --dataset=ml-100k-mm
    python run_recbole.py --model=LightGCN --dataset=ml-100k-mm --nproc=2    # RecBole's DDP mode

``--key=value`` arguments other than the ones below override any config key,
as in RecBole; a key that no config file, model, dataset or RecBole default
knows is refused as a likely typo (declare new keys with ``extra_keys``, see
README).

With ``--seeds``, ``--missing_rates``, ``--ablation``, ``--results``,
``--table`` or ``--table-only`` it runs a comparison instead, resumable and
tabulated (``python run_recbole.py --seeds=2020 -h`` lists its options;
see :mod:`recbole_ci2mg.compare`):

    python run_recbole.py --model=CI2MG,LightGCN,SGL --dataset=tiktok --seeds=2020,2021,2022
    python run_recbole.py --model=CI2MG,LightGCN-M --dataset=tiktok --missing_rates=0,0.3,0.5,0.7,0.9
    python run_recbole.py --ablation --dataset=tiktok --missing_rate=0.9 --seeds=2020
"""

import argparse
import sys

from recbole_ci2mg import compare
from recbole_ci2mg.data import EMBEDDED_DATASET
from recbole_ci2mg.quick_start import build_config, run_recbole_distributed, run_recbole_group
from recbole_ci2mg.settings import parse_overrides

DEFAULT_MODEL = "CI2MG"


def format_results(results, k=20):
    """One line per run: test Recall/NDCG/Precision@k, best epoch, seconds per epoch."""
    keys = [f"recall@{k}", f"ndcg@{k}", f"precision@{k}"]
    header = f"{'model':<12}" + "".join(f"{key:>14}" for key in keys) + f"{'best epoch':>12}{'s/epoch':>10}"
    lines = [header]
    for result in results:
        test = result["test_result"]
        seconds = result["train_epoch_seconds"]
        lines.append(
            f"{result['model']:<12}"
            + "".join(f"{test.get(key, float('nan')):>14.4f}" for key in keys)
            + f"{str(result['best_epoch']):>12}"
            + (f"{seconds:>10.2f}" if seconds is not None else f"{'-':>10}")
        )
    return "\n".join(lines)


def main():
    if compare.wants_comparison(sys.argv[1:]):
        compare.main(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help="model name, or several separated by commas")
    parser.add_argument("--dataset", "-d", default=EMBEDDED_DATASET, help="dataset name")
    parser.add_argument("--config_files", default=None, help="config files, separated by spaces")
    # RecBole's multi-process mode (quick_start.run_recbole_distributed; gloo on CPU, nccl on GPUs)
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all machines (default: nproc)")
    parser.add_argument("--ip", default="localhost", help="address of rank 0")
    parser.add_argument("--port", default="5678", help="port of rank 0")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank of this machine's first process")
    args, rest = parser.parse_known_args()

    models = [name.strip() for name in args.model.split(",") if name.strip()]
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        overrides = parse_overrides(rest)
        for name in models:  # every model's settings, before the first one trains
            build_config(name, args.dataset, config_file_list, dict(overrides))
    except ValueError as error:
        parser.error(str(error))
    if args.nproc > 1 or args.world_size > 1:
        distributed = dict(
            nproc=args.nproc, world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset
        )
        results = [
            run_recbole_distributed(name, args.dataset, config_file_list, dict(overrides), **distributed)
            for name in models
        ]
    else:
        results = run_recbole_group(models, args.dataset, config_file_list=config_file_list, config_dict=overrides)
    print(format_results(results))


if __name__ == "__main__":
    main()
