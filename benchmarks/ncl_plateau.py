"""NCL's objective on a dense graph: the gradient of each loss term at initialisation, and the BPR
loss over the first epochs, for RecBole's NCL, CI²MG-S with ``id_contrast`` and LightGCN
(BENCHMARKS.md, "NCL's objective on a dense graph").

    python benchmarks/ncl_plateau.py --dataset=ml-100k-mm --missing_rate=0.9 --seed=2020 --epochs=3

Each model is trained with Adam at its configured learning rate, the prototype term left out as in
NCL's warm-up, so the numbers are those of a run's first epochs. Prints the mean share of the
users within two hops of a user (what NCL's structure term contrasts a user with), then, per
model, the norm of each term's gradient on the user embeddings at the first batch, then each
epoch's summed BPR-and-L2 term and the mean norm of the user and item embeddings.
"""
import argparse

import numpy as np
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_ci2mg.quick_start import build_config, create_dataset
from recbole_ci2mg.registry import get_model

MODELS = [  # (model, settings)
    ("NCL", {}),
    ("CI2MG-S", {"id_contrast": True, "item_graph": "none", "n_layers": 3,  # stop 20's model: BPR and NCL's terms
                 "id_noise_contrast": False, "id_readout": "all"}),
    ("LightGCN", {"n_layers": 3}),
]


def two_hop_share(dataset):
    """Mean over users of the share of users that share a training item with them (RecBole's padding left out)."""
    R = dataset.inter_matrix(form="csr")[1:, 1:]
    R.data[:] = 1
    reached = R @ R.T
    reached.data[:] = 1
    return float(np.asarray(reached.sum(axis=1)).ravel().mean() / R.shape[0])


def first_epochs(model_name, settings, args, first=False):
    prototypes = {"num_clusters": args.num_clusters} if model_name == "NCL" or settings.get("id_contrast") else {}
    config = build_config(model_name, args.dataset, config_dict={
        "missing_rate": args.missing_rate, "seed": args.seed, **prototypes, **settings})
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    if first:
        print(f"{args.dataset}: users within two hops of a user, mean share {two_hop_share(train._dataset):.3f}")
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(model_name)(config, train._dataset)
    model.train()
    if hasattr(model, "e_step") and (model_name == "NCL" or settings.get("id_contrast")):
        model.e_step()
    terms = model.calculate_loss(next(iter(train)))
    terms = terms[:2] if isinstance(terms, tuple) else (terms,)  # BPR + L2, and NCL's structure term
    norms = []
    for term in terms:
        model.zero_grad()
        term.backward(retain_graph=True)
        norms.append(model.user_embedding.weight.grad.norm().item())
    print(f"{model_name} {settings}: user-embedding gradient norm at the first batch, "
          f"BPR + L2 {norms[0]:.2e}" + (f", structure term {norms[1]:.2e}" if len(norms) > 1 else ""), flush=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    for epoch in range(args.epochs):
        total = 0.0
        for batch in train:
            losses = model.calculate_loss(batch)
            losses = losses[:2] if isinstance(losses, tuple) else (losses,)  # the warm-up leaves the prototypes out
            optimizer.zero_grad()
            sum(losses).backward()
            optimizer.step()
            total += losses[0].item()
        with torch.no_grad():
            users, items = model.user_embedding.weight.norm(dim=1).mean(), model.item_embedding.weight.norm(dim=1).mean()
        print(f"  epoch {epoch}: BPR + L2 summed over batches {total:.4f}, "
              f"mean norm users {users:.3f}, items {items:.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k-mm")
    parser.add_argument("--missing_rate", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num_clusters", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for number, (model_name, settings) in enumerate(MODELS):
        first_epochs(model_name, settings, args, first=number == 0)


if __name__ == "__main__":
    main()
