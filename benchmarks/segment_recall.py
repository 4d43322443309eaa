"""Test Recall@20 of each row of a results file, within segments of the test users.

A reading for issue 12 (BENCHMARKS.md, stop 28): where an item-item graph gains and where it
loses. Each user's score is the mean over the row's seeds of that user's test Recall@20 (the
per-user files the records name, as the tables' Wilcoxon test reads them); a segment's value is
its users' mean. Segments, for a benchmark dataset whose test split holds one item per user
(TikTok): the test item's training degree (at most ``--tail`` interactions, or more), and whether
the test item has an observed modality under the mask file given.

    python benchmarks/segment_recall.py --results=benchmarks/results/tiktok_missing0.9_hybrid_all.jsonl \\
        --dataset_dir=dataset/tiktok --mask=dataset/tiktok/masks/tiktok.independent-rate0.9-seed2023.mask
"""

import argparse
from pathlib import Path

import numpy as np

from recbole_ci2mg.data.masks import load_masks
from recbole_ci2mg.results import read_records
from recbole_ci2mg.tables import pooled_scores, summarise


def read_pairs(path):
    """(user token, item token) per line of a RecBole atomic ``.inter`` file, header skipped."""
    lines = Path(path).read_text().splitlines()[1:]
    return [tuple(line.split("\t")[:2]) for line in lines if line]


def user_segments(dataset_dir, tail, mask=None):
    """``{segment name: set of user tokens}`` from the test items' training degree and content (an item of the
    mask file with any modality observed)."""
    dataset_dir = Path(dataset_dir)
    name = dataset_dir.name
    train, valid, test = (read_pairs(dataset_dir / f"{name}.{split}.inter") for split in ("train", "valid", "test"))
    degree = {}
    for _, item in train:
        degree[item] = degree.get(item, 0) + 1
    segments = {
        f"test item with at most {tail} training interactions": {u for u, i in test if degree.get(i, 0) <= tail},
        f"test item with more than {tail}": {u for u, i in test if degree.get(i, 0) > tail},
    }
    if mask:
        items = sorted({i for pairs in (train, valid, test) for _, i in pairs})
        names = Path(mask).read_text().split("\n", 1)[0].split("\t")[1:]  # the header: item_id, then the modalities
        observed = load_masks(mask, items, names)  # checks the file covers exactly these items
        with_content = {item for k, item in enumerate(items) if any(observed[n][k] for n in names)}
        segments["test item with content"] = {u for u, i in test if i in with_content}
        segments["test item without content"] = {u for u, i in test if i not in with_content}
    return segments


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True)
    parser.add_argument("--dataset_dir", required=True, help="the folder of <name>.train.inter and <name>.test.inter")
    parser.add_argument("--mask", default=None, help="a mask file (item_id, then one 0/1 column per modality)")
    parser.add_argument("--tail", type=int, default=5)
    args = parser.parse_args()
    segments = user_segments(args.dataset_dir, args.tail, args.mask)
    rows = [row for row in summarise(read_records(args.results), args.results) if row["per_seed"]]
    print("| row | seeds | " + " | ".join(f"{name} ({len(users)} users)" for name, users in segments.items()) + " |")
    print("|---|---|" + "---:|" * len(segments))
    for row in rows:
        scores = pooled_scores(list(row["per_seed"].values()))
        cells = []
        for users in segments.values():
            values = [scores[u] for u in users if u in scores]
            cells.append(f"{100 * np.mean(values):.2f}" if values else "n/a")
        print(f"| {row['label']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
