"""Running plugin and built-in models; checkpoints; RecBole compatibility fixes."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from recbole.config import Config
from recbole.model.general_recommender import BPR
from recbole.utils.argument_list import dataset_arguments

from conftest import REPO, SHARED_DATASETS
from recbole_ci2mg import registry
from recbole_ci2mg.compat import MULTIMODAL_DATASET_ARGUMENTS
from recbole_ci2mg.quick_start import (
    build_config,
    load_data_and_model,
    objective_function,
    run_recbole,
    set_torch_threads,
)
from recbole_ci2mg.trainer import get_trainer


class PluginBPR(BPR):
    """A model RecBole's get_model cannot find: it lives outside recbole.model."""


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.setitem(registry.PLUGIN_MODELS, "Plugin-BPR", PluginBPR)
    return "Plugin-BPR"


@pytest.mark.parametrize("model", ["BPR", "NGCF", "LightGCN", "SGL", "NCL"])
def test_recbole_baselines_train_and_evaluate(tiny, model):
    # NCL's default 1000 prototypes need at least 1000 users for faiss k-means.
    extra = {"num_clusters": 4} if model == "NCL" else {}
    result = run_recbole(model, "tiny", config_dict={**tiny, "epochs": 2, **extra})
    assert set(result["test_result"]) == {
        f"{m}@{k}" for m in ("recall", "ndcg", "precision") for k in (10, 20)
    }
    assert result["epochs_trained"] == 2 and result["best_epoch"] in (0, 1)
    assert 0.0 <= result["test_result"]["recall@20"] <= 1.0


def test_torch_threads_default_applies_before_training_unless_omp_num_threads_is_set(tiny, monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(3)  # what torch starts with on a 3-core machine
        run_recbole("BPR", "tiny", config_dict={**tiny, "epochs": 1})
        assert torch.get_num_threads() == 1  # properties/overall.yaml's torch_threads

        torch.set_num_threads(3)
        assert set_torch_threads(build_config("BPR", "tiny", config_dict={**tiny, "torch_threads": "auto"})) == 3
        assert set_torch_threads(build_config("BPR", "tiny", config_dict={**tiny, "torch_threads": 2})) == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's explicit choice wins
        assert set_torch_threads(build_config("BPR", "tiny", config_dict=tiny)) == 2
        with pytest.raises(ValueError, match="torch_threads must be a positive integer or auto"):
            set_torch_threads(build_config("BPR", "tiny", config_dict={**tiny, "torch_threads": 0}))
    finally:
        torch.set_num_threads(threads)


def test_checkpoint_is_plain_data_and_reloads_to_the_same_scores(tiny):
    result = run_recbole("LightGCN", "tiny", config_dict={**tiny, "epochs": 3, "missing_rate": 0.5})
    checkpoint = torch.load(result["saved_model_file"], weights_only=True)
    assert checkpoint["config"]["model"] == "LightGCN"
    assert checkpoint["config"]["settings"]["missing_rate"] == 0.5

    config, model, dataset, train, valid, test = load_data_and_model(result["saved_model_file"])
    assert config["missing_rate"] == 0.5
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train)
    assert trainer.evaluate(test, load_best_model=False) == result["test_result"]


def test_resume_from_a_plain_checkpoint(tiny):
    first = run_recbole("BPR", "tiny", config_dict={**tiny, "epochs": 2})
    config = build_config("BPR", "tiny", config_dict={**tiny, "epochs": 4})
    from recbole.data import data_preparation
    from recbole_ci2mg.quick_start import create_dataset

    train, valid, _ = data_preparation(config, create_dataset(config))
    trainer = get_trainer(config["MODEL_TYPE"], "BPR")(config, BPR(config, train._dataset))
    trainer.resume_checkpoint(first["saved_model_file"])  # RecBole's own reader, torch's safe default
    assert trainer.start_epoch == first["best_epoch"] + 1


def test_legacy_recbole_checkpoint_needs_explicit_consent(tiny, tmp_path):
    result = run_recbole("BPR", "tiny", config_dict={**tiny, "epochs": 1})
    legacy = torch.load(result["saved_model_file"], weights_only=True)
    legacy["config"] = build_config("BPR", "tiny", config_dict=tiny)  # as RecBole writes it
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path, pickle_protocol=4)
    with pytest.raises(ValueError, match=r"legacy\.pth.*allow_unsafe_pickle"):
        load_data_and_model(str(path))
    config, model, *_ = load_data_and_model(str(path), allow_unsafe_pickle=True)
    assert config["model"] == "BPR"


def test_two_trainers_started_in_the_same_second_do_not_share_a_checkpoint(tiny):
    config = build_config("BPR", "tiny", config_dict=tiny)
    from recbole_ci2mg.quick_start import create_dataset

    dataset = create_dataset(config)
    trainer_class = get_trainer(config["MODEL_TYPE"], "BPR")
    files = {trainer_class(config, BPR(config, dataset)).saved_model_file for _ in range(3)}
    assert len(files) == 3


def test_plugin_models_resolve_everywhere(tiny, plugin):
    # A plugin model's defaults come from properties/model/<Model>.yaml; this
    # one has none, so the test gives them.
    tiny = {**tiny, "embedding_size": 8}
    result = run_recbole(plugin, "tiny", config_dict={**tiny, "epochs": 1})
    assert result["model"] == "PluginBPR"
    config, model, *_ = load_data_and_model(result["saved_model_file"])
    assert isinstance(model, PluginBPR)
    tuned = objective_function(config_dict={**tiny, "model": plugin, "dataset": "tiny", "epochs": 1})
    assert tuned["model"] == "PluginBPR" and "recall@20" in tuned["best_valid_result"]


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown model 'LightGNC'.*BPR, NGCF, LightGCN"):
        registry.get_model("LightGNC")


def test_searching_recbole_models_leaves_anomaly_detection_off():
    # RecBole's SINE module switches it on at import; the search imports every model package
    assert not torch.is_anomaly_enabled()
    with pytest.raises(ValueError):
        registry.get_model("NoSuchModel")
    assert registry.get_model("SINE").__name__ == "SINE"
    assert not torch.is_anomaly_enabled()


def test_dataset_cache_keys_include_the_mask():
    assert set(MULTIMODAL_DATASET_ARGUMENTS) <= set(dataset_arguments)


def test_command_line_runs_several_models_with_overrides(tiny, tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny))
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "run_recbole.py"),
            "--model=BPR,LightGCN",
            "--dataset=tiny",
            f"--config_files={config_file}",
            "--epochs=2",
            "--missing_rate=0.25",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0][:4] == ["model", "recall@20", "ndcg@20", "precision@20"]
    assert [row[0] for row in rows[1:]] == ["BPR", "LightGCN"]
    assert (tmp_path / "data" / "tiny" / "masks" / "tiny.independent-rate0.25-seed2023.mask").is_file()
    assert (tmp_path / "log").is_dir()  # RecBole writes logs into the working directory


def test_embedded_default_builds_itself_and_trains(tmp_path):
    result = run_recbole("LightGCN", "ml-100k-mm", config_dict={"epochs": 1, "show_progress": False, "state": "WARNING"})
    assert (tmp_path / "dataset" / "ml-100k-mm" / "ml-100k-mm.train.inter").is_file()
    assert result["test_result"]["recall@20"] > 0.02  # one epoch already beats random (~0.012)


@pytest.mark.skipif(not (SHARED_DATASETS / "tiktok").is_dir(), reason="../shared/datasets/tiktok is absent")
def test_tiktok_converts_and_loads_with_the_published_split(tmp_path):
    from dataset_prep import prepare_dataset
    from recbole.data import data_preparation
    from recbole_ci2mg.quick_start import create_dataset

    prepare_dataset("tiktok", SHARED_DATASETS / "tiktok", tmp_path / "data", properties_dir=tmp_path / "props")
    yaml_file = str(tmp_path / "props" / "dataset" / "tiktok.yaml")
    config = build_config("LightGCN", "tiktok", config_file_list=[yaml_file], config_dict={"state": "WARNING"})
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    assert dataset.item_num - 1 == 6710
    assert [len(d._dataset) for d in (train, valid, test)] == [59541, 3051, 6130]
    assert {name: tuple(f.shape) for name, f in dataset.modality_features.items()} == {
        "v": (6711, 128),
        "a": (6711, 128),
    }


def _craft(checkpoint_file, path, **settings):
    """A copy of a genuine checkpoint with some settings replaced; it still loads with weights_only."""
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    checkpoint["config"]["settings"].update(settings)
    torch.save(checkpoint, path)
    torch.load(path, weights_only=True)
    return str(path)


def test_checkpoint_settings_never_run_as_code(tiny, tmp_path):
    result = run_recbole("BPR", "tiny", config_dict={**tiny, "epochs": 1})
    marker = tmp_path / "PWNED"
    code = f"__import__('os').system('touch {marker}') or 1"

    # Where RecBole's defaults hold a number, a string is refused, naming file, key and type.
    crafted = _craft(result["saved_model_file"], tmp_path / "crafted.pth", epochs=code)
    with pytest.raises(ValueError, match=r"crafted\.pth.*'epochs'.*string.*int"):
        load_data_and_model(crafted)
    assert not marker.exists()
    crafted = _craft(result["saved_model_file"], tmp_path / "tensor.pth", epochs=torch.tensor(1))
    with pytest.raises(ValueError, match=r"tensor\.pth: setting 'epochs' holds a torch\.Tensor"):
        load_data_and_model(crafted)
    # Elsewhere a string stays the string it is.
    crafted = _craft(result["saved_model_file"], tmp_path / "comment.pth", comment=code)
    config, *_ = load_data_and_model(crafted)
    assert not marker.exists() and config["comment"] == code

    # The genuine checkpoint still loads, and evaluates as it did.
    config, model, dataset, train, valid, test = load_data_and_model(result["saved_model_file"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train)
    assert trainer.evaluate(test, load_best_model=False) == result["test_result"]


def test_config_strings_are_read_as_data_never_run(tiny, tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    code = f"__import__('os').system('touch {marker}')"
    # config_dict (tuning trials, comparisons): a declared new key holding code stays a string
    config = build_config("BPR", "tiny", config_dict={
        **tiny, "extra_keys": ["from_dict"], "from_dict": code, "epochs": "3", "topk": "[5, 10]",
        "reproducibility": "false", "valid_metric": "Recall@5",
    })
    assert not marker.exists()
    assert config["from_dict"] == code
    # the literals RecBole's eval read are read the same
    assert (config["epochs"], config["topk"], config["reproducibility"]) == (3, [5, 10], False)
    assert config["valid_metric"] == "Recall@5"
    # RecBole's own Config, which reads the command line, once this package is imported
    monkeypatch.setattr(sys, "argv", ["run_recbole.py", f"--from_cmd={code}", "--learning_rate=1e-3"])
    recbole_config = Config(model="BPR", dataset="tiny", config_dict=dict(tiny))
    assert not marker.exists()
    assert recbole_config["from_cmd"] == code and recbole_config["learning_rate"] == 1e-3


def test_config_files_hold_plain_yaml_only(tiny, tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(tiny) + "learning_rate: 1e-3\n")
    assert build_config("BPR", "tiny", [str(plain)])["learning_rate"] == 1e-3  # RecBole's float pattern
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(yaml.safe_dump(tiny) + "note: !!python/name:os.system\n")
    with pytest.raises(ValueError, match=r"tagged\.yaml is not plain YAML.*python/name:os\.system"):
        build_config("BPR", "tiny", [str(plain), str(tagged)])


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("model, cache", [
    ("BPR", "tiny-for-BPR-dataloader.pth"),  # read by data_preparation, whatever save_dataloaders says
    ("FM", "tiny-Dataset.pth"),  # read by RecBole's create_dataset, whatever save_dataset says
])
def test_pickled_caches_in_checkpoint_dir_are_never_read(tiny, tmp_path, model, cache):
    marker = tmp_path / "PWNED"
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / cache).write_bytes(pickle.dumps(_RunsCommand(f"touch {marker}")))
    with pytest.raises(ValueError, match=rf"unpickle saved/{cache}.*Delete or move"):
        run_recbole(model, "tiny", config_dict={**tiny, "epochs": 1})
    assert not marker.exists()


@pytest.mark.parametrize("setting", [
    {"save_dataset": True}, {"save_dataloaders": True},
    {"dataset_save_path": "data.pth"}, {"dataloaders_save_path": "loaders.pth"},
])
def test_settings_for_pickled_caches_are_refused(tiny, tmp_path, setting):
    key = next(iter(setting))
    with pytest.raises(ValueError, match=rf"the config sets {key}=.*pickles"):
        build_config("BPR", "tiny", config_dict={**tiny, **setting})
    result = run_recbole("BPR", "tiny", config_dict={**tiny, "epochs": 1})
    crafted = _craft(result["saved_model_file"], tmp_path / "cache.pth", **setting)
    with pytest.raises(ValueError, match=rf"Checkpoint .*cache\.pth sets {key}="):
        load_data_and_model(crafted)


def test_kd_dagfm_teacher_is_never_run_as_code(tmp_path):
    # RecBole's KD_DAGFM passes `teacher` to eval; ml-100k ships inside RecBole.
    marker = tmp_path / "PWNED"
    settings = {"state": "WARNING", "show_progress": False, "epochs": 1}
    teacher = f"__import__('os').system('touch {marker}') or CrossNet"
    with pytest.raises(ValueError, match=r"teacher=.*eval.*CIN, CINComp, CrossNet"):
        run_recbole("KD_DAGFM", "ml-100k", config_dict={**settings, "teacher": teacher})
    assert not marker.exists()
    assert build_config("KD_DAGFM", "ml-100k", config_dict={**settings, "teacher": "CIN"})["teacher"] == "CIN"


def test_ldiffrec_item_embeddings_are_never_unpickled(tiny, tmp_path):
    # RecBole's LDiffRec loads <dataset>/item_emb.npy with allow_pickle=True when n_cate > 1.
    marker = tmp_path / "PWNED"
    item_emb = os.path.join(tiny["data_path"], "tiny", "item_emb.npy")
    np.save(item_emb, np.array([_RunsCommand(f"touch {marker}")] * 40, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"item_emb\.npy.*allow_pickle=True"):
        run_recbole("LDiffRec", "tiny", config_dict={**tiny, "n_cate": 2, "epochs": 1})
    assert not marker.exists()
    np.save(item_emb, np.ones((40, 4), dtype=np.float32))
    assert build_config("LDiffRec", "tiny", config_dict={**tiny, "n_cate": 2})["n_cate"] == 2


def test_a_checkpoint_whose_settings_build_other_parameters_names_the_file(tiny, tmp_path):
    # as when a version changes what a setting builds: the saved embedding size no longer fits the parameters
    result = run_recbole("BPR", "tiny", config_dict={**tiny, "epochs": 1})
    crafted = _craft(result["saved_model_file"], tmp_path / "older.pth", embedding_size=16)
    named = r"(?s)older\.pth: its parameters do not fit the BPR.*size mismatch for user_embedding"
    with pytest.raises(ValueError, match=named):
        load_data_and_model(crafted)
