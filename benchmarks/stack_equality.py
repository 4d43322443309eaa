"""The same seed gives the same numbers on the old and the new scientific stack (issue 14).

    OMP_NUM_THREADS=1 python benchmarks/stack_equality.py --out benchmarks/results/stack_equality-old.json
    OMP_NUM_THREADS=1 python benchmarks/stack_equality.py --out benchmarks/results/stack_equality-new.json
    python benchmarks/stack_equality.py --compare benchmarks/results/stack_equality-old.json \
        benchmarks/results/stack_equality-new.json

Trains BPR, LightGCN and CI2MG on the embedded default ``ml-100k-mm`` (seed
2020, ``missing_rate`` 0) for a fixed number of epochs each, in a scratch
folder where the dataset is built afresh, and writes one JSON file: the
versions of the libraries, a SHA-256 of the built dataset files, and per
model its valid and test metrics to 10 decimals, best epoch and a SHA-256 of
the best model's parameters (the checkpoint RecBole evaluates). ``--compare``
prints every value that differs between two such files and exits 1 if any
metric, parameter hash or the dataset does.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy  # noqa: E402
import torch  # noqa: E402

from recbole_ci2mg.quick_start import run_recbole  # noqa: E402

DATASET = "ml-100k-mm"
EPOCHS = {"BPR": 30, "LightGCN": 20, "CI2MG": 10}
# Ten decimals instead of RecBole's four, so a difference in the fifth shows.
SETTINGS = {"seed": 2020, "missing_rate": 0.0, "metric_decimal_place": 10, "show_progress": False, "state": "WARNING"}


def sha256_of_files(folder):
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def sha256_of_parameters(checkpoint_file):
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def measure(workdir):
    record = {
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pandas": pd.__version__,
            "torch": torch.__version__,
        },
        "epochs": EPOCHS,
        "settings": SETTINGS,
        "models": {},
    }
    for model, epochs in EPOCHS.items():
        result = run_recbole(model, DATASET, config_dict={**SETTINGS, "epochs": epochs})
        record["models"][model] = {
            "best_epoch": result["best_epoch"],
            "valid": {k: float(v) for k, v in result["best_valid_result"].items()},
            "test": {k: float(v) for k, v in result["test_result"].items()},
            "parameters_sha256": sha256_of_parameters(result["saved_model_file"]),
        }
        print(model, record["models"][model]["test"], flush=True)
    record["dataset_sha256"] = sha256_of_files(Path(workdir) / "dataset" / DATASET)
    return record


def differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in differences(a.get(key), b.get(key), f"{path}/{key}")]
    return [] if a == b else [(path, a, b)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--compare", nargs=2, metavar="JSON", help="print what differs between two results")
    args = parser.parse_args(argv)
    if args.compare:
        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        found = differences(a, b)
        for path, x, y in found:
            print(f"{path}: {x} | {y}")
        results_differ = [path for path, _, _ in found if not path.startswith("/versions/")]
        print("identical apart from the versions" if not results_differ else f"{len(results_differ)} results differ")
        return 1 if results_differ else 0
    if not args.out:
        parser.error("--out or --compare is required")
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # RecBole writes log/, saved/ and the dataset here
        record = measure(workdir)
        os.chdir(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
