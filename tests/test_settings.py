"""Config settings given outside config files: --key=value parsing and unknown keys."""

import re
import runpy
import sys
from pathlib import Path

import pytest
import recbole
import yaml

from conftest import REPO
from recbole_ci2mg import settings
from recbole_ci2mg.compat import DISTRIBUTED_ARGUMENTS, MULTIMODAL_DATASET_ARGUMENTS
from recbole_ci2mg.quick_start import build_config

MISSPELT = [
    ("BPR", "--misssing_rate=0.5", "missing_rate"),
    ("CI2MG", "--n_prototype=8", "n_prototypes"),
    ("CI2MG", "--cl_wieght=5", "cl_weight"),
]


def test_overrides_are_literals_and_anything_else_is_refused():
    parsed = settings.parse_overrides(["--epochs=2", "--reg_weight=1e-4", "--valid_metric=Recall@20",
                                       "--use_inter=false", "--gpu_id=0,1", "--data_path=a=b"])
    assert parsed == {"epochs": 2, "reg_weight": 1e-4, "valid_metric": "Recall@20", "use_inter": False,
                      "gpu_id": (0, 1), "data_path": "a=b"}
    for bad in (["stray"], ["--epochs"], ["--=2"]):
        with pytest.raises(ValueError, match=r"Unrecognised argument .*--key=value"):
            settings.parse_overrides(bad)
    with pytest.raises(ValueError, match=r"--epochs is given twice"):
        settings.parse_overrides(["--epochs=2", "--epochs=3"])


def test_configs_built_in_code_ignore_the_process_command_line(tiny, monkeypatch):
    # RecBole's Config reads sys.argv and ranks it above config_dict.
    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=7", "--seeds=2020,2021"])
    config = build_config("BPR", "tiny", config_dict={**tiny, "epochs": 3})
    assert config["epochs"] == 3 and "seeds" not in config


@pytest.mark.parametrize("model, flag, suggestion", MISSPELT)
def test_run_recbole_command_line_refuses_a_misspelt_key(tiny, tmp_path, monkeypatch, capsys, model, flag,
                                                         suggestion):
    import yaml

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny))
    monkeypatch.setattr(sys, "argv", ["run_recbole.py", f"--model={model}", "--dataset=tiny",
                                      f"--config_files={config_file}", "--epochs=1", flag])
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO / "run_recbole.py"), run_name="__main__")
    error = capsys.readouterr().err
    key = flag[2:].split("=")[0]
    assert re.search(rf"'{key}'.*did you mean {suggestion}\b", error), error
    assert not (tmp_path / "saved").exists()  # refused before any training


def test_a_new_key_passes_once_declared(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"'my_key' is not a setting of BPR.*extra_keys"):
        build_config("BPR", "tiny", config_dict={**tiny, "my_key": 1})
    declared = build_config("BPR", "tiny", config_dict={**tiny, "my_key": 1, "extra_keys": ["my_key"]})
    assert declared["my_key"] == 1
    config_file = tmp_path / "mine.yaml"
    config_file.write_text("my_key: 0\n")  # any key of a loaded config file is known
    assert build_config("BPR", "tiny", [str(config_file)], {**tiny, "my_key": 1})["my_key"] == 1
    with pytest.raises(ValueError, match=r"extra_keys = 5: give a list of key names"):
        build_config("BPR", "tiny", config_dict={**tiny, "extra_keys": 5})


def test_a_plugin_subclass_without_yaml_knows_its_parents_keys(tiny, monkeypatch):
    from recbole.model.general_recommender import BPR
    from recbole_ci2mg import registry

    class PluginBPR(BPR):
        pass

    monkeypatch.setitem(registry.PLUGIN_MODELS, "Plugin-BPR", PluginBPR)
    assert build_config("Plugin-BPR", "tiny", config_dict={**tiny, "embedding_size": 8})["embedding_size"] == 8


KEY_READ = re.compile(
    r"""\b(?:config|final_config_dict)\[\s*['"](\w+)['"]\s*\]|config\.get\(\s*['"](\w+)['"]"""
    r"""|['"](\w+)['"]\s+(?:not\s+)?in\s+(?:self\.)?(?:config|final_config_dict)\b"""
)


def keys_read(path):
    """Config keys the Python files at ``path`` (a file or a folder) read by name."""
    path = Path(path)
    found = set()
    for path in [path] if path.is_file() else path.rglob("*.py"):
        for match in KEY_READ.finditer(path.read_text()):
            found.add(next(group for group in match.groups() if group))
    return found


def keys_read_yaml(path):
    """Top-level keys of a RecBole model YAML."""
    return set(yaml.safe_load(path.read_text()) or {})


def test_every_key_recbole_and_this_package_read_is_known(tiny):
    # Keys Config derives itself (device, MODEL_TYPE, ...) are in every final
    # config; a user setting them would be overwritten, so they need not be known.
    config = build_config("BPR", "tiny", config_dict=tiny)
    # settings a multi-process rank and our dataset are given
    assert set(DISTRIBUTED_ARGUMENTS) | set(MULTIMODAL_DATASET_ARGUMENTS) <= settings.known_keys(config)
    known = settings.known_keys(config) | set(config.final_config_dict) | {"full"}  # "full" in eval modes
    recbole_dir = Path(recbole.__file__).parent
    for folder in ("config", "data", "sampler", "evaluator", "utils", "quick_start", "trainer"):
        assert keys_read(recbole_dir / folder) <= known, folder
    ours = REPO / "recbole_ci2mg"
    for part in ("data", "trainer.py", "quick_start.py", "compare.py", "tuning.py"):
        assert keys_read(ours / part) <= known, part
    # compat.py also guards settings of particular RecBole models (KD_DAGFM, LDiffRec)
    model_keys = set().union(*(keys_read_yaml(path) for path in (recbole_dir / "properties" / "model").glob("*.yaml")))
    assert keys_read(ours / "compat.py") <= known | model_keys, "compat.py"

