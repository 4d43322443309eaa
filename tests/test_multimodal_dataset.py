"""The multimodal data layer: alignment, masks, imputation and bad input."""

import os

import numpy as np
import pytest
import torch
from recbole.data import data_preparation

from conftest import planted_interactions, warnings_of, write_benchmark
from recbole_ci2mg.data.masks import draw_observed_masks, load_masks, save_masks
from recbole_ci2mg.quick_start import build_config, create_dataset, run_recbole


def load(settings, **overrides):
    config = build_config("LightGCN", "tiny", config_dict={**settings, **overrides})
    return create_dataset(config)


def internal_id(dataset, token):
    return int(dataset.token2id(dataset.iid_field, str(token)))


# --- masks -------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.33, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("n", [7, 1000, 6710])
def test_independent_masks_hit_the_rate_per_modality(rate, n):
    tokens = [str(i) for i in range(n)]
    observed = draw_observed_masks(tokens, ["v", "a", "t"], rate, "independent", mask_seed=7)
    for name, mask in observed.items():
        assert abs((~mask).sum() - rate * n) <= 1, name
    if 0 < rate < 1:
        # independent draws: modalities do not lose the same items
        assert not np.array_equal(observed["v"], observed["a"])


def test_item_mode_splits_hit_items_between_single_and_all_modalities():
    tokens = [str(i) for i in range(900)]
    observed = draw_observed_masks(tokens, ["a", "v"], 0.9, "item", mask_seed=3)
    hit = ~observed["a"] | ~observed["v"]
    assert abs(hit.sum() - 810) <= 1
    both = ~observed["a"] & ~observed["v"]
    only_a = ~observed["a"] & observed["v"]
    only_v = observed["a"] & ~observed["v"]
    assert both.sum() == only_a.sum() == only_v.sum() == 270


def test_mask_does_not_depend_on_token_order_or_other_modalities():
    tokens = [f"item{i}" for i in range(200)]
    first = draw_observed_masks(tokens, ["v"], 0.5, "independent", mask_seed=11)["v"]
    shuffled = list(reversed(tokens))
    second = draw_observed_masks(shuffled, ["v", "a"], 0.5, "independent", mask_seed=11)["v"]
    assert dict(zip(tokens, first)) == dict(zip(shuffled, second))


def test_same_mask_seed_same_mask_under_another_training_seed(tiny):
    one = load(tiny, seed=1, missing_rate=0.5, mask_seed=5)
    two = load(tiny, seed=2, missing_rate=0.5, mask_seed=5)
    other = load(tiny, seed=1, missing_rate=0.5, mask_seed=6)
    for name in ("v", "t"):
        by_token = lambda d: {
            tok: bool(d.modality_observed[name][i]) for i, tok in enumerate(d.field2id_token["item_id"])
        }
        assert by_token(one) == by_token(two)
    assert not torch.equal(one.modality_observed["v"], other.modality_observed["v"])


def test_missing_rate_zero_masks_nothing(tiny):
    dataset = load(tiny, missing_rate=0.0)
    v = np.load(f"{tiny['data_path']}/tiny/v.npy")
    observed = dataset.modality_observed["v"]
    assert observed[1:].all() and not observed[0]
    for token in ("0", "17", "39"):
        assert torch.allclose(dataset.modality_features["v"][internal_id(dataset, token)], torch.from_numpy(v[int(token)]))
    # t has no rows for items 35..39: those are really missing, nothing else is
    t_observed = {tok: bool(dataset.modality_observed["t"][i]) for i, tok in enumerate(dataset.field2id_token["item_id"])}
    assert [tok for tok, seen in t_observed.items() if not seen and tok != "[PAD]"] == sorted(
        ["35", "36", "37", "38", "39"], key=lambda tok: internal_id(dataset, tok)
    )


def test_simulated_mask_is_drawn_on_top_of_real_missingness(tiny):
    dataset = load(tiny, missing_rate=0.5)
    observed = dataset.modality_observed["t"]
    for token in ("35", "36", "37", "38", "39"):
        assert not observed[internal_id(dataset, token)]
    assert (~observed[1:]).sum() >= 20  # 50% drawn, plus the real holes


def test_feature_rows_land_on_their_items_internal_ids(tmp_path):
    splits, _ = planted_interactions()
    v = np.zeros((40, 5), np.float32)
    v[17] = [1, 2, 3, 4, 5]  # row order: row 17 is raw item "17"
    keys = [str(i) for i in range(39, -1, -1)]  # keyed: row j is raw item 39 - j
    t = np.zeros((40, 2), np.float32)
    t[keys.index("23")] = [7, 8]
    settings = write_benchmark(tmp_path / "d", "tiny", splits, {"v": (v, None), "t": (t, keys)})
    dataset = load(settings)
    assert internal_id(dataset, "17") != 17  # RecBole remaps ids: the test is not trivial
    assert dataset.modality_features["v"][internal_id(dataset, "17")].tolist() == [1, 2, 3, 4, 5]
    assert dataset.modality_features["t"][internal_id(dataset, "23")].tolist() == [7, 8]
    assert dataset.modality_features["v"][0].abs().sum() == 0  # padding id 0


def test_missing_rows_hold_the_mean_of_observed_rows(tiny):
    dataset = load(tiny, missing_rate=0.5)
    feats, observed = dataset.modality_features["v"], dataset.modality_observed["v"]
    mean = feats[observed].mean(dim=0)
    missing = (~observed).nonzero().flatten()
    missing = missing[missing > 0]
    assert len(missing) == 20
    assert torch.allclose(feats[missing], mean.expand(len(missing), -1), atol=1e-6)


def test_features_reach_the_split_datasets(tiny):
    config = build_config("LightGCN", "tiny", config_dict=tiny)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    assert train._dataset.modality_features["v"] is dataset.modality_features["v"]
    assert [len(train._dataset), len(valid._dataset), len(test._dataset)] == [360, 60, 60]


def test_saved_mask_reloads_identically(tiny):
    drawn = load(tiny, missing_rate=0.7, mask_seed=9)
    reloaded = load(tiny, mask_file=drawn.mask_path, missing_rate=0.0)
    for name in ("v", "t"):
        assert torch.equal(drawn.modality_observed[name], reloaded.modality_observed[name])


def test_mask_file_with_a_missing_rate_is_refused_in_a_single_run(tiny):
    drawn = load(tiny, missing_rate=0.5)
    with pytest.raises(ValueError, match=r"mask_file = .* and missing_rate = 0.5 .*one or the other"):
        run_recbole("LightGCN", "tiny", config_dict={**tiny, "epochs": 1, "mask_file": drawn.mask_path,
                                                      "missing_rate": 0.5})


# --- bad input ---------------------------------------------------------------


def test_row_ordered_file_with_wrong_row_count(tiny):
    np.save(f"{tiny['data_path']}/tiny/v.npy", np.zeros((39, 4), np.float32))
    with pytest.raises(ValueError, match=r"v\.npy.*39 rows.*40 items"):
        load(tiny)


def test_keyed_file_matching_no_item(tiny):
    with open(f"{tiny['data_path']}/tiny/t.keys", "w") as f:
        f.write("\n".join(f"B00{i}" for i in range(35)) + "\n")
    with pytest.raises(ValueError, match=r"t\.keys.*matches none"):
        load(tiny)


def test_keyed_file_with_missing_items_warns_with_counts(tiny, caplog):
    load(tiny)
    (warning,) = [text for text in warnings_of(caplog) if "Modality" in text]
    assert "Modality 't'" in warning and "t.keys" in warning
    assert ("35 of its 35 rows match an item, 0 name no item of the dataset, "
            "5 of the dataset's 40 items have no row") in warning


def test_keyed_file_covering_few_items_refused_unless_allowed(tiny, caplog):
    with open(f"{tiny['data_path']}/tiny/t.keys", "w") as f:
        f.write("".join(f"{i}\n" for i in range(10)) + "".join(f"B{i}\n" for i in range(25)))
    counts = "10 of its 35 rows match an item, 25 name no item of the dataset, 30 of the dataset's 40 items have no row"
    with pytest.raises(ValueError, match=r"t\.keys.*covers 25% of the items") as info:
        load(tiny)
    assert counts in str(info.value) and "allow_partial_features: True" in str(info.value)
    dataset = load(tiny, allow_partial_features=True)
    assert int(dataset.modality_observed["t"].sum()) == 10
    assert any(counts in text for text in warnings_of(caplog))


def test_allow_partial_features_must_be_a_bool(tiny):
    with pytest.raises(ValueError, match=r"allow_partial_features = 'yes' must be True or False"):
        load(tiny, allow_partial_features="yes")


def test_dataset_converted_with_allow_partial_features_loads(tmp_path):
    from dataset_prep import FeatureSpec, prepare_dataset

    splits, _ = planted_interactions()
    src = tmp_path / "src"
    src.mkdir()
    rows = [(u, i, label) for label, split in enumerate(splits.values()) for u, i in split]
    (src / "toy.inter").write_text("userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{x}\n" for u, i, x in rows))
    np.save(src / "t.npy", np.ones((10, 3)))
    (src / "t.keys").write_text("".join(f"{i}\n" for i in range(10)))  # 10 of 40 items
    prepare_dataset("toy", src, tmp_path / "out", "mmrec", [FeatureSpec("t", src / "t.npy", src / "t.keys")],
                    properties_dir=tmp_path / "props", allow_partial_features=True)
    config = build_config("LightGCN", "toy", config_file_list=[str(tmp_path / "props" / "dataset" / "toy.yaml")],
                          config_dict={"show_progress": False, "state": "WARNING"})
    dataset = create_dataset(config)
    assert int(dataset.modality_observed["t"].sum()) == 10


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features(tiny, bad):
    v = np.ones((40, 4), np.float32)
    v[3, 1] = bad
    np.save(f"{tiny['data_path']}/tiny/v.npy", v)
    with pytest.raises(ValueError, match=r"v\.npy.*NaN or inf.*row 3"):
        load(tiny)


def test_feature_file_that_is_an_npz_archive(tiny):
    np.savez(f"{tiny['data_path']}/tiny/v.npz", v=np.ones((40, 4), np.float32))
    with pytest.raises(ValueError, match=r"v\.npz of modality 'v' is an \.npz archive.*numpy\.save"):
        load(tiny, modalities={"v": {"file": "v.npz"}})


def test_feature_file_that_does_not_exist(tiny):
    with pytest.raises(FileNotFoundError, match=r"nothere\.npy.*modality 'v'"):
        load(tiny, modalities={"v": {"file": "nothere.npy"}})


@pytest.mark.parametrize("rate", [-0.1, 1.5, "lots"])
def test_missing_rate_outside_unit_interval(tiny, rate):
    with pytest.raises(ValueError, match="missing_rate"):
        load(tiny, missing_rate=rate)


def test_unknown_missing_mode(tiny):
    with pytest.raises(ValueError, match=r"missing_mode.*'random'.*independent, item"):
        load(tiny, missing_mode="random")


def test_mask_file_for_another_item_set(tiny, tmp_path):
    path = tmp_path / "other.mask"
    tokens = [str(i) for i in range(41)]  # one item too many
    save_masks(path, tokens, {"v": np.ones(41, bool), "t": np.ones(41, bool)})
    with pytest.raises(ValueError, match=r"other\.mask.*different item set"):
        load(tiny, mask_file=str(path))


def test_mask_file_for_other_modalities(tmp_path):
    path = tmp_path / "m.mask"
    save_masks(path, ["1", "2"], {"v": np.ones(2, bool)})
    with pytest.raises(ValueError, match=r"m\.mask.*modalities"):
        load_masks(path, ["1", "2"], ["v", "a"])


def test_benchmark_split_shift_is_refused(tiny):
    dataset = load(tiny)
    dataset.inter_feat = dataset.inter_feat.iloc[1:]  # as a row-dropping option would
    with pytest.raises(ValueError, match=r"tiny\.train\.inter.*shift"):
        dataset.build()


def test_a_mask_is_written_whole_and_readable_by_all_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "m.mask"
    save_masks(path, ["1", "2"], {"v": np.ones(2, bool)})
    assert path.stat().st_mode & 0o777 == 0o644  # other users of a shared dataset read it too

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        save_masks(path, ["1", "2"], {"v": np.zeros(2, bool)})
    assert load_masks(path, ["1", "2"], ["v"])["v"].tolist() == [True, True]
    assert [p.name for p in tmp_path.iterdir()] == ["m.mask"]
