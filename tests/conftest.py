"""Shared fixtures: small benchmark datasets written by the tests themselves, and model helpers."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_ci2mg.quick_start import build_config, create_dataset
from recbole_ci2mg.registry import get_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    """Run every test in its own folder with a clean command line.

    RecBole writes log/, log_tensorboard/ and saved/ into the working directory
    and reads ``--key=value`` config overrides from ``sys.argv``: neither the
    repository nor pytest's own flags may leak into a run.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny tensors on shared cores gain nothing from a second, only waiting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_benchmark(root, name, splits, modalities=None):
    r"""Write ``root/name/name.{train,valid,test}.inter`` and feature files.

    Args:
        splits (dict): split name -> list of (user, item) raw ids.
        modalities (dict): modality name -> (matrix, keys or None); keys are
            written to ``<name>.keys`` beside ``<name>.npy``.

    Returns:
        dict: the config settings that read this dataset.
    """
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, pairs in splits.items():
        lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i in pairs]
        (folder / f"{name}.{split}.inter").write_text("\n".join(lines) + "\n")
    specs = {}
    for modality, (matrix, keys) in (modalities or {}).items():
        np.save(folder / f"{modality}.npy", matrix)
        specs[modality] = {"file": f"{modality}.npy"}
        if keys is not None:
            (folder / f"{modality}.keys").write_text("\n".join(map(str, keys)) + "\n")
            specs[modality]["keys"] = f"{modality}.keys"
    return {
        "data_path": str(root),
        "benchmark_filename": list(splits),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "load_col": {"inter": ["user_id", "item_id"]},
        "modalities": specs,
        "show_progress": False,
        "state": "WARNING",
    }


def planted_interactions(n_users=60, n_items=40, per_user=8, seed=0):
    """Train/valid/test pairs where user u prefers items of cluster u % 4."""
    rng = np.random.default_rng(seed)
    clusters = np.arange(n_items) % 4
    splits = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        liked = rng.choice(np.flatnonzero(clusters == u % 4), size=per_user, replace=False)
        splits["train"] += [(u, i) for i in liked[:-2]]
        splits["valid"].append((u, liked[-2]))
        splits["test"].append((u, liked[-1]))
    return splits, clusters


# --- models on these datasets: build, train a step, evaluate a loss -----------------


def prepare(name, settings, dataset="tiny", **overrides):
    """The model built on the training split, and the training data loader (batches of 64)."""
    config = build_config(name, dataset, config_dict={**settings, "train_batch_size": 64, **overrides})
    init_seed(config["seed"], True)
    train, _, _ = data_preparation(config, create_dataset(config))
    return get_model(name)(config, train._dataset), train


def seeded_loss(model, batch, seed=0):
    """``calculate_loss`` with the same random draws (augmentations, noise) every call, no update."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.calculate_loss(batch).item()


def train_step(model, batch, lr=0.01, seed=0):
    """One Adam step from a fresh optimiser, with a fixed seed for the model's random draws."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(seed)
    optimizer.zero_grad()
    model.calculate_loss(batch).backward()
    optimizer.step()


def modality_settings(root, dims, missing_rate=0.0):
    """The planted 60-user, 40-item benchmark; per entry of ``dims`` a noisy cluster-one-hot feature matrix."""
    splits, clusters = planted_interactions()
    rng = np.random.default_rng(3)
    modalities = {
        name: (rng.standard_normal((40, dim)).astype(np.float32) + np.eye(4, dim)[clusters].astype(np.float32), None)
        for name, dim in dims.items()
    }
    return {**write_benchmark(root, "tiny", splits, modalities), "missing_rate": missing_rate}


@pytest.fixture
def tiny(tmp_path):
    """A 60-user, 40-item benchmark dataset with two modalities.

    ``v`` is row-ordered (row i = item "i"); ``t`` is keyed and has no row for
    items 35..39 (really missing).
    """
    splits, clusters = planted_interactions()
    rng = np.random.default_rng(1)
    v = np.eye(4, dtype=np.float32)[clusters] + 0.01 * rng.standard_normal((40, 4)).astype(np.float32)
    t_keys = list(range(35))[::-1]  # keyed rows in reverse order
    t = np.stack([np.full(3, k, np.float32) for k in t_keys])
    settings = write_benchmark(tmp_path / "data", "tiny", splits, {"v": (v, None), "t": (t, t_keys)})
    return settings


def warnings_of(caplog):
    """The messages logged at WARNING that ``caplog`` captured."""
    return [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]


def optimizer_step(model, optimizer, batch):
    """One training step as RecBole's trainer takes it (``model.train()`` first); returns the loss."""
    model.train()
    optimizer.zero_grad()
    loss = model.calculate_loss(batch)
    loss.backward()
    optimizer.step()
    return loss


def both_scores(model):
    """``full_sort_predict`` and ``predict`` over every (user, item) pair, each ``[n_users - 1, n_items]``."""
    users = torch.arange(1, model.n_users)
    items = torch.arange(model.n_items)
    with torch.no_grad():
        full = model.full_sort_predict(Interaction({model.USER_ID: users})).view(len(users), -1)
        pairs = Interaction(
            {model.USER_ID: users.repeat_interleave(len(items)), model.ITEM_ID: items.repeat(len(users))}
        )
        pointwise = model.predict(pairs).view(len(users), -1)
    return full, pointwise
