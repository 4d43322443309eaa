"""Tests of ``dataset_prep``: the three layouts, features, YAML, atomicity, bad input,
the real datasets in ``../shared/datasets`` (skipped when absent) and ml-100k-mm."""

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from dataset_prep import (
    DEFAULT_PROPERTIES_DIR,
    ML100K_MM,
    DatasetPrepError,
    FeatureSpec,
    build_ml100k_mm,
    bundled_ml100k_dir,
    parse_feature_arg,
    prepare_dataset,
    read_layout,
)
from conftest import warnings_of
from dataset_prep.__main__ import main
from dataset_prep.layouts import _load_matrix
from dataset_prep.ml100k import chronological_split, committed_yaml_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
HEADER = "user_id:token\titem_id:token"

# A small published split: users 0-2, items 0-3; (0, 1) twice in train on purpose.
TRAIN = [(0, 1), (0, 0), (1, 2), (0, 1), (2, 3)]
VALID = [(1, 0), (0, 2)]
TEST = [(2, 1), (1, 3)]


# ------------------------------------------------------------------ helpers


def write_mmrec(src, name="toy", splits=(TRAIN, VALID, TEST)):
    """MMRec's .inter, with an extra column and the splits interleaved."""
    rows = [(u, i, label) for label, pairs in enumerate(splits) for u, i in pairs]
    rows = rows[::2] + rows[1::2]  # interleave labels: order inside a split must survive
    src.mkdir(parents=True, exist_ok=True)
    lines = ["userID\titemID\tx_label\ttimestamp"] + [f"{u}\t{i}\t{x}\t{n}" for n, (u, i, x) in enumerate(rows)]
    (src / f"{name}.inter").write_text("\n".join(lines) + "\n")
    order = {label: [(u, i) for u, i, x in rows if x == label] for label in range(3)}
    return order[0], order[1], order[2]


def write_mmssl(src, splits=(TRAIN, VALID, TEST)):
    src.mkdir(parents=True, exist_ok=True)
    for file, pairs in zip(("train.json", "val.json", "test.json"), splits):
        lists = {}
        for u, i in pairs:
            lists.setdefault(str(u), []).append(i)
        (src / file).write_text(json.dumps(lists))
    # JSON groups by user, in first-seen user order
    return tuple([(u, i) for u in dict.fromkeys(u for u, _ in pairs) for uu, i in pairs if uu == u]
                 for pairs in splits)


def write_diffmm(src, splits=(TRAIN, VALID, TEST), shape=(3, 4)):
    src.mkdir(parents=True, exist_ok=True)
    for file, pairs in zip(("trnMat.pkl", "valMat.pkl", "tstMat.pkl"), splits):
        rows, cols = zip(*pairs) if pairs else ((), ())
        matrix = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)
        (src / file).write_bytes(pickle.dumps(matrix))


def read_inter(path):
    lines = Path(path).read_text().splitlines()
    assert lines[0] == HEADER
    return [tuple(int(v) for v in line.split("\t")) for line in lines[1:]]


def read_splits(dataset_dir):
    name = Path(dataset_dir).name
    return tuple(read_inter(Path(dataset_dir) / f"{name}.{s}.inter") for s in ("train", "valid", "test"))


def load_yaml(path):
    return yaml.safe_load(Path(path).read_text())


def convert(tmp_path, name="toy", layout="mmrec", features=(), **kwargs):
    return prepare_dataset(name, tmp_path / "src", tmp_path / "out", layout, features,
                           properties_dir=tmp_path / "props", **kwargs)


def yaml_of(tmp_path, name="toy"):
    return tmp_path / "props" / "dataset" / f"{name}.yaml"


# ------------------------------------------------------------------ layouts


def test_mmrec_keeps_published_split_row_by_row(tmp_path):
    expected = write_mmrec(tmp_path / "src")
    dataset_dir = convert(tmp_path)
    assert dataset_dir == (tmp_path / "out" / "toy").resolve()
    assert read_splits(dataset_dir) == expected
    assert read_splits(dataset_dir)[0].count((0, 1)) == 2  # no dedup
    assert sorted(os.listdir(dataset_dir)) == ["toy.test.inter", "toy.train.inter", "toy.valid.inter"]


def test_mmrec_yaml_content(tmp_path):
    write_mmrec(tmp_path / "src")
    convert(tmp_path)
    text = yaml_of(tmp_path).read_text()
    assert text.splitlines()[0] == "# Written by python -m dataset_prep toy; rerun it to regenerate."
    assert load_yaml(yaml_of(tmp_path)) == {
        "data_path": str((tmp_path / "out").resolve()),
        "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "load_col": {"inter": ["user_id", "item_id"]},
        "rm_dup_inter": None,
        "val_interval": None,
        "filter_inter_by_user_or_item": False,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "modalities": {},
    }


def test_mmrec_uses_single_inter_file_of_other_name(tmp_path):
    expected = write_mmrec(tmp_path / "src", name="published")
    assert read_splits(convert(tmp_path, name="mine")) == expected


def test_mmssl_keeps_published_split_row_by_row(tmp_path):
    expected = write_mmssl(tmp_path / "src")
    dataset_dir = convert(tmp_path, layout="mmssl")
    assert read_splits(dataset_dir) == expected
    assert expected[0] == [(0, 1), (0, 0), (0, 1), (1, 2), (2, 3)]
    assert load_yaml(yaml_of(tmp_path))["modalities"] == {}


def test_diffmm_keeps_storage_order_and_features(tmp_path):
    write_diffmm(tmp_path / "src")
    image = np.arange(16, dtype=np.float16).reshape(4, 4) / 8
    np.save(tmp_path / "image_feat.npy", image)
    dataset_dir = convert(tmp_path, layout="diffmm", features=[FeatureSpec("v", tmp_path / "image_feat.npy")])
    assert read_splits(dataset_dir) == (TRAIN, VALID, TEST)
    copied = np.load(dataset_dir / "image_feat.npy")
    assert copied.dtype == np.float32 and np.array_equal(copied, image.astype(np.float32))
    assert not (dataset_dir / "image_feat.keys").exists()  # items are exactly 0..3
    assert load_yaml(yaml_of(tmp_path))["modalities"] == {"v": {"file": "image_feat.npy"}}


def test_diffmm_reads_csr_row_major_and_drops_stored_zeros(tmp_path):
    src = tmp_path / "src"
    write_diffmm(src)
    train = sp.csr_matrix(([1.0, 1.0, 0.0], ([1, 0, 2], [2, 3, 0])), shape=(3, 4))
    (src / "trnMat.pkl").write_bytes(pickle.dumps(train))
    interactions = read_layout("diffmm", src)
    assert interactions.train.tolist() == [[0, 3], [1, 2]]
    assert interactions.n_items == 4


def test_known_dataset_default_feature_replaced_by_option(tmp_path):
    src = tmp_path / "src"
    write_diffmm(src)
    np.save(src / "image_feat.npy", np.ones((4, 2)))
    np.save(src / "audio_feat.npy", np.ones((4, 3)))
    np.save(tmp_path / "other_audio.npy", np.full((4, 5), 2.0))
    dataset_dir = convert(tmp_path, name="tiktok", layout=None,
                          features=[FeatureSpec("a", tmp_path / "other_audio.npy")])
    assert load_yaml(yaml_of(tmp_path, "tiktok"))["modalities"] == {
        "v": {"file": "image_feat.npy"}, "a": {"file": "other_audio.npy"}}
    assert np.load(dataset_dir / "other_audio.npy").shape == (4, 5)
    assert not (dataset_dir / "audio_feat.npy").exists()


# ------------------------------------------------------------------ features and keys


def test_feature_gets_keys_file_when_items_are_not_all_rows(tmp_path, caplog):
    # items 0..3 appear, the matrix has 6 rows: rows 4 and 5 belong to no item
    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "t.npy", np.eye(6))
    dataset_dir = convert(tmp_path, features=[FeatureSpec("t", tmp_path / "t.npy")],
                          allow_partial_features=True)
    assert (dataset_dir / "t.keys").read_text().splitlines() == ["0", "1", "2", "3", "4", "5"]
    assert load_yaml(yaml_of(tmp_path))["modalities"] == {"t": {"file": "t.npy", "keys": "t.keys"}}
    assert "6 rows for 4 items (ids 0..3): 2 rows belong to no item" in caplog.text


def test_feature_with_user_keys_file_is_copied(tmp_path):
    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "t.npy", np.arange(6.0).reshape(3, 2))
    (tmp_path / "ids.txt").write_text("3\n0\n99\n")
    spec = parse_feature_arg(f"t={tmp_path / 't.npy'}:{tmp_path / 'ids.txt'}")
    assert spec == FeatureSpec("t", tmp_path / "t.npy", tmp_path / "ids.txt")
    dataset_dir = convert(tmp_path, features=[spec])
    assert (dataset_dir / "t.keys").read_text() == "3\n0\n99\n"
    assert np.array_equal(np.load(dataset_dir / "t.npy"), np.arange(6.0).reshape(3, 2))
    assert load_yaml(yaml_of(tmp_path))["modalities"] == {"t": {"file": "t.npy", "keys": "t.keys"}}


def write_mmrec_items(src, n_items=30, name="toy"):
    """An MMRec .inter over items 0..n_items-1, each in train, users 0..2 in every split."""
    pairs = [(item % 3, item) for item in range(n_items)]
    write_mmrec(src, name, (pairs, [(0, 0), (1, 1), (2, 2)], [(0, 3), (1, 4), (2, 5)]))


def test_keys_covering_few_items_refused_unless_allowed(tmp_path, caplog):
    write_mmrec_items(tmp_path / "src")
    np.save(tmp_path / "t.npy", np.ones((30, 2)))
    (tmp_path / "t.keys").write_text("0\n" + "".join(f"B{i}\n" for i in range(1, 30)))
    spec = FeatureSpec("t", tmp_path / "t.npy", tmp_path / "t.keys")
    counts = "1 of its 30 rows match an item, 29 name no item of the dataset, 29 of the dataset's 30 items have no row"
    message = _expect_error(tmp_path, tmp_path / "t.keys", features=[spec])
    assert "covers 3% of the items" in message and counts in message and "--allow-partial-features" in message

    convert(tmp_path, features=[spec], allow_partial_features=True)
    assert [counts in text for text in warnings_of(caplog)] == [True]
    assert load_yaml(yaml_of(tmp_path))["allow_partial_features"] is True


def test_keys_covering_most_items_convert_with_a_warning(tmp_path, caplog):
    write_mmrec_items(tmp_path / "src")
    np.save(tmp_path / "t.npy", np.ones((22, 2)))
    (tmp_path / "t.keys").write_text("".join(f"{i}\n" for i in range(20)) + "B1\nB2\n")
    convert(tmp_path, features=[FeatureSpec("t", tmp_path / "t.npy", tmp_path / "t.keys")])
    assert warnings_of(caplog) == [
        f"{tmp_path / 't.npy'} with {tmp_path / 't.keys'}: modality 't': 20 of its 22 rows match an "
        f"item, 2 name no item of the dataset, 10 of the dataset's 30 items have no row (those items "
        f"count as missing the modality)"]
    assert "allow_partial_features" not in load_yaml(yaml_of(tmp_path))


def test_row_ordered_matrix_with_more_rows_than_items_refused_unless_allowed(tmp_path, caplog):
    write_mmrec_items(tmp_path / "src")
    np.save(tmp_path / "t.npy", np.ones((35, 2)))
    spec = FeatureSpec("t", tmp_path / "t.npy")
    message = _expect_error(tmp_path, tmp_path / "t.npy", features=[spec])
    assert "35 rows for 30 items (ids 0..29): 5 rows belong to no item" in message
    assert "--allow-partial-features" in message

    dataset_dir = convert(tmp_path, features=[spec], allow_partial_features=True)
    assert len((dataset_dir / "t.keys").read_text().splitlines()) == 35
    assert len(warnings_of(caplog)) == 1 and "5 rows belong to no item" in caplog.text
    # every item has its row: loading needs no allowance
    assert "allow_partial_features" not in load_yaml(yaml_of(tmp_path))


def test_rows_the_layout_declares_but_no_split_uses_convert_with_a_warning(tmp_path, caplog):
    write_diffmm(tmp_path / "src", shape=(3, 6))  # items 4 and 5 declared, never used
    np.save(tmp_path / "f.npy", np.ones((6, 2)))
    dataset_dir = convert(tmp_path, layout="diffmm", features=[FeatureSpec("v", tmp_path / "f.npy")])
    assert len((dataset_dir / "f.keys").read_text().splitlines()) == 6
    assert [("6 rows for 4 items (ids 0..3): 2 rows belong to no item" in text) for text in warnings_of(caplog)] == [True]


def test_cli_allow_partial_features_warns_on_stderr(tmp_path, capsys):
    write_mmrec_items(tmp_path / "src")
    np.save(tmp_path / "t.npy", np.ones((35, 2)))
    argv = ["toy", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--layout", "mmrec",
            "--feature", f"t={tmp_path / 't.npy'}", "--properties-dir", str(tmp_path / "props")]
    assert main(argv) == 2
    assert "--allow-partial-features" in capsys.readouterr().err
    assert main(argv + ["--allow-partial-features"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("python -m dataset_prep: warning: ")
    assert "5 rows belong to no item" in err[0]


def test_relative_feature_path_is_found_in_src(tmp_path, monkeypatch):
    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "src" / "image.npy", np.ones((4, 3)))
    np.save(tmp_path / "src" / "text.npy", np.ones((4, 2)))
    (tmp_path / "src" / "text.keys").write_text("0\n1\n2\n3\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main(["toy", "--src", "../src", "--out", "out", "--layout", "mmrec", "--properties-dir", "props",
                 "--feature", "v=image.npy", "--feature", "t=text.npy:text.keys"]) == 0
    assert load_yaml(tmp_path / "work" / "props" / "dataset" / "toy.yaml")["modalities"] == {
        "v": {"file": "image.npy"}, "t": {"file": "text.npy", "keys": "text.keys"}}


def test_relative_feature_path_prefers_src_over_cwd(tmp_path, monkeypatch, caplog):
    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "src" / "text.npy", np.full((4, 2), 1.0))
    np.save(tmp_path / "text.npy", np.full((4, 3), 2.0))
    monkeypatch.chdir(tmp_path)
    dataset_dir = convert(tmp_path, features=[parse_feature_arg("t=text.npy", tmp_path / "src")])
    assert np.load(dataset_dir / "text.npy").shape == (4, 2)
    assert f"using {tmp_path / 'src' / 'text.npy'}; {tmp_path / 'text.npy'} is ignored" in caplog.text
    np.save(tmp_path / "only_here.npy", np.ones((4, 5)))  # not in src: the cwd one is used
    dataset_dir = convert(tmp_path, features=[FeatureSpec("t", Path("only_here.npy"))])
    assert np.load(dataset_dir / "only_here.npy").shape == (4, 5)


def test_relative_feature_path_not_found_lists_paths_tried(tmp_path, monkeypatch):
    write_mmrec(tmp_path / "src")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    message = _expect_error(tmp_path, "text.npy", features=[FeatureSpec("t", Path("text.npy"))])
    assert "feature file for modality 't' not found" in message
    assert f"tried {tmp_path / 'src' / 'text.npy'} and {tmp_path / 'elsewhere' / 'text.npy'}" in message
    assert "looked up in --src first, then in the current directory" in message
    np.save(tmp_path / "src" / "text.npy", np.ones((4, 2)))
    message = _expect_error(tmp_path, "k.txt", features=[FeatureSpec("t", Path("text.npy"), Path("k.txt"))])
    assert f"keys file for modality 't' not found (tried {tmp_path / 'src' / 'k.txt'} and" in message


@pytest.mark.filterwarnings("ignore::FutureWarning")  # RecBole's own pandas idiom
def test_yaml_loads_with_recbole_and_keeps_every_row(tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    import recbole_ci2mg  # noqa: F401 - applies recbole_ci2mg.compat's patches (numpy 2) before RecBole's Config

    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "v.npy", np.ones((4, 2)))
    convert(tmp_path, features=[FeatureSpec("v", tmp_path / "v.npy")])
    config = Config(model="BPR", dataset="toy", config_file_list=[str(yaml_of(tmp_path))],
                    config_dict={"device": "cpu", "checkpoint_dir": str(tmp_path / "saved")})
    assert config["modalities"] == {"v": {"file": "v.npy"}}
    assert config["data_path"] == str((tmp_path / "out" / "toy").resolve())
    dataset = create_dataset(config)
    assert dataset.inter_num == len(TRAIN) + len(VALID) + len(TEST)  # duplicate row kept
    assert [len(part) for part in dataset.build()] == [len(TRAIN), len(VALID), len(TEST)]


# ------------------------------------------------------------------ command line


def test_cli_converts_and_writes_yaml(tmp_path, capsys):
    write_mmssl(tmp_path / "src")
    np.save(tmp_path / "v.npy", np.ones((4, 2)))
    code = main(["toy", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--layout", "mmssl",
                 "--feature", f"v={tmp_path / 'v.npy'}", "--properties-dir", str(tmp_path / "props")])
    assert code == 0
    assert "train 5, valid 2, test 2 rows" in capsys.readouterr().out
    assert load_yaml(yaml_of(tmp_path))["modalities"] == {"v": {"file": "v.npy"}}


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dataset_prep", "toy", "--src", str(tmp_path / "nowhere"), "--layout", "mmrec",
         "--out", str(tmp_path / "out"), "--properties-dir", str(tmp_path / "props")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(tmp_path / "nowhere") in result.stderr and "--src" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["someset", "--src", "."], "--layout"),
    (["toy", "--src", ".", "--layout", "mmrec", "--feature", "v"], "MOD=FILE"),
    (["toy", "--src", ".", "--layout", "mmrec", "--feature", "9v=x.npy"], "modality name"),
    (["baby"], "--src is required"),
    ([ML100K_MM, "--feature", "v=x.npy"], "fixed modalities"),
    (["../up", "--src", ".", "--layout", "mmrec"], "dataset name"),
])
def test_cli_argument_errors(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path / "out"), "--properties-dir", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


# ------------------------------------------------------------------ bad input


def _expect_error(tmp_path, mentioned, layout="mmrec", features=(), name="toy"):
    with pytest.raises(DatasetPrepError) as info:
        convert(tmp_path, name=name, layout=layout, features=features)
    message = str(info.value)
    assert str(mentioned) in message, message
    assert "\n" not in message
    assert not (tmp_path / "out" / name).exists() and not yaml_of(tmp_path, name).exists()
    return message


def test_missing_src_dir(tmp_path):
    assert "source directory not found" in _expect_error(tmp_path, tmp_path / "src")


@pytest.mark.parametrize("layout, present, missing", [
    ("mmssl", ["train.json", "test.json"], "val.json"),
    ("diffmm", ["trnMat.pkl", "valMat.pkl"], "tstMat.pkl"),
])
def test_missing_split_file(tmp_path, layout, present, missing):
    (write_mmssl if layout == "mmssl" else write_diffmm)(tmp_path / "src")
    for path in (tmp_path / "src").iterdir():
        if path.name not in present:
            path.unlink()
    assert "file not found" in _expect_error(tmp_path, tmp_path / "src" / missing, layout=layout)


def test_missing_inter_file(tmp_path):
    (tmp_path / "src").mkdir()
    assert "file not found" in _expect_error(tmp_path, tmp_path / "src" / "toy.inter")


@pytest.mark.parametrize("content, problem", [
    ("", "file is empty"),
    ("userID\titemID\tx_label\n", "no rows"),
    ("userID\titem\tx_label\n0\t1\t0\n", "lacks column(s) itemID"),
    ("userID\titemID\tx_label\n0\t1\t0\n0\t2\t3\n0\t3\ttest\n", "'3', 'test'"),
    ("userID\titemID\tx_label\n0\t1\t0\n0\tA7\t1\n0\t2\t2\n", "line 3 holds 'A7'"),
    ("userID\titemID\tx_label\n0\t1\t0\n0\t2\t2\n", "valid split has no interactions"),
])
def test_bad_inter_file(tmp_path, content, problem):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "toy.inter").write_text(content)
    assert problem in _expect_error(tmp_path, tmp_path / "src" / "toy.inter")


@pytest.mark.parametrize("content, problem", [
    ('{"0": [1, 2]', "invalid JSON"),
    ("[[0, 1]]", "not an object"),
    ('{"0": [1, "2"]}', "not a list of non-negative integer item ids"),
    ('{"0": [1, true]}', "not a list of non-negative integer item ids"),
    ('{"0": 3}', "not a list"),
    ('{"u0": [1]}', "not a non-negative integer user id"),
    ("{}", "no interactions"),
    ('{"0": []}', "no interactions"),
    ('{"0": [1, 2], "1": [0], "0": [3]}', "key '0' appears twice in one object"),
    ('{"0": [1, 2], "00": [3]}', "keys '0' and '00' are both user 0"),
    (f'{{"0": [1, {2 ** 64 + 5}]}}', f"user '0': item {2 ** 64 + 5} is above 9223372036854775807"),
    (f'{{"{2 ** 64 + 5}": [1]}}', f"user '{2 ** 64 + 5}': its key is above 9223372036854775807"),
    ('{"0": [1, %s]}' % ("9" * 5000), "unreadable JSON"),
])
def test_bad_json(tmp_path, content, problem):
    write_mmssl(tmp_path / "src")
    (tmp_path / "src" / "val.json").write_text(content)
    assert problem in _expect_error(tmp_path, tmp_path / "src" / "val.json", layout="mmssl")


@pytest.mark.parametrize("column, value", [("itemID", str(2 ** 63)), ("userID", "9" * 5000)])
def test_inter_id_above_int64(tmp_path, column, value):
    (tmp_path / "src").mkdir()
    row = {"userID": "0", "itemID": "1", "x_label": "1", column: value}
    body = "\t".join(row.values())
    (tmp_path / "src" / "toy.inter").write_text(f"userID\titemID\tx_label\n0\t1\t0\n{body}\n0\t2\t2\n")
    message = _expect_error(tmp_path, tmp_path / "src" / "toy.inter")
    assert f"column {column!r} line 3 holds {value[:20]}" in message and "above 9223372036854775807" in message


def test_ml100k_source_id_above_int64(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    for name in ("ml-100k.inter", "ml-100k.item"):
        (src / name).write_bytes((bundled_ml100k_dir() / name).read_bytes())
    lines = (src / "ml-100k.inter").read_text().splitlines()
    user, item, rating, _ = lines[5].split("\t")
    lines[5] = "\t".join([user, item, rating, "9999999999999999999"])  # in uint64, not int64
    (src / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetPrepError, match=r"ml-100k\.inter: column 'timestamp' line 6 holds 9999999999999999999"):
        build_ml100k_mm(tmp_path / "out", src)


def test_pickle_not_sparse(tmp_path):
    write_diffmm(tmp_path / "src")
    (tmp_path / "src" / "valMat.pkl").write_bytes(pickle.dumps(np.ones((3, 4))))
    message = _expect_error(tmp_path, tmp_path / "src" / "valMat.pkl", layout="diffmm")
    assert "numpy.ndarray, not a SciPy sparse matrix" in message


def test_pickle_corrupt(tmp_path):
    write_diffmm(tmp_path / "src")
    (tmp_path / "src" / "trnMat.pkl").write_bytes(b"not a pickle")
    assert "cannot be unpickled" in _expect_error(tmp_path, tmp_path / "src" / "trnMat.pkl", layout="diffmm")


class _RunsCommand:
    """Unpickles by calling os.system: what a crafted .pkl does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("inside_a_matrix", [False, True])
def test_pickle_that_runs_code_is_refused_before_it_runs(tmp_path, inside_a_matrix):
    marker = tmp_path / "PWNED"
    payload = _RunsCommand(f"touch {marker}")
    if inside_a_matrix:  # a genuine sparse matrix whose data array is the call
        matrix = sp.coo_matrix(np.eye(3, 4))
        matrix.data, payload = payload, matrix
    write_diffmm(tmp_path / "src")
    (tmp_path / "src" / "valMat.pkl").write_bytes(pickle.dumps(payload))
    message = _expect_error(tmp_path, tmp_path / "src" / "valMat.pkl", layout="diffmm")
    assert not marker.exists()
    assert f"refused: the pickle names {os.system.__module__}.system" in message


def test_pickles_of_different_shapes(tmp_path):
    write_diffmm(tmp_path / "src")
    write_diffmm(tmp_path / "other", shape=(3, 5))
    os.replace(tmp_path / "other" / "tstMat.pkl", tmp_path / "src" / "tstMat.pkl")
    message = _expect_error(tmp_path, tmp_path / "src", layout="diffmm")
    assert "differ in shape" in message and "tstMat.pkl 3x5" in message


def test_empty_matrix(tmp_path):
    write_diffmm(tmp_path / "src", splits=(TRAIN, VALID, []))
    assert "no interactions" in _expect_error(tmp_path, tmp_path / "src" / "tstMat.pkl", layout="diffmm")


@pytest.mark.parametrize("matrix, problem", [
    (np.ones(4), "must be 2-D"),
    (np.ones((4, 2, 2)), "must be 2-D"),
    (np.array([[1.0, np.nan]] * 4), "NaN or infinite"),
    (np.array([[1.0, 2.0]] * 3 + [[np.inf, 0.0]]), "first in row 3"),
    (np.array([[1e300]] * 4), "NaN or infinite"),
    (np.ones((3, 2)), "item id 3"),
    (np.array([["a"]] * 4), "real numbers"),
    (np.ones((0, 2)), "holds no values"),
])
def test_bad_feature_matrix(tmp_path, matrix, problem):
    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "f.npy", matrix)
    message = _expect_error(tmp_path, tmp_path / "f.npy", features=[FeatureSpec("v", tmp_path / "f.npy")])
    assert problem in message


@pytest.mark.parametrize("file, content, problem", [
    ("f.npy", b"\x93NUMPY garbage", "not a readable .npy array"),
    ("f.npz", None, "must be NumPy .npy arrays"),
    ("f.npy", "npz", "is an .npz archive"),
    ("f.npy", "object", "not a readable .npy array"),
])
def test_unreadable_feature_file(tmp_path, file, content, problem):
    write_mmrec(tmp_path / "src")
    path = tmp_path / file
    if content is None:
        np.save(tmp_path / "tmp.npy", np.ones((4, 2)))
        os.replace(tmp_path / "tmp.npy", path)
    elif content == "npz":
        with open(path, "wb") as handle:
            np.savez(handle, x=np.ones((4, 2)))
    elif content == "object":
        np.save(path, np.array([[{"a": 1}]] * 4, dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    assert problem in _expect_error(tmp_path, path, features=[FeatureSpec("v", path)])


def test_feature_file_missing(tmp_path):
    write_mmrec(tmp_path / "src")
    message = _expect_error(tmp_path, tmp_path / "nope.npy", features=[FeatureSpec("v", tmp_path / "nope.npy")])
    assert "not found" in message and "--feature v=" in message


def test_known_default_feature_missing(tmp_path):
    write_diffmm(tmp_path / "src")
    np.save(tmp_path / "src" / "image_feat.npy", np.ones((4, 2)))
    _expect_error(tmp_path, tmp_path / "src" / "audio_feat.npy", layout=None, name="tiktok")


def test_feature_rows_differ_from_declared_items(tmp_path):
    write_diffmm(tmp_path / "src")
    np.save(tmp_path / "f.npy", np.ones((5, 2)))
    message = _expect_error(tmp_path, tmp_path / "f.npy", layout="diffmm",
                            features=[FeatureSpec("v", tmp_path / "f.npy")])
    assert "declares 4 items" in message


@pytest.mark.parametrize("keys, problem", [
    ("0\n1\n", "has 2 lines but the feature matrix has 3 rows"),
    ("0\n1\n2\n3\n", "has 4 lines"),
    ("0\n\n2\n", "line 2 is empty"),
    ("0\n1\n0\n", "more than once"),
    ("a\nb\nc\n", "matches none of the dataset's item ids"),
])
def test_bad_keys_file(tmp_path, keys, problem):
    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "f.npy", np.ones((3, 2)))
    (tmp_path / "f.keys").write_text(keys)
    spec = FeatureSpec("t", tmp_path / "f.npy", tmp_path / "f.keys")
    assert problem in _expect_error(tmp_path, tmp_path / "f.keys", features=[spec])


def test_keys_file_missing(tmp_path):
    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "f.npy", np.ones((3, 2)))
    spec = FeatureSpec("t", tmp_path / "f.npy", tmp_path / "f.keys")
    assert "keys file for modality 't' not found" in _expect_error(tmp_path, tmp_path / "f.keys", features=[spec])


def test_two_modalities_from_same_file_name(tmp_path):
    write_mmrec(tmp_path / "src")
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "feat.npy", np.ones((4, 2)))
    specs = [FeatureSpec("v", tmp_path / "x" / "feat.npy"), FeatureSpec("t", tmp_path / "y" / "feat.npy")]
    assert "rename one" in _expect_error(tmp_path, "feat.npy", features=specs)


# ------------------------------------------------------------------ atomicity


def test_failed_conversion_leaves_nothing(tmp_path):
    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "f.npy", np.full((4, 2), np.nan))
    _expect_error(tmp_path, tmp_path / "f.npy", features=[FeatureSpec("v", tmp_path / "f.npy")])
    assert not (tmp_path / "props").exists()


@pytest.mark.parametrize("step", ["write_feature", "_swap_in"])
def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, step):
    import dataset_prep.atomic

    def fail(*args):
        raise OSError(28, "No space left on device")

    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "v.npy", np.ones((4, 2)))
    monkeypatch.setattr(dataset_prep.atomic, step, fail)
    with pytest.raises(OSError):
        convert(tmp_path, features=[FeatureSpec("v", tmp_path / "v.npy")])
    assert os.listdir(tmp_path / "out") == []  # staging directory removed too
    assert [path for path in tmp_path.joinpath("props").rglob("*") if path.is_file()] == []


def test_rerun_replaces_existing_output(tmp_path):
    write_mmrec(tmp_path / "src")
    np.save(tmp_path / "v.npy", np.ones((4, 2)))
    dataset_dir = convert(tmp_path, features=[FeatureSpec("v", tmp_path / "v.npy")])
    (dataset_dir / "stale.txt").write_text("from an older run")

    expected = write_mmrec(tmp_path / "src", splits=([(5, 0)], [(5, 1)], [(5, 2)]))
    assert convert(tmp_path) == dataset_dir
    assert read_splits(dataset_dir) == expected
    assert sorted(os.listdir(dataset_dir)) == ["toy.test.inter", "toy.train.inter", "toy.valid.inter"]
    assert load_yaml(yaml_of(tmp_path))["modalities"] == {}
    assert os.listdir(tmp_path / "out") == ["toy"]
    assert [p.name for p in (tmp_path / "props" / "dataset").iterdir()] == ["toy.yaml"]


def test_failed_rerun_keeps_previous_output(tmp_path):
    write_mmrec(tmp_path / "src")
    dataset_dir = convert(tmp_path)
    before = {p.name: p.read_bytes() for p in dataset_dir.iterdir()}
    yaml_before = yaml_of(tmp_path).read_bytes()

    np.save(tmp_path / "f.npy", np.ones((2, 2)))  # too few rows: fails after reading the split
    with pytest.raises(DatasetPrepError):
        convert(tmp_path, features=[FeatureSpec("v", tmp_path / "f.npy")])
    assert {p.name: p.read_bytes() for p in dataset_dir.iterdir()} == before
    assert yaml_of(tmp_path).read_bytes() == yaml_before
    assert os.listdir(tmp_path / "out") == ["toy"]


# ------------------------------------------------------------------ real data


def shared(name):
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} absent: the published {name} files are not on this machine")
    return path


def test_real_tiktok(tmp_path, caplog):
    src = shared("tiktok")
    dataset_dir = prepare_dataset("tiktok", src, tmp_path / "out", properties_dir=tmp_path / "props")
    assert warnings_of(caplog) == []  # both modalities cover every item
    train, valid, test = read_splits(dataset_dir)
    assert (len(train), len(valid), len(test)) == (59541, 3051, 6130)
    assert len({i for _, i in train + valid + test}) == 6710
    assert len({u for u, _ in train + valid + test}) == 9308
    for file in ("image_feat.npy", "audio_feat.npy"):
        copied = np.load(dataset_dir / file)
        assert copied.shape == (6710, 128)
        assert np.array_equal(copied, np.load(src / file).astype(np.float32))
    assert load_yaml(yaml_of(tmp_path, "tiktok"))["modalities"] == {
        "v": {"file": "image_feat.npy"}, "a": {"file": "audio_feat.npy"}}


def test_real_tiktok_mmrec_matches_pickles():
    src = shared("tiktok")
    from_pickles, from_inter = read_layout("diffmm", src, "tiktok"), read_layout("mmrec", src, "tiktok")
    for split in ("train", "valid", "test"):
        assert np.array_equal(getattr(from_pickles, split), getattr(from_inter, split))
    assert from_pickles.n_items == 6710


def test_real_tiktok_pickles_read_as_plain_pickle_reads_them():
    # The restricted unpickler of the diffmm layout admits the published files
    # whole: the same matrices, entries and dtypes as an unrestricted pickle.load.
    src = shared("tiktok")
    for file in ("trnMat.pkl", "valMat.pkl", "tstMat.pkl"):
        with open(src / file, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            plain = pickle.load(handle)
        restricted = _load_matrix(src / file)
        assert type(restricted) is type(plain) and restricted.shape == plain.shape
        for field in ("row", "col", "data"):
            ours, theirs = getattr(restricted, field), getattr(plain, field)
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def test_real_baby(tmp_path):
    dataset_dir = prepare_dataset("baby", shared("baby"), tmp_path / "out", properties_dir=None)
    assert tuple(map(len, read_splits(dataset_dir))) == (119674, 20559, 20559)


def test_real_sports(tmp_path, caplog):
    interactions = read_layout("mmrec", shared("sports"), "sports")
    assert sum(len(pairs) for pairs in interactions.splits().values()) == 296337
    assert len(interactions.item_ids()) == 18357
    dataset_dir = prepare_dataset("sports", shared("sports"), tmp_path / "out", properties_dir=None)
    assert warnings_of(caplog) == []  # text_feat.npy has the row of every item
    assert np.load(dataset_dir / "text_feat.npy").shape == (18357, 384)
    assert not (dataset_dir / "text_feat.keys").exists()


# ------------------------------------------------------------------ ml-100k-mm


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    return build_ml100k_mm(tmp_path_factory.mktemp("ml") / "out")


def test_ml100k_is_deterministic(ml100k, tmp_path, caplog):
    again = build_ml100k_mm(tmp_path / "out")
    assert warnings_of(caplog) == []  # genre and text cover every item
    names = sorted(os.listdir(ml100k))
    assert names == sorted(os.listdir(again)) == sorted([
        "ml-100k-mm.train.inter", "ml-100k-mm.valid.inter", "ml-100k-mm.test.inter",
        "genre.npy", "genre.keys", "text.npy", "text.keys"])
    for name in names:
        assert (ml100k / name).read_bytes() == (again / name).read_bytes(), name


def test_ml100k_split_is_chronological_per_user(ml100k):
    ratings = pd.read_csv(bundled_ml100k_dir() / "ml-100k.inter", sep="\t")
    ratings.columns = ["user", "item", "rating", "time"]
    time = {(u, i): t for u, i, t in zip(ratings.user, ratings.item, ratings.time)}
    splits = read_splits(ml100k)
    assert sum(map(len, splits)) == 100000
    per_user = [{}, {}, {}]
    for part, pairs in zip(per_user, splits):
        for u, i in pairs:
            part.setdefault(u, []).append(time[(u, i)])
    users = set(ratings.user)
    assert set(per_user[1]) == set(per_user[2]) == users
    for u in users:
        assert max(per_user[0][u]) <= min(per_user[1][u])
        assert max(per_user[1][u]) <= min(per_user[2][u])


def test_chronological_split_sizes():
    # user 7: 25 ratings, item k at time 24 - k; user 3: two ratings at one time; user 9: one
    users = np.array([7] * 25 + [3, 3, 9])
    items = np.r_[np.arange(25), [2, 1, 4]]
    times = np.r_[24 - np.arange(25), [5, 5, 0]]
    split = chronological_split(users, items, times)
    # round(25 / 10) = 3 valid and 3 test; at least one each, test first, for tiny users
    assert split.train.tolist() == [[7, item] for item in range(24, 5, -1)]
    assert split.valid.tolist() == [[3, 1], [7, 5], [7, 4], [7, 3]]  # tie at time 5: item 1 first
    assert split.test.tolist() == [[3, 2], [7, 2], [7, 1], [7, 0], [9, 4]]


def test_ml100k_genres_match_item_file(ml100k):
    keys = (ml100k / "genre.keys").read_text().splitlines()
    genre = np.load(ml100k / "genre.npy")
    assert genre.shape == (1682, 19) and len(keys) == 1682
    toy_story = genre[keys.index("1")]  # "Animation Children's Comedy"
    assert np.flatnonzero(toy_story).tolist() == [3, 4, 5]
    items = pd.read_csv(bundled_ml100k_dir() / "ml-100k.item", sep="\t", dtype=str)
    assert genre.sum() == sum(len(c.split()) for c in items["class:token_seq"])


def test_ml100k_text_rows_are_unit_vectors(ml100k):
    text = np.load(ml100k / "text.npy")
    assert text.shape == (1682, 128) and text.dtype == np.float32
    assert np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert (ml100k / "text.keys").read_text() == (ml100k / "genre.keys").read_text()


def test_committed_ml100k_yaml_is_current():
    committed = REPO / "properties" / "dataset" / f"{ML100K_MM}.yaml"
    assert committed.read_text() == committed_yaml_text()
    content = load_yaml(committed)
    assert "data_path" not in content
    assert content["modalities"] == {"genre": {"file": "genre.npy", "keys": "genre.keys"},
                                     "text": {"file": "text.npy", "keys": "text.keys"}}


def test_ml100k_cli_leaves_committed_yaml_alone(tmp_path, capsys):
    committed = DEFAULT_PROPERTIES_DIR / "dataset" / f"{ML100K_MM}.yaml"
    before = committed.read_bytes() if committed.exists() else None
    assert main([ML100K_MM, "--out", str(tmp_path / "out")]) == 0
    assert f"--data_path={(tmp_path / 'out').resolve()}" in capsys.readouterr().out
    assert (committed.read_bytes() if committed.exists() else None) == before

    assert main([ML100K_MM, "--out", str(tmp_path / "out"), "--properties-dir", str(tmp_path / "props")]) == 0
    written = load_yaml(yaml_of(tmp_path, ML100K_MM))
    assert written["data_path"] == str((tmp_path / "out").resolve())
    assert written["modalities"] == load_yaml(REPO / "properties" / "dataset" / f"{ML100K_MM}.yaml")["modalities"]
