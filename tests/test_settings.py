"""Config settings given outside config files: --key=value parsing."""

import sys

import pytest

from recbole_ci2mg import settings
from recbole_ci2mg.quick_start import build_config


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

