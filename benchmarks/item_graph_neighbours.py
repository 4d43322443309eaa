"""How often CI²MG-S's raw kNN neighbours share a training user with the item, by missing rate.

A reading for issue 12 (BENCHMARKS.md, "The CI²MG family's best at 90 % missing"): the raw
graph links only the items that have a modality, so at 90 % missing each item's k neighbours are
drawn from a tenth of the catalogue. This script builds CI²MG-S (its graph, from its defaults
and the mask of the seed) at each missing rate and reports, over the items that have graph
neighbours, the share of those neighbours that some training user also interacted with
("co-consumed") and the mean cosine of the two items' training-user sets, beside the same for as
many random items drawn from the same linked items, and the share of those neighbours that are
also among the item's neighbours in the content-free graph of ``item_graph: interactions`` (its
nearest items by their training users). No training: the graph is the one the model is built with.

    python benchmarks/item_graph_neighbours.py --dataset=tiktok --missing_rates=0,0.9 --seed=2020
    python benchmarks/item_graph_neighbours.py --dataset=tiktok --missing_rates=0.9 --item_graph=imputed

``--item_graph`` reads another of CI²MG-S's graphs (``imputed``: the missing rows completed by
feature propagation first).
"""

import argparse

import numpy as np
import torch
from recbole.data import data_preparation

from recbole_ci2mg.model.layers.item_graph import co_consumption_knn_edges
from recbole_ci2mg.quick_start import build_config, create_dataset
from recbole_ci2mg.registry import get_model


def neighbour_agreement(co, degree, rows, neighbours, valid):
    """Over ``rows``: the mean share of their ``valid`` neighbours with a common training user, and
    the mean cosine of the two items' training-user sets (co-count over the root of both counts)."""
    shares, cosines = [], []
    for i, row, ok in zip(rows, neighbours, valid):
        linked = row[ok]
        if len(linked):
            common = co[i, linked].toarray().ravel()
            shares.append(float((common > 0).mean()))
            cosines.append(float((common / np.sqrt(np.maximum(degree[i] * degree[linked], 1))).mean()))
    nan = float("nan")
    return (float(np.mean(shares)) if shares else nan), (float(np.mean(cosines)) if cosines else nan), len(shares)


def reading(dataset_name, rate, seed, k, settings=None, item_graph="raw"):
    """One row per modality: ``(rate, modality, linked items, items, their share of the training edges,
    (neighbours co-consumed, their user cosine), (the same for random linked items), neighbours that are
    also the item's neighbours in the interactions graph)``."""
    config = build_config("CI2MG-S", dataset_name, config_dict={
        **(settings or {}), "missing_rate": rate, "seed": seed, "item_graph_k": k, "item_graph": item_graph})
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("CI2MG-S")(config, train._dataset)
    interactions = train._dataset.inter_matrix(form="csr").astype(np.float32)  # [N_U, N_V]
    co = (interactions.T @ interactions).tocsr()  # [N_V, N_V] training users two items share
    degree = np.asarray(interactions.sum(axis=0)).ravel()  # training users of each item
    rng = np.random.default_rng(seed)
    cf_neighbours, cf_weights, _ = (t.numpy() for t in co_consumption_knn_edges(interactions, k, outsider_loops=False))
    rows = []
    for m, name in enumerate(model.modality_names):
        neighbours, weights = model.graph_neighbours[m].numpy(), model.graph_weights[m].numpy()
        items = np.arange(model.n_items)
        valid = (weights > 0) & (neighbours != items[:, None])  # real neighbours, self-loops left out
        linked = np.flatnonzero(valid.any(axis=1))
        graph = neighbour_agreement(co, degree, linked, neighbours[linked], valid[linked])
        draws = rng.choice(linked, size=(len(linked), neighbours.shape[1]))  # random items of the linked set
        random = neighbour_agreement(co, degree, linked, draws, draws != linked[:, None])
        edges = interactions[:, linked].nnz / interactions.nnz
        shared = [np.isin(neighbours[i][valid[i]], cf_neighbours[i][cf_weights[i] > 0]).mean() for i in linked]
        rows.append((rate, name, graph[2], model.n_items - 1, edges, graph[:2], random[:2],
                     float(np.mean(shared)) if shared else float("nan")))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--missing_rates", default="0,0.9")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--item_graph", default="raw", help="raw, imputed or interactions (CI2MGS.yaml)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| missing | modality | linked items | items | their share of training edges | neighbours co-consumed | "
          "random linked items co-consumed | neighbours' user cosine | random linked items' user cosine | "
          "neighbours in the interactions graph |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rate in (float(r) for r in args.missing_rates.split(",")):
        for rate_, name, n, items, edges, graph, random, shared in reading(args.dataset, rate, args.seed, args.k,
                                                                  item_graph=args.item_graph):
            print(f"| {rate_:g} | {name} | {n:,} | {items:,} | {100 * edges:.1f} % | {100 * graph[0]:.1f} % | "
                  f"{100 * random[0]:.1f} % | {graph[1]:.4f} | {random[1]:.4f} | {100 * shared:.1f} % |")


if __name__ == "__main__":
    main()
