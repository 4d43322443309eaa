"""Train and evaluate a model, ours or RecBole's, as RecBole's own run_recbole.py does.

    python run_recbole.py --model=LightGCN --dataset=tiktok --missing_rate=0.9
    python run_recbole.py --model=BPR,LightGCN --dataset=ml-100k-mm

``--key=value`` arguments other than the ones below override any config key,
exactly as in RecBole (RecBole's Config reads them from the command line).
"""

import argparse

from recbole_ci2mg.data import EMBEDDED_DATASET
from recbole_ci2mg.quick_start import run_recbole_group

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help="model name, or several separated by commas")
    parser.add_argument("--dataset", "-d", default=EMBEDDED_DATASET, help="dataset name")
    parser.add_argument("--config_files", default=None, help="config files, separated by spaces")
    args, _ = parser.parse_known_args()

    models = [name.strip() for name in args.model.split(",") if name.strip()]
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    results = run_recbole_group(models, args.dataset, config_file_list=config_file_list)
    print(format_results(results))


if __name__ == "__main__":
    main()
