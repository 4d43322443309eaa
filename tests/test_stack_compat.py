"""RecBole 1.2.1 and Ray 2.6.3 on numpy 2, scipy >= 1.13 and pandas 3 (recbole_ci2mg.compat).

Each test checks RecBole's own behaviour on tiny atomic files, with the values
the old stack (numpy < 2, scipy < 1.13, pandas < 3) gives; on the new stack it
fails without the compat patch it names.
"""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.general_recommender import LightGCN

from conftest import REPO
from recbole_ci2mg.compat import _numpy_has, check_ray_workers
from recbole_ci2mg.quick_start import build_config
from recbole_ci2mg.quick_start import create_dataset as create_multimodal_dataset
from recbole_ci2mg.registry import get_model

INTER = ["user_id:token\titem_id:token", "1\t1", "1\t2", "2\t3", "2\t4", "3\t1", "3\t4"]


def write_atomic(root, name, files):
    """``root/name/name.<suffix>`` for each suffix -> lines; returns the data_path."""
    folder = root / name
    folder.mkdir(parents=True)
    for suffix, lines in files.items():
        (folder / f"{name}.{suffix}").write_text("\n".join(lines) + "\n")
    return str(root)


def recbole_dataset(model, name, data_path, **settings):
    # filter_inter_by_user_or_item False keeps the items that have no feature row.
    settings = {"load_col": None, "filter_inter_by_user_or_item": False, "state": "ERROR", **settings}
    # The model class through our registry: RecBole's own name search imports its
    # sequential models, whose SINE module turns autograd's anomaly detection on.
    config = Config(model=get_model(model), dataset=name, config_dict={"data_path": data_path, **settings})
    return create_dataset(config)


def by_item(dataset, field):
    """Raw item token -> the item's value of ``field`` (a list for sequence fields)."""
    tokens = dataset.field2id_token["item_id"]
    values = [v.tolist() if hasattr(v, "tolist") else v for v in dataset.item_feat[field]]
    return {str(tokens[i]): value for i, value in zip(dataset.item_feat["item_id"].tolist(), values)}


# --- numpy 2: Config.compatibility_settings (patch_config_numpy_aliases) --------


def test_recbole_config_sets_its_numpy_aliases_and_leaves_numpy_2_as_it_was(tmp_path):
    data_path = write_atomic(tmp_path, "t", {"inter": INTER})
    Config(model="BPR", dataset="t", config_dict={"data_path": data_path})
    # RecBole's metrics and data code use these aliases; it sets them from np.float_ & co.
    assert np.float is np.float64 and np.int is np.int_ and np.bool is np.bool_
    if np.__version__ >= "2":
        assert not any(_numpy_has(name) for name in ("float_", "complex_", "unicode_"))


# --- numpy 2: Ray 2.6.3's ray.tune (import_ray_tune, ray_runtime_env) ------------


def test_ray_tune_and_recbole_quick_start_import():
    # A fresh interpreter: this one may have imported ray.tune already.
    code = (
        "from recbole_ci2mg.compat import _numpy_has, import_ray_tune\n"
        "had = _numpy_has('bool8')\n"
        "import_ray_tune()\n"
        "import recbole.quick_start\n"  # imports ray.tune too
        "assert _numpy_has('bool8') == had\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.mark.skipif(_numpy_has("bool8"), reason="numpy < 2 has np.bool8: Ray's workers need no setup hook")
def test_a_running_ray_without_the_setup_hook_is_refused():
    ray = pytest.importorskip("ray")
    ray.init(include_dashboard=False, num_cpus=1)
    try:
        with pytest.raises(RuntimeError, match="worker setup hook.*ray_runtime_env"):
            check_ray_workers()
    finally:
        ray.shutdown()


# --- scipy >= 1.13: dok_matrix._update (patch_dok_update) ------------------------


def test_lightgcn_builds_its_normalised_graph(tiny):
    config = build_config("LightGCN", "tiny", config_dict=tiny)
    train = data_preparation(config, create_multimodal_dataset(config))[0]
    model = LightGCN(config, train.dataset)
    inter = train.dataset.inter_matrix(form="coo").toarray()
    n = model.n_users + model.n_items
    adjacency = np.zeros((n, n), dtype=np.float32)
    adjacency[: model.n_users, model.n_users :] = inter > 0
    adjacency[model.n_users :, : model.n_users] = (inter > 0).T
    scale = (adjacency.sum(1) + 1e-7) ** -0.5
    expected = scale[:, None] * adjacency * scale[None, :]
    torch.testing.assert_close(model.norm_adj_matrix.to_dense(), torch.from_numpy(expected))


# --- pandas 3: chained fillna (patch_chained_fillna) -----------------------------


def test_missing_feature_values_are_filled_as_recbole_documents(tmp_path):
    # Item 2 has no price, item 3 no brand, item 4 no row at all.
    item = ["item_id:token\tprice:float\tbrand:token", "1\t2.0\ta", "2\t\tb", "3\t4.0\t"]
    dataset = recbole_dataset("BPR", "t", write_atomic(tmp_path, "t", {"inter": INTER, "item": item}))
    assert by_item(dataset, "price") == {"[PAD]": 3.0, "1": 2.0, "2": 3.0, "3": 4.0, "4": 3.0}  # the mean
    brands = dataset.field2id_token["brand"]
    assert {item: str(brands[int(b)]) for item, b in by_item(dataset, "brand").items()} == {
        "[PAD]": "[PAD]", "1": "a", "2": "b", "3": "[PAD]", "4": "[PAD]"
    }


def test_empty_sequence_cells_load_as_empty_sequences(tmp_path):
    item = ["item_id:token\tcats:token_seq\tvec:float_seq", "1\tx y\t1 3", "2\t\t", "3\tx\t2"]
    dataset = recbole_dataset("BPR", "t", write_atomic(tmp_path, "t", {"inter": INTER, "item": item}))
    cats = dataset.field2id_token["cats"]
    assert {item: [str(cats[c]) for c in row] for item, row in by_item(dataset, "cats").items()} == {
        "[PAD]": [], "1": ["x", "y"], "2": [], "3": ["x"], "4": []
    }
    assert by_item(dataset, "vec") == {"[PAD]": [], "1": [1.0, 3.0], "2": [], "3": [2.0], "4": []}


# --- pandas 3: Series.agg(len) (patch_sequence_lengths) --------------------------

SEQUENCES = ["item_id:token\tcats:token_seq\tvec:float_seq", "1\tx y\t1 3", "2\tz\t2", "3\tx\t0 4 2", "4\ty z x\t5"]


def test_sequence_fields_keep_each_rows_ids_and_normalised_values(tmp_path):
    data_path = write_atomic(tmp_path, "t", {"inter": INTER, "item": SEQUENCES})
    dataset = recbole_dataset("BPR", "t", data_path, normalize_field=["vec"])  # Dataset._remap, _normalize
    cats = dataset.field2id_token["cats"]
    assert {item: [str(cats[c]) for c in row] for item, row in by_item(dataset, "cats").items()} == {
        "[PAD]": [], "1": ["x", "y"], "2": ["z"], "3": ["x"], "4": ["y", "z", "x"]
    }
    expected = {"[PAD]": [], "1": [0.2, 0.6], "2": [0.4], "3": [0.0, 0.8, 0.4], "4": [1.0]}
    assert {item: pytest.approx(values) for item, values in by_item(dataset, "vec").items()} == expected


def test_float_sequences_are_discretised_per_value(tmp_path):
    data_path = write_atomic(tmp_path, "t", {"inter": INTER, "item": SEQUENCES})
    dataset = recbole_dataset(  # Dataset._discretization, equal-width buckets over [0, 5]
        "FM", "t", data_path, numerical_features=["vec"], discretization={"vec": {"method": "ED", "bucket": 2}}
    )
    buckets = {item: pair[1].tolist() for item, pair in by_item(dataset, "vec").items()}
    assert buckets == {"[PAD]": [], "1": [1.0, 2.0], "2": [1.0], "3": [1.0, 2.0, 1.0], "4": [2.0]}


def test_benchmark_sequences_keep_their_lengths(tmp_path):
    lines = ["user_id:token\titem_id_list:token_seq\titem_id:token"]
    files = {
        "train.inter": lines + ["1\t1 2 3\t4", "2\t2\t3", "3\t4 1\t2"],
        "valid.inter": lines + ["1\t1 2 3 4\t2"],
        "test.inter": lines + ["1\t1 2 3 4 2\t1"],
    }
    dataset = recbole_dataset(  # SequentialDataset._benchmark_presets
        "GRU4Rec", "t", write_atomic(tmp_path, "t", files), benchmark_filename=["train", "valid", "test"],
        alias_of_item_id=["item_id_list"], train_neg_sample_args=None,
    )
    assert dataset.inter_feat["item_length"].tolist() == [3, 1, 2, 4, 5]


def test_item_sequences_follow_the_knowledge_graph_item_order(tmp_path):
    files = {
        "inter": INTER,
        "item": ["item_id:token\tsimilar:token_seq", "1\t3 4", "2\t1", "3\t2 1 4", "4\t3"],
        "kg": ["head_id:token\trelation_id:token\ttail_id:token", "e1\tr1\te2", "e2\tr2\te5", "e3\tr1\te6"],
        "link": ["item_id:token\tentity_id:token", "1\te1", "3\te3", "4\te2"],
    }
    dataset = recbole_dataset(  # KnowledgeBasedDataset._reset_ent_remapID
        "CKE", "t", write_atomic(tmp_path, "t", files), alias_of_item_id=["similar"]
    )
    tokens = dataset.field2id_token["item_id"]
    assert {item: [str(tokens[i]) for i in row] for item, row in by_item(dataset, "similar").items()} == {
        "[PAD]": [], "1": ["3", "4"], "2": ["1"], "3": ["2", "1", "4"], "4": ["3"]
    }


# --- benchmarks/stack_equality.py ------------------------------------------------


def test_stack_equality_compare_tells_versions_from_results(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("stack_equality", REPO / "benchmarks" / "stack_equality.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    old = {"versions": {"numpy": "1.26.4"}, "models": {"BPR": {"test": {"recall@20": 0.1}}}}
    files = [tmp_path / name for name in ("old.json", "new.json", "other.json")]
    files[0].write_text(json.dumps(old))
    files[1].write_text(json.dumps({**old, "versions": {"numpy": "2.4.6"}}))
    files[2].write_text(json.dumps({**old, "models": {"BPR": {"test": {"recall@20": 0.2}}}}))
    assert script.main(["--compare", str(files[0]), str(files[1])]) == 0
    assert "/versions/numpy: 1.26.4 | 2.4.6" in capsys.readouterr().out
    assert script.main(["--compare", str(files[0]), str(files[2])]) == 1
    assert "/models/BPR/test/recall@20: 0.1 | 0.2" in capsys.readouterr().out
