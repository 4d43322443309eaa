"""How much of validation and test only content can reach, and how far the features alone reach it.

A reading for issue 12 (BENCHMARKS.md, "What content can reach on TikTok"): every CI²MG-family row
has cold-item test recall 0, where a cold item has no training interaction. This script, with no
training, reports per missing rate and split:

- the share of the split's positives on cold items (the most any model's Recall@20 can gain from
  them, for one positive per user), and the share of those cold items with an observed modality
  under the mask the models see (the same mask: it is read from the dataset as they read it);
- a content-only scorer's reach: each item is its observed modalities, standardised over the
  observed rows and L2-normalised per modality (a missing modality contributes zeros), a user is
  the normalised sum of the training items' vectors, and a cold positive counts as reached when it
  is among the user's top 20 over all items (training items excluded), or among the top 20 of the
  cold items alone (ties broken at random: the chance of being reached is averaged);
- the gain that reach would bring if every reached positive were added to a model's Recall@20 and
  no other hit lost: the cold share times the reach over all items (a bound of this scorer, not of
  content: a learned scorer may reach further).

    python benchmarks/cold_item_reach.py --dataset=tiktok --missing_rates=0,0.3,0.6,0.9
"""

import argparse

import numpy as np
import torch
from recbole.data import data_preparation
from torch.nn.functional import normalize

from recbole_ci2mg.model.layers.content import standardise
from recbole_ci2mg.quick_start import build_config, create_dataset


def content_vectors(dataset):
    """``[n_items, sum d_m]``: each observed modality standardised (CI²MG's ``standardise``) and
    L2-normalised, missing rows zero."""
    blocks = [normalize(standardise(dataset.modality_features[name], dataset.modality_observed[name]), dim=1)
              for name in dataset.modality_names]
    return torch.cat(blocks, dim=1).double().numpy() / np.sqrt(len(blocks))


def reach(train_matrix, split_matrix, vectors, has_content, k=20):
    """Over the split's positives on cold items: (their share of the split's positives, the share with
    content, reached among all items, reached among cold items, number of cold positives)."""
    cold = np.asarray(train_matrix.sum(axis=0)).ravel() == 0
    cold[0] = False  # padding
    users, items = split_matrix.nonzero()
    on_cold = cold[items]
    users, items = users[on_cold], items[on_cold]
    if not len(items):
        return 0.0, float("nan"), float("nan"), float("nan"), 0
    profiles = np.asarray(train_matrix[users] @ vectors)
    profiles /= np.linalg.norm(profiles, axis=1, keepdims=True) + 1e-12
    scores = profiles @ vectors.T
    scores[:, 0] = -np.inf
    scores[train_matrix[users].toarray() > 0] = -np.inf
    target = scores[np.arange(len(items)), items][:, None]
    return (len(items) / split_matrix.nnz, float(has_content[items].mean()),
            in_top(scores, target, k), in_top(np.where(cold[None, :], scores, -np.inf), target, k), len(items))


def in_top(scores, target, k):
    """The mean chance that each row's ``target`` score is among its top ``k``, ties broken at random (a
    positive without content scores 0, as do most items at high missing rates: it reaches the top k only
    by the luck of a tie)."""
    above = (scores > target).sum(axis=1)
    ties = (scores == target).sum(axis=1)  # the target itself included
    return float(np.clip((k - above) / ties, 0, 1).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--missing_rates", default="0,0.9")
    parser.add_argument("--data_path", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| missing | split | positives on cold items | cold positives with content | cold items in the catalogue | "
          "content-only reach, top 20 of all items | top 20 of cold items | the gain's bound (Recall@20 points) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for rate in (float(r) for r in args.missing_rates.split(",")):
        extra = {"data_path": args.data_path} if args.data_path else {}
        config = build_config("LightGCN-M", args.dataset, config_dict={"missing_rate": rate, **extra})
        dataset = create_dataset(config)
        train, valid, test = data_preparation(config, dataset)
        train_matrix = train._dataset.inter_matrix(form="csr").astype(np.float64)
        vectors = content_vectors(dataset)
        has_content = np.any(np.stack([dataset.modality_observed[n].numpy() for n in dataset.modality_names]), axis=0)
        n_cold = int((np.asarray(train_matrix.sum(axis=0)).ravel()[1:] == 0).sum())
        for split, data in (("valid", valid), ("test", test)):
            share, with_content, all_items, cold_items, n = reach(
                train_matrix, data._dataset.inter_matrix(form="csr"), vectors, has_content)
            print(f"| {rate:g} | {split} | {100 * share:.1f} % ({n}) | {100 * with_content:.1f} % | {n_cold} | "
                  f"{100 * all_items:.1f} % | {100 * cold_items:.1f} % | {100 * share * all_items:.2f} |")


if __name__ == "__main__":
    main()
