"""The in-memory feature table: what it holds, in which order and dtype, normalised how, and what it says when a store
cannot give it what it needs. Values are checked against direct numpy computations."""

import math

import numpy as np
import pytest
import torch

from config import ConfigError, TrainConfig
from dataset import VideoRecord, load_records
from features.store import FeatureStore, StoredFeatures, Transform
from pipeline.run.table import FeatureTable, no_videos

HRNET_META = {"family": "hrnet", "dataset": "Memento10k", "settings": {"frames": 1}, "smoke": False}
EMB_META = {"family": "import", "dataset": "Memento10k", "settings": {}, "smoke": False}


@pytest.fixture
def stores(memento):
    """An hrnet store (not normalised by default) and an imported 'emb' store with a constant and a tiny column."""
    records = load_records("Memento10k", TrainConfig(data_dir=str(memento)))
    ids = [r.id for r in records]
    rng = np.random.default_rng(0)
    hrnet = rng.normal(size=(len(ids), 4)).astype(np.float32)
    emb = rng.normal(loc=3.0, size=(len(ids), 3)).astype(np.float32)
    emb[:, 1] *= 0.01  # a train std far below 1
    emb[:, 2] = 7.0  # constant
    fdir = memento / "features"
    FeatureStore.at(fdir, "Memento10k", "hrnet_f1").write(StoredFeatures(ids, {"hrnet": hrnet}, HRNET_META))
    FeatureStore.at(fdir, "Memento10k", "emb").write(StoredFeatures(ids, {"emb": emb}, EMB_META))
    return memento, records, {"hrnet": hrnet, "emb": emb}


def config(data_dir, **kw) -> TrainConfig:
    kw = {"use_raw": False, "use_hrnet": True, "extra_features": ["emb"], "normalize_extra": True} | kw
    return TrainConfig(data_dir=str(data_dir), **kw)


def test_build_normalises_every_module_that_asks_with_train_statistics(stores):
    data_dir, records, blocks = stores
    table = FeatureTable.build(config(data_dir), records)
    assert table.modules == ["hrnet", "emb"] and table.dims == {"hrnet": 4, "emb": 3} and table.in_dim == 7
    index = {r.id: i for i, r in enumerate(records)}
    train = [index[i] for i in table.splits["train"].ids]
    val = [index[i] for i in table.splits["val"].ids]
    assert [records[i].split for i in train] == ["train"] * 60 and len(val) == 20
    assert set(table.splits) == {"train", "val"}  # the test split has no scores
    for split in table.splits.values():
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.float32 and split.x.shape[1] == 7
    # hrnet is not normalised: its columns are the stored values, even though it comes before a module that is
    np.testing.assert_array_equal(table.splits["train"].x[:, :4].numpy(), blocks["hrnet"][train])
    emb_train = blocks["emb"][train].astype(np.float64)
    mean, std = emb_train.mean(0), emb_train.std(0)
    std[2] = 1.0  # the constant column is only centred
    assert set(table.stats) == {"emb"} and table.stats["emb"]["mean"].dtype == torch.float32
    np.testing.assert_allclose(table.stats["emb"]["mean"].numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(table.stats["emb"]["std"].numpy(), std, rtol=1e-6)
    for split, rows in (("train", train), ("val", val)):  # val is scaled with the train statistics
        want = (blocks["emb"][rows].astype(np.float64) - mean) / std
        np.testing.assert_allclose(table.splits[split].x[:, 4:].numpy(), want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(table.splits[split].y.numpy(), [records[i].score for i in rows], rtol=1e-6)
    assert (table.splits["train"].x[:, 6] == 0).all()
    x = table.splits["train"].x[:, 4:6].double()
    np.testing.assert_allclose(x.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(0, unbiased=False).numpy(), 1, atol=1e-4)


def test_stats_from_a_checkpoint_are_reused_and_unscored_splits_carry_nan(stores):
    data_dir, records, blocks = stores
    stats = {"emb": {"mean": torch.tensor([1.0, 2.0, 3.0]), "std": torch.tensor([2.0, 4.0, 0.5])}}
    table = FeatureTable.build(config(data_dir), records, stats=stats, splits=("test",), scored_only=False)
    test = [i for i, r in enumerate(records) if r.split == "test"]
    assert list(table.splits) == ["test"] and table.splits["test"].ids == [records[i].id for i in test]
    assert all(math.isnan(v) for v in table.splits["test"].y.tolist())
    want = (blocks["emb"][test] - np.array([1.0, 2.0, 3.0])) / np.array([2.0, 4.0, 0.5])
    np.testing.assert_allclose(table.splits["test"].x[:, 4:].numpy(), want, rtol=1e-6)
    assert table.stats is stats


def test_provenance_names_each_store_its_tier_features_and_settings(stores):
    data_dir, records, _ = stores
    table = FeatureTable.build(config(data_dir), records)
    assert table.sources == {
        "hrnet_f1": {"tier": "hrnet", "features": ["hrnet"], "settings": {"frames": 1}, "smoke": False,
                     "dims": {"hrnet": 4}, "transforms": {}},
        "emb": {"tier": "imported", "features": ["emb"], "settings": {}, "smoke": False, "dims": {"emb": 3},
                "transforms": {}},
    }  # fmt: skip


def test_failed_videos_are_left_out_with_a_warning_naming_one(stores, capsys):
    data_dir, records, blocks = stores
    ids = [r.id for r in records]
    bad = [r.id for r in records if r.split == "train"][:2]
    store = FeatureStore.at(data_dir / "features", "Memento10k", "emb")
    keep = [i for i, v in enumerate(ids) if v not in bad]  # a failed video has no row, only its reason
    failures = {bad[0]: "cannot decode", bad[1]: "empty"}
    store.write(StoredFeatures([ids[i] for i in keep], {"emb": blocks["emb"][keep]}, EMB_META, failures))
    table = FeatureTable.build(config(data_dir), records)
    assert len(table.splits["train"].ids) == 58 and not set(bad) & set(table.splits["train"].ids)
    assert (
        f"warning: 2 videos failed extraction and are left out, e.g. {bad[0]}: cannot decode" in capsys.readouterr().out
    )


def test_videos_missing_from_a_store_and_bad_values_are_named(stores):
    data_dir, records, blocks = stores
    ids = [r.id for r in records]
    store = FeatureStore.at(data_dir / "features", "Memento10k", "emb")
    store.write(StoredFeatures(ids[2:], {"emb": blocks["emb"][2:]}, EMB_META))
    with pytest.raises(ConfigError) as err:
        FeatureTable.build(config(data_dir), records)
    text = str(err.value)
    scored = [r.id for r in records if r.score is not None]
    missing = [i for i in ids[:2] if i in scored]
    assert (
        f"{len(missing)} of {len(scored)} videos have no emb features in {store.path} (first: {', '.join(missing)})"
        in text
    )
    assert "Compute them with: python gen_features.py" in text
    emb = blocks["emb"].copy()
    emb[ids.index(scored[3])] = np.nan
    store.write(StoredFeatures(ids, {"emb": emb}, EMB_META))
    with pytest.raises(ConfigError, match=rf"1 videos have NaN or inf emb features \(first: \['{scored[3]}'\]\)"):
        FeatureTable.build(config(data_dir), records)


def test_a_missing_store_says_how_to_make_it_or_leave_it_out(stores):
    data_dir, records, _ = stores
    path = data_dir / "features" / "Memento10k" / "hrnet_f1.h5"
    path.unlink()
    with pytest.raises(FileNotFoundError) as err:
        FeatureTable.build(config(data_dir), records)
    assert str(err.value).startswith(f"no hrnet features for Memento10k: {path} does not exist. Compute them with: ")
    assert str(err.value).endswith(", or leave the tier out: --no-use_hrnet")
    FeatureStore.at(data_dir / "features", "Memento10k", "other").write(
        StoredFeatures([records[0].id], {"o": np.zeros((1, 1))}, EMB_META)
    )
    with pytest.raises(FileNotFoundError) as err:
        FeatureTable.build(config(data_dir, use_hrnet=False, extra_features=["embb"]), records)
    assert str(err.value).endswith(
        "The stores of Memento10k are: emb, other. "
        "Import them with: python gen_features.py --dataset Memento10k --import FILE --name embb"
    )
    empty = data_dir.parent / "empty"
    with pytest.raises(FileNotFoundError) as err:  # no store at all: nothing to list
        FeatureTable.build(config(data_dir, use_hrnet=False, features_dir=str(empty)), records)
    assert str(err.value) == (
        f"no emb features for Memento10k: {empty / 'Memento10k' / 'emb.h5'} does not exist. "
        "Import them with: python gen_features.py --dataset Memento10k --import FILE --name emb"
    )


def test_a_store_without_the_feature_its_tier_reads_is_named(stores):
    data_dir, records, blocks = stores
    ids = [r.id for r in records]
    store = FeatureStore.at(data_dir / "features", "Memento10k", "hrnet_f1")
    store.write(StoredFeatures(ids, {"other": blocks["hrnet"]}, HRNET_META))
    with pytest.raises(ConfigError) as err:
        FeatureTable.build(config(data_dir), records)
    assert str(err.value) == (
        "hrnet: store hrnet_f1 has no feature 'hrnet'; it has ['other']. "
        "Compute it with: python gen_features.py --dataset Memento10k --features hrnet --hrnet_frames 1"
    )


def test_a_module_of_several_features_keeps_them_side_by_side_in_order(stores):
    data_dir, records, _ = stores
    ids = [r.id for r in records]
    raw = {
        name: np.full((len(ids), dim), k, np.float32) for k, (name, dim) in enumerate([("hog", 10), ("contrast", 1)])
    }
    meta = {"family": "raw", "dataset": "Memento10k", "settings": {}, "smoke": False}
    FeatureStore.at(data_dir / "features", "Memento10k", "raw").write(StoredFeatures(ids, raw, meta))
    cfg = config(data_dir, use_raw=True, raw_features=["contrast", "hog"], normalize_raw=False, extra_features=[])
    table = FeatureTable.build(cfg, records)
    assert table.dims == {"raw": 11, "hrnet": 4}
    np.testing.assert_array_equal(table.splits["val"].x[:, :11].numpy(), [[1.0] + [0.0] * 10] * 20)


def test_normalisation_needs_scored_train_videos(stores):
    data_dir, records, _ = stores
    with pytest.raises(ConfigError, match="^cannot fit emb normalisation: no scored train videos$"):
        FeatureTable.build(config(data_dir), records, splits=("val",))


def test_the_table_carries_the_stores_fitted_transforms_and_smoke_flags(stores):
    data_dir, records, blocks = stores
    ids = [r.id for r in records]
    fitted = {"pca": Transform({"mean": np.ones(3)}, {"fitted_on": "train"})}
    meta = {"family": "import", "dataset": "Memento10k", "smoke": True}  # no settings recorded
    FeatureStore.at(data_dir / "features", "Memento10k", "emb").write(
        StoredFeatures(ids, {"emb": blocks["emb"]}, meta, transforms=fitted)
    )
    table = FeatureTable.build(config(data_dir), records)
    assert list(table.fitted) == ["emb"] and list(table.fitted["emb"]["transforms"]) == ["pca"]
    assert table.sources["emb"]["smoke"] is True and table.sources["emb"]["settings"] == {}
    assert table.sources["emb"]["transforms"] == {"pca": fitted["pca"].digest()}


def test_error_lists_stop_at_five_ids(stores):
    data_dir, records, blocks = stores
    ids = [r.id for r in records]
    scored = [i for i, r in enumerate(records) if r.score is not None]
    first = [ids[i] for i in scored[:5]]
    emb = blocks["emb"].copy()
    emb[scored[:7]] = np.inf
    store = FeatureStore.at(data_dir / "features", "Memento10k", "emb")
    store.write(StoredFeatures(ids, {"emb": emb}, EMB_META))
    with pytest.raises(ConfigError) as err:
        FeatureTable.build(config(data_dir), records)
    assert str(err.value) == f"7 videos have NaN or inf emb features (first: {first})"
    keep = [i for i in range(len(ids)) if i not in scored[:7]]
    store.write(StoredFeatures([ids[i] for i in keep], {"emb": blocks["emb"][keep]}, EMB_META))
    with pytest.raises(ConfigError) as err:
        FeatureTable.build(config(data_dir), records)
    command = "python gen_features.py --dataset Memento10k --import FILE --name emb"
    assert str(err.value).endswith(f"(first: {', '.join(first)}). Compute them with: {command}")


def test_no_videos_says_which_splits_exist_and_what_to_pass():
    records = [VideoRecord("a", None, "val", 0.5), VideoRecord("b", None, "test", None)]
    assert no_videos("D", records, ("train",), True) == (
        "D has no scored videos in train; it has val 1 (1 scored), test 1 (0 scored). Pass --split val"
    )
    unscored = [VideoRecord("b", None, "test", None)]
    assert no_videos("D", unscored, ("train", "val"), True) == (
        "D has no scored videos in train/val; it has test 1 (0 scored). Its videos are unscored: train on a "
        "scored dataset, then score them with evaluate.py --videos"
    )
    assert (
        no_videos("D", unscored, ("train",), False)
        == "D has no videos in train; it has test 1 (0 scored). Pass --split test"
    )
    assert no_videos("D", [], ("train",), False) == "D has no videos in train; it has no videos at all"
    mixed = [VideoRecord("c", None, "train", None), VideoRecord("d", None, "val", 0.7)]
    assert no_videos("D", mixed, ("test",), True).endswith("Pass --split val")  # the first split with scores
