"""A copy of a converted dataset whose feature rows are shuffled among its items: the content control.

Interactions, splits and item count are the source's, so a run draws the same missing-modality
mask (it depends on the seed and the item count only); every item keeps a real feature row, but
another item's. A model whose gain over the source's no-content control survives the shuffle owes
it to the graph the features are spread on, not to what they say (BENCHMARKS.md, "Feature
propagation").

    python benchmarks/shuffled_features.py tiktok --seed=0      # writes dataset/tiktok-shuffled
    python benchmarks/shuffled_features.py ml-100k-mm           # keyed files: the keys stay, the rows move
    python run_recbole.py --model=CI2MG-S --dataset=tiktok-shuffled ...
"""

import argparse
import shutil
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a dataset converted by dataset_prep (properties/dataset/NAME.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="of the permutation")
    args = parser.parse_args()
    source_yaml = REPO / "properties" / "dataset" / f"{args.dataset}.yaml"
    config = yaml.safe_load(source_yaml.read_text())
    name = f"{args.dataset}-shuffled"
    data_path = Path(config.get("data_path", "dataset"))  # RecBole's default: dataset/ under the working folder
    source, target = data_path / args.dataset, data_path / name
    target.mkdir(parents=True, exist_ok=True)
    for path in source.glob(f"{args.dataset}.*"):  # the atomic files, renamed
        shutil.copyfile(path, target / (name + path.name[len(args.dataset):]))
    permutation = None
    for modality in config["modalities"].values():
        features = np.load(source / modality["file"], allow_pickle=False)
        if "keys" in modality:  # line i names row i's item: the keys stay, the rows move
            shutil.copyfile(source / modality["keys"], target / modality["keys"])
        if permutation is None or len(permutation) != features.shape[0]:  # one per row count
            permutation = np.random.default_rng(args.seed).permutation(features.shape[0])
        np.save(target / modality["file"], features[permutation])
    text = source_yaml.read_text().replace(f"data_path/{args.dataset}/", f"data_path/{name}/")
    header = f"# {args.dataset} with its feature rows shuffled among items (benchmarks/shuffled_features.py, seed {args.seed})\n"
    (REPO / "properties" / "dataset" / f"{name}.yaml").write_text(header + text)
    print(f"wrote {target} and properties/dataset/{name}.yaml")


if __name__ == "__main__":
    main()
