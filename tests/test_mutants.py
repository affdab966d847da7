"""Tests named after the defects an audit injected and the suite let through (mutation testing's survivors).

Each asserts the value the correct code gives, so the injected defect fails it. ``bench/mutation.sh`` runs the
mutation tool over the core modules.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from config import ConfigError, GenConfig, TrainConfig, parse
from core.io import atomic_write
from dataset import VideoRecord
from features.similarity import DBSCANClusters
from model.losses import LOSSES, LossContext
from pipeline.run.table import fit_stats
from tiers import TIERS


def test_mse_tails_weights_use_the_train_mean_not_the_val_mean(memento, tmp_path):
    """Trainer's loss context holds the mean score of the *train* split (the injected defect used val)."""
    from pipeline.run.table import FeatureTable
    from pipeline.run.training import Trainer
    from tests.test_train import _import

    _import(memento, tmp_path, name="emb")
    cfg = TrainConfig(data_dir=str(memento), extra_features=["emb"], loss="mse_tails", seed=0, epochs=1)
    from dataset import load_records

    records = load_records("Memento10k", cfg)
    table = FeatureTable.build(cfg, records)
    trainer = Trainer(cfg, table, torch.device("cpu"))
    train = np.array([r.score for r in records if r.split == "train"])
    val = np.array([r.score for r in records if r.split == "val"])
    assert abs(train.mean() - val.mean()) > 1e-4  # the two means differ in the fixture, so the test can tell them
    assert trainer.ctx.train_mean == pytest.approx(train.mean(), abs=1e-6)  # float32 scores
    # and the loss uses it: weights grow with the distance to that mean
    ctx = LossContext(train_mean=0.8, tails_pow=2.0, tails_mult=1.0)
    target = torch.tensor([0.8, 0.9])
    pred = target + 0.1
    w = 1 + (target - 0.8).abs() ** 2
    assert LOSSES["mse_tails"](pred, target, ctx).item() == pytest.approx(((w / w.mean()) * 0.01).mean().item())


def test_atomic_write_leaves_the_old_file_intact_until_it_is_done(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with atomic_write(path) as tmp:
        tmp.write_text("half of the new")
        assert path.read_text() == "old" and tmp != path and tmp.parent == path.parent
    assert path.read_text() == "half of the new" and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("never finished")
        raise RuntimeError("killed")
    assert path.read_text() == "half of the new" and not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_renames_the_temp_file_it_does_not_copy_it(tmp_path):
    """The final file is the very inode that was written (a copy would be a new file, or the old one rewritten in
    place, which a concurrent reader could see half done)."""
    path = tmp_path / "summary.json"
    path.write_text("old")
    old_inode = path.stat().st_ino
    with atomic_write(path) as tmp:
        tmp.write_text("new")
        written = tmp.stat().st_ino
    assert path.stat().st_ino == written != old_inode and path.read_text() == "new"
    assert os.listdir(tmp_path) == ["summary.json"]
    # a reader that opened the old file part-way through its read finishes reading the old content, never a mix
    old, new = b"o" * 100_000, b"n" * 100_000
    path.write_bytes(old)
    with path.open("rb") as reader:
        head = reader.read(50_000)
        with atomic_write(path) as tmp:
            tmp.write_bytes(new)
        assert head + reader.read() == old
    assert path.read_bytes() == new


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old")
    synced = []  # (inode, is a directory, what the final path held at the time)
    real_fsync = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append((st.st_ino, stat.S_ISDIR(st.st_mode), path.read_text()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_write(path) as tmp:
        tmp.write_text("new")
        written = tmp.stat().st_ino
    assert synced == [(written, False, "old"), (tmp_path.stat().st_ino, True, "new")]


def test_stale_temps_of_dead_writers_are_removed_and_a_live_writers_kept(tmp_path):
    """What a killed writer left goes; a running writer's temporary file stays (deleting it would break its rename)."""
    import subprocess
    import sys

    from core.io import TEMP_SUFFIX, remove_stale_temps

    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {
            "live": f".raw.h5.{live.pid}-k3j{TEMP_SUFFIX}",
            "dead": f".raw.h5.{dead.pid}-x9a{TEMP_SUFFIX}",
            "mine": f".raw.h5.{os.getpid()}-q1z{TEMP_SUFFIX}",  # this process writes nothing while it cleans
            "no owner": f".raw{TEMP_SUFFIX}",
            "data": "raw.h5",
            "hidden": ".raw.h5.keep",
        }
        for name in names.values():
            (tmp_path / name).write_text("x")
        removed = remove_stale_temps(tmp_path)
        assert sorted(p.name for p in removed) == sorted(names[k] for k in ("dead", "mine", "no owner"))
        assert sorted(os.listdir(tmp_path)) == sorted(names[k] for k in ("live", "data", "hidden"))
        with atomic_write(tmp_path / "raw.h5") as tmp:  # the names atomic_write gives follow the same pattern
            assert tmp.name.startswith(f".raw.h5.{os.getpid()}-") and tmp.name.endswith(TEMP_SUFFIX)
            assert remove_stale_temps(tmp_path) == [tmp] and not tmp.exists()
            tmp.write_text("y")
    finally:
        live.communicate(b"")
    assert remove_stale_temps(tmp_path) == [tmp_path / names["live"]]  # its writer has ended now
    assert remove_stale_temps(tmp_path / "absent") == []


def test_dbscan_noise_has_its_own_column_not_cluster_zero():
    arrays = {"train_labels": np.array([0, 0, 1, -1, 1, -1]), "n_columns": np.array([3])}
    onehot = DBSCANClusters().score(arrays, np.zeros((6, 2)), np.ones(6, dtype=bool))
    np.testing.assert_array_equal(onehot.argmax(axis=1), [0, 0, 1, 2, 1, 2])
    assert onehot.sum() == 6 and onehot[:, 0].sum() == 2


def test_normalisation_leaves_a_constant_dimension_finite():
    """Statistics of the scored train videos only: the val video and an unscored train video (50, 7) move nothing."""
    records = [VideoRecord(f"v{i}", None, "train", 0.5) for i in range(4)] + [VideoRecord("w", None, "val", 0.5)]
    records.append(VideoRecord("u", None, "train", None))
    block = np.array([[1.0, 3.0], [2.0, 3.0], [3.0, 3.0], [4.0, 3.0], [5.0, 3.0], [50.0, 7.0]], np.float32)
    cfg = TrainConfig(use_raw=True)
    stats = fit_stats(cfg, {"raw": TIERS["raw"]}, {"raw": block}, records)["raw"]
    assert stats["std"][1].item() == 1.0 and stats["mean"][1].item() == 3.0
    assert stats["mean"][0].item() == pytest.approx(2.5) and stats["std"][0].item() == pytest.approx(
        np.std([1, 2, 3, 4])
    )
    normalised = (block - stats["mean"].numpy()) / stats["std"].numpy()
    assert np.isfinite(normalised).all() and (normalised[:5, 1] == 0).all() and normalised[5, 1] == 4.0


@pytest.mark.parametrize("flag", ["--epochs", "--batch_size"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_epochs_and_batch_size_must_be_positive(flag, value):
    with pytest.raises(ConfigError, match=">= 1"):
        parse(TrainConfig, ["--use_raw", flag, value])
    assert getattr(parse(TrainConfig, ["--use_raw", flag, "1"]), flag[2:]) == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_imports_with_nan_or_inf_are_refused(memento, tmp_path, bad):
    from pipeline.generate import run_import
    from tests.conftest import signal_features

    ids, x = signal_features(memento)
    x[3, 1] = bad
    np.savez(tmp_path / "f.npz", ids=np.array(ids), emb=x)
    argv = ["--dataset", "Memento10k", "--data_dir", str(memento), "--import", str(tmp_path / "f.npz"), "--name", "f"]
    with pytest.raises(ConfigError, match=f"1 rows of f hold NaN or inf \\(first id {ids[3]}\\)"):
        run_import(parse(GenConfig, argv))


@pytest.mark.parametrize("name", ["clip.MP4", "clip.Mp4", "clip.WEBM", "clip.mkv"])
def test_folder_suffixes_match_whatever_their_case(tmp_path, name):
    from dataset import DATASETS

    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    assert [r.id for r in DATASETS["folder"].index(tmp_path)] == ["clip"]


def test_a_write_that_fails_midway_leaves_no_visible_part(tmp_path, monkeypatch):
    """Killing between part files cannot see a non-atomic write; a failure inside the write can."""
    import features.store as store_module
    from features.store import FeatureStore

    store = FeatureStore.at(tmp_path, "demo", "raw")
    meta = {"family": "raw", "settings": {}, "smoke": False}
    store.append(["v0"], {"a": np.ones((1, 2))}, meta)
    real = store_module._dataset

    def dies_on_features(f, name, arr, dtype=None):
        real(f, name, arr, dtype)
        if name.startswith("features/"):
            raise OSError("killed mid-write")

    monkeypatch.setattr(store_module, "_dataset", dies_on_features)
    with pytest.raises(OSError, match="killed mid-write"):
        store.append(["v1"], {"a": np.ones((1, 2))}, meta)
    monkeypatch.undo()
    assert store.read().ids == ["v0"] and len(list(store.parts_dir.iterdir())) == 1


# ------------------------------------------------------------------ losses and metrics (bench/mutation.sh survivors)


def test_pearson_of_small_vectors_is_not_clamped_away():
    from model.losses import _pearson

    a = torch.tensor([1e-3, -1e-3, 0.0])
    assert _pearson(a, a).item() == pytest.approx(1.0) and _pearson(a, -a).item() == pytest.approx(-1.0)


def test_spearman_loss_uses_l2_soft_ranks_of_strength_one():
    """Against the independent soft rank of test_model (projection onto the permutahedron by pool-adjacent-violators),
    on two clusters of values far apart: there the ranks are not an affine map of the inputs, so the correlation
    moves with the strength (within one cluster narrower than the strength, any strength gives the same number)."""
    from tests.test_model import _pearson, _soft_rank_direct

    pred, target = np.array([0.0, 0.3, 0.1, 5.0, 5.4, 5.2]), np.array([0.2, 0.0, 0.4, 5.3, 5.0, 5.1])

    def direct(strength_pred: float, strength_target: float) -> float:
        return -_pearson(_soft_rank_direct(pred / strength_pred), _soft_rank_direct(target / strength_target)) / 100

    got = LOSSES["spearman"](torch.tensor(pred), torch.tensor(target), LossContext()).item()
    assert got == pytest.approx(direct(1.0, 1.0), rel=1e-9, abs=0)
    for other in (0.9, 1.1):  # the test can tell a strength 10 % off, on either input
        assert abs(direct(other, 1.0) - got) > 1e-5 and abs(direct(1.0, other) - got) > 1e-5


@pytest.mark.parametrize(("epoch", "epochs", "weight"), [(0, 1, 0.0), (0, 2, 0.0), (1, 2, 1.0), (1, 3, 0.5)])
def test_mse_to_spearman_moves_from_mse_to_spearman(epoch, epochs, weight):
    pred, target = torch.tensor([0.1, 0.5, 0.2, 0.9]), torch.tensor([0.2, 0.4, 0.1, 0.8])
    ctx = LossContext(epoch=epoch, epochs=epochs)
    mse, spearman = LOSSES["mse"](pred, target, ctx), LOSSES["spearman"](pred, target, ctx)
    expected = (1 - weight) * mse + weight * spearman
    assert LOSSES["mse_to_spearman"](pred, target, ctx).item() == pytest.approx(expected.item(), abs=1e-6)


def test_histogram_counts_out_of_range_scores_in_the_edge_bins():
    from model.metrics import histogram

    h = histogram(np.array([-0.5, 1.5, 0.5, 1.0]), bins=4)
    np.testing.assert_allclose(h, [0.25, 0.0, 0.25, 0.5])
    np.testing.assert_allclose(histogram(np.array([0.3]), bins=2), [1.0, 0.0])


def test_js_divergence_bounds():
    from model.metrics import js_divergence

    p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-9)
    assert js_divergence(p, q) == pytest.approx(np.log(2), rel=1e-6)


def test_rank_metrics_are_computed_unless_an_input_is_constant():
    from model.metrics import compute_metrics

    pred, true = np.array([0.2, 0.9, 0.4, 0.6]), np.array([0.0, 1.0, 0.5, 0.25])  # true spans exactly 1
    m = compute_metrics(pred, true)
    # ranks 1 4 2 3 against 1 4 3 2: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15); one discordant pair of six
    assert m["spearman"] == pytest.approx(0.8) and m["kendall"] == pytest.approx(4 / 6)
    flat = compute_metrics(np.full(4, 0.5), true)
    assert flat["spearman"] == 0.0 and flat["kendall"] == 0.0


# ------------------------------------------------------------------ feature store (bench/mutation.sh survivors)


def _store_meta() -> dict:
    return {"family": "raw", "settings": {"size": 256, "frames": 45}, "smoke": False}


def test_store_bytes_do_not_depend_on_time_or_key_order(tmp_path):
    """Same data, same bytes: no timestamps (track_times), no insertion order (sort_keys, track_order)."""
    import time

    from features.store import FeatureStore, StoredFeatures, Transform

    def write(folder: str, meta: dict, info: dict) -> bytes:
        store = FeatureStore.at(tmp_path / folder, "demo", "raw")
        data = StoredFeatures(["a", "b"], {"y": np.ones((2, 1)), "x": np.zeros((2, 3))}, meta, {"c": "bad"},
                              {"pca": Transform({"m": np.arange(3.0)}, info)})  # fmt: skip
        store.write(data)
        return store.path.read_bytes()

    first = write("one", _store_meta(), {"k": 1, "j": 2})
    time.sleep(1.1)
    second = write("two", dict(reversed(list(_store_meta().items()))), {"j": 2, "k": 1})
    assert first == second


def test_transform_digest_tells_fitted_states_apart():
    from features.store import Transform

    a = Transform({"m": np.arange(3.0), "s": np.ones(2)})
    assert a.digest() == Transform({"s": np.ones(2), "m": np.arange(3.0)}, {"other": "info"}).digest()
    assert a.digest() != Transform({"m": np.arange(3.0) + 1e-9, "s": np.ones(2)}).digest()
    assert a.digest() != Transform({"m": np.arange(3.0).astype(np.float32), "s": np.ones(2)}).digest()
    assert a.digest() != Transform({"n": np.arange(3.0), "s": np.ones(2)}).digest()
    assert len(a.digest()) == 40


def test_an_empty_batch_keeps_its_feature_width(tmp_path):
    from features.store import FeatureStore

    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append([], {"a": np.zeros((0, 5)), "b": np.zeros(0)}, _store_meta(), failures={"v": "bad"})
    data = store.read()
    assert data.features["a"].shape == (0, 5) and data.features["b"].shape == (0, 1)
    store.append(["w"], {"a": np.arange(5.0)[None], "b": np.array([7.0])}, _store_meta())
    data = store.read()
    assert data.features["a"].dtype == np.float32 and data.dims == {"a": 5, "b": 1}


def test_hidden_part_files_are_not_parts(tmp_path):
    from features.store import FeatureStore

    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append(["v"], {"a": np.ones((1, 2))}, _store_meta())
    (store.parts_dir / ".0-000007.h5").write_bytes(b"someone else's half-written part")
    assert store.read().ids == ["v"] and store.done_ids() == {"v"}
    assert store.parts_dir.name == "raw.parts"


def test_a_missing_store_is_named(tmp_path):
    from core.io import StoreError
    from features.store import FeatureStore

    store = FeatureStore.at(tmp_path, "demo", "raw")
    with pytest.raises(StoreError, match=f"no feature store at {store.path}"):
        store.read()
    assert store.done_ids() == set()


def test_read_transforms_reads_no_matrix(tmp_path, monkeypatch):
    import features.store as store_module
    from features.store import FeatureStore, Transform

    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append(["v"], {"a": np.ones((1, 2))}, _store_meta())
    store.set_transform("pca", Transform({"m": np.arange(3.0)}, {"n": 1}))
    store.append(["w"], {"a": np.ones((1, 2))}, _store_meta())  # a part after the compacted main file
    monkeypatch.setattr(store_module, "_read_h5", lambda path: pytest.fail(f"read every matrix of {path}"))
    transforms = store.read_transforms()
    assert list(transforms) == ["pca"] and transforms["pca"].info == {"n": 1}
    np.testing.assert_array_equal(transforms["pca"].arrays["m"], np.arange(3.0))
