"""The similarity tier: each method against a direct computation, fitted on train only, and trained on end to end."""

import numpy as np
import pytest
import torch

from config import ConfigError, GenConfig, TrainConfig, parse_explicit
from dataset import load_records
from features.similarity import METHODS, apply_pca, fit_pca
from features.store import FeatureStore, StoredFeatures
from pipeline.run.training import run_training
from tests.conftest import write_memento
from tests.test_similarity_methods import epanechnikov_logp
from tiers import TIERS

META = {"family": "hrnet", "dataset": "Memento10k", "settings": {"frames": 1}, "smoke": False}
CENTRES = np.eye(720)[:3] * 40  # three well separated scene types in a 720-d space


@pytest.fixture
def corpus(tmp_path):
    """150 train / 30 val videos in three planted clusters; an hrnet store for them."""
    data_dir = tmp_path / "data"
    write_memento(data_dir / "Memento10k", {"train": 150, "val": 30, "test": 0})
    records = load_records("Memento10k", GenConfig(data_dir=str(data_dir)))
    rng = np.random.default_rng(0)
    cluster = np.arange(len(records)) % 3
    x = CENTRES[cluster] + rng.normal(size=(len(records), 720))
    ids = [r.id for r in records]
    FeatureStore.at(data_dir / "features", "Memento10k", "hrnet_f1").write(StoredFeatures(ids, {"hrnet": x}, META))
    return data_dir, records, dict(zip(ids, cluster, strict=True)), x.astype(np.float32)


def test_every_method_scores_against_direct_computation(corpus):
    data_dir, records, cluster, x = corpus
    cfg = GenConfig(
        data_dir=str(data_dir),
        dataset="Memento10k",
        similarity_features=["hrnet"],
        similarity_methods=sorted(set(METHODS) - {"dbscan"}),
    )  # dbscan: its own test below
    TIERS["similarity"].compute(cfg)
    data = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1").read()
    assert set(data.features) == set(METHODS) - {"dbscan"} and set(data.transforms) == set(data.features)
    row = {i: k for k, i in enumerate(data.ids)}
    order = [row[r.id] for r in records]
    is_train = np.array([r.split == "train" for r in records])
    from sklearn.decomposition import PCA

    z = PCA(10, whiten=True, random_state=0).fit(x[is_train].astype(np.float64)).transform(x.astype(np.float64))
    np.testing.assert_allclose(apply_pca(fit_pca(x[is_train].astype(np.float64), 0), x), z, rtol=1e-4, atol=1e-4)
    frac = (np.abs(z - z[is_train].mean(0)) ** 0.5).sum(1) ** 2  # fractional distance, in the PCA space
    np.testing.assert_allclose(data.features["fractional_mean"][order, 0], frac, rtol=1e-4)
    x64 = x.astype(np.float64)  # the cosine methods work in the original space
    m = x64[is_train].mean(0)
    cos = x64 @ m / np.linalg.norm(x64, axis=1) / np.linalg.norm(m)
    np.testing.assert_allclose(data.features["cosine_mean"][order, 0], cos, rtol=1e-4, atol=1e-5)
    xt = x64[is_train]
    sims = (x64 / np.linalg.norm(x64, axis=1, keepdims=True)) @ (xt / np.linalg.norm(xt, axis=1, keepdims=True)).T
    frac_above = [(np.sum(s >= 0.5) - t) / (len(xt) - t) for s, t in zip(sims, is_train, strict=True)]
    np.testing.assert_allclose(data.features["cosine_threshold0.5"][order, 0], frac_above, rtol=1e-5)
    kde = data.features["kde"][order, 0]
    arrays = data.transforms["kde"].arrays  # fitted on the train videos alone, in the PCA space
    np.testing.assert_allclose(arrays["train"], z[is_train], rtol=1e-4, atol=1e-4)
    logp = epanechnikov_logp(z[is_train], z, float(arrays["bandwidth"][0]))
    floor = min(logp[is_train].min(), logp[np.isfinite(logp)].min()) - 1.0
    np.testing.assert_allclose(kde, -np.where(np.isfinite(logp), logp, floor), rtol=1e-4)
    assert np.isfinite(logp[is_train]).all()
    far = METHODS["kde"].score(data.transforms["kde"].arrays, np.full((1, 10), 50.0), np.array([False]))
    assert far[0, 0] > kde.max()  # a video far from every training video is the most distinctive


def test_dbscan_finds_planted_clusters_and_classifies_val(corpus, monkeypatch):
    """Three scene types in a small (8-d, so no PCA) space. t-SNE's scale depends on the corpus size: for 150 videos
    the reference learning rate (tuned for thousands) spreads every point apart, so this test uses a small one."""
    import features.similarity as sim

    monkeypatch.setitem(sim.TSNE_PARAMS, "learning_rate", 10.0)
    monkeypatch.setattr(type(TIERS["hrnet"]), "dbscan_eps", 3.0)
    data_dir, records, cluster, _ = corpus
    rng = np.random.default_rng(1)
    planted = np.array([cluster[r.id] for r in records])
    x = np.eye(8)[planted] * 10 + rng.normal(size=(len(records), 8))
    FeatureStore.at(data_dir / "features", "Memento10k", "hrnet_f1").write(
        StoredFeatures([r.id for r in records], {"hrnet": x}, META)
    )
    TIERS["similarity"].compute(GenConfig(data_dir=str(data_dir), dataset="Memento10k", similarity_features=["hrnet"],
                                 similarity_methods=["dbscan"]))  # fmt: skip
    data = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1").read()
    row = {i: k for k, i in enumerate(data.ids)}
    onehot = data.features["dbscan"][[row[r.id] for r in records]]
    assert onehot.shape[1] == 4  # the three clusters + a column for DBSCAN noise
    assert (onehot.sum(1) == 1).all()
    found = onehot.argmax(1)
    is_val = np.array([r.split == "val" for r in records])
    for c in range(3):  # one DBSCAN cluster per scene type; val videos reach theirs through the classifier
        assert len(set(found[planted == c])) == 1
        assert set(found[(planted == c) & is_val]) == set(found[(planted == c) & ~is_val])
    assert len(set(found)) == 3


def test_fitted_on_train_only(corpus):
    data_dir, records, _, x = corpus
    cfg = GenConfig(data_dir=str(data_dir), dataset="Memento10k", similarity_features=["hrnet"],
                    similarity_methods=["cosine_mean", "kde"])  # fmt: skip
    TIERS["similarity"].compute(cfg)
    store = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1")
    before = store.read()
    val = np.array([r.split == "val" for r in records])
    x2 = x.copy()
    x2[val] += 100.0  # move every val video far away
    FeatureStore.at(data_dir / "features", "Memento10k", "hrnet_f1").write(
        StoredFeatures([r.id for r in records], {"hrnet": x2}, META)
    )
    TIERS["similarity"].compute(cfg)
    after = store.read()
    train_ids = {r.id for r in records if r.split == "train"}
    train_rows = [i for i, vid in enumerate(after.ids) if vid in train_ids]
    for name in ("cosine_mean", "kde"):
        np.testing.assert_allclose(after.features[name][train_rows], before.features[name][train_rows], rtol=1e-5)
        for key, arr in before.transforms[name].arrays.items():
            np.testing.assert_array_equal(after.transforms[name].arrays[key], arr)


def test_training_with_similarity_module(corpus, tmp_path, monkeypatch):
    import features.similarity as sim

    monkeypatch.setitem(sim.TSNE_PARAMS, "max_iter", 250)  # the pipeline, not the embedding's quality, is tested here
    data_dir, *_ = corpus
    gen = GenConfig(data_dir=str(data_dir), dataset="Memento10k", similarity_features=["hrnet"],
                    similarity_methods=["dbscan", "cosine_mean"])  # fmt: skip
    TIERS["similarity"].compute(gen)
    argv = ["--data_dir", str(data_dir), "--runs_dir", str(tmp_path / "runs"), "-n", "sim", "--use_similarity",
            "--similarity_features", "hrnet", "--similarity_methods", "dbscan", "cosine_mean", "--epochs", "2",
            "--hidden_channels", "8", "--seed", "1", "-s"]  # fmt: skip
    cfg, explicit = parse_explicit(TrainConfig, argv, check=False)
    result = run_training(cfg, explicit)
    assert result["last"]["epoch"] == 1
    ckpt = torch.load(tmp_path / "runs/sim/last.pt", weights_only=True)
    onehot = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1").read().dims["dbscan"]
    assert ckpt["dims"] == {"similarity": onehot + 1}  # dbscan's one-hot (its width is data), then cosine_mean
    assert ckpt["sources"]["similarity_hrnet_f1"]["features"] == ["dbscan", "cosine_mean"]
    assert set(ckpt["stats"]) == {"similarity"}  # normalised with train statistics (--normalize_similarity)


@pytest.mark.slow
def test_gen_features_cli_computes_similarity_and_names_missing_sources(corpus):
    import subprocess
    import sys

    from config import ROOT

    data_dir, *_ = corpus
    cmd = [sys.executable, "gen_features.py", "--dataset", "Memento10k", "--data_dir", str(data_dir), "--features",
           "similarity", "--similarity_methods", "cosine_mean", "fractional_mean"]  # fmt: skip
    ok = subprocess.run([*cmd, "--similarity_features", "hrnet"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    store = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1")
    assert store.read().dims == {"cosine_mean": 1, "fractional_mean": 1}
    bad = subprocess.run([*cmd, "--similarity_features", "ip_csn_152"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert "ip_csn_152.h5" in bad.stderr and "--features csn --csn_arch ip_csn_152" in bad.stderr


def test_fit_on_scores_new_videos_like_validation_videos(corpus, tmp_path):
    """Your own videos (the folder dataset) are scored with the state fitted on a training dataset."""
    data_dir, records, _, x = corpus
    features_dir = data_dir / "features"
    methods = ["cosine_mean", "cosine_threshold0.5", "kde", "fractional_mean"]
    TIERS["similarity"].compute(GenConfig(data_dir=str(data_dir), dataset="Memento10k", similarity_features=["hrnet"],
                                 similarity_methods=methods))  # fmt: skip
    fitted = FeatureStore.at(features_dir, "Memento10k", "similarity_hrnet_f1").read()
    val = [k for k, r in enumerate(records) if r.split == "val"][:4]
    mine = tmp_path / "my_videos"
    mine.mkdir()
    for k in range(4):
        (mine / f"clip{k}.mp4").write_bytes(b"")  # the folder adapter only lists files
    FeatureStore.at(features_dir, "folder", "hrnet_f1").write(
        StoredFeatures([f"clip{k}" for k in range(4)], {"hrnet": x[val]}, META)  # copies of 4 val videos
    )
    cfg = GenConfig(data_dir=str(mine), features_dir=str(features_dir), dataset="folder", fit_on="Memento10k",
                    similarity_features=["hrnet"], similarity_methods=methods)  # fmt: skip
    TIERS["similarity"].compute(cfg)
    scored = FeatureStore.at(features_dir, "folder", "similarity_hrnet_f1").read()
    row = {i: k for k, i in enumerate(fitted.ids)}
    for method in methods:
        expected = fitted.features[method][[row[records[k].id] for k in val]]
        np.testing.assert_allclose(scored.features[method], expected, rtol=1e-5, atol=1e-6)
    assert scored.meta["settings"] == fitted.meta["settings"] and scored.meta["fit_on"] == "Memento10k"
    assert scored.meta["dataset"] == "folder"
    with pytest.raises(ConfigError, match="holds only 4 videos; similarity is fitted on at least 10 .*--fit_on"):
        TIERS["similarity"].compute(GenConfig(data_dir=str(mine), features_dir=str(features_dir), dataset="folder",
                                     similarity_features=["hrnet"], similarity_methods=methods))  # fmt: skip


def test_methods_of_an_older_source_are_dropped(corpus):
    """Re-extracted source features (here: other values and settings) invalidate every method fitted on the old ones."""
    data_dir, records, _, x = corpus
    cfg = GenConfig(data_dir=str(data_dir), dataset="Memento10k", similarity_features=["hrnet"],
                    similarity_methods=["kde"])  # fmt: skip
    TIERS["similarity"].compute(cfg)
    FeatureStore.at(data_dir / "features", "Memento10k", "hrnet_f1").write(
        StoredFeatures([r.id for r in records], {"hrnet": x * 2}, META | {"settings": {"frames": 1, "weights": "real"}})
    )
    TIERS["similarity"].compute(GenConfig(data_dir=str(data_dir), dataset="Memento10k", similarity_features=["hrnet"],
                                 similarity_methods=["cosine_mean"]))  # fmt: skip
    after = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1").read()
    assert set(after.features) == {"cosine_mean"}  # the stale kde is gone
    TIERS["similarity"].compute(cfg)  # same source again: methods accumulate
    assert set(FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1").read().features) == {
        "cosine_mean",
        "kde",
    }


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_fits_on_train_and_scores_any_rows(name):
    """The contract of a registered method: seeded, finite, one row per video, new rows scored like train rows."""
    from features.similarity import Space

    rng = np.random.default_rng(0)
    train = np.concatenate([rng.normal(c, 0.3, size=(40, 4)) for c in (0.0, 3.0, 6.0)])
    space = Space("s", "store", "f", eps=3.0, command="")
    method = METHODS[name]
    arrays = method.fit(train, space, seed=0)
    again = method.fit(train, space, seed=0)
    assert arrays.keys() == again.keys() and all(np.array_equal(arrays[k], again[k]) for k in arrays)
    scores = method.score(arrays, train, np.ones(len(train), dtype=bool))
    fresh = method.score(arrays, train[:5] + 1e-9, np.zeros(5, dtype=bool))
    assert scores.ndim == 2 and len(scores) == len(train) and np.isfinite(scores).all()
    assert fresh.shape == (5, scores.shape[1]) and np.isfinite(fresh).all()
