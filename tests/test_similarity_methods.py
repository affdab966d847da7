"""The similarity methods and their store, piece by piece: the PCA step's edge, each score's formula at its edges
(zero vectors, blocks, self-matches, empty densities, noise), and every refusal with its exact message."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import features.similarity as sim
from config import ConfigError, GenConfig, code_version
from dataset import load_records
from features.similarity import (
    KDE,
    METHODS,
    CosineThreshold,
    DBSCANClusters,
    FractionalMean,
    Space,
    apply_pca,
    compute_similarity,
    fit_pca,
)
from features.store import FeatureStore, StoredFeatures
from tests.conftest import write_memento

SPACE = Space("hrnet", "hrnet_f1", "hrnet", eps=3.0, command="python gen_features.py --features hrnet")
META = {"family": "hrnet", "dataset": "Memento10k", "settings": {"frames": 1}, "smoke": False}


def _unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: cosines, computed here independently of the module's own helper."""
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def epanechnikov_logp(train: np.ndarray, x: np.ndarray, h: float) -> np.ndarray:
    """Log-density of an Epanechnikov KDE written out: mean over train of (1 - |x - t|^2 / h^2)+ divided by the
    kernel's integral over R^d, the d-ball volume times h^d times 2 / (d + 2). -inf outside every kernel."""
    from math import gamma, pi

    d = train.shape[1]
    norm = pi ** (d / 2) / gamma(d / 2 + 1) * h**d * 2 / (d + 2)
    sq = ((x[:, None, :] - train[None, :, :]) ** 2).sum(-1)  # (n_x, n_train)
    with np.errstate(divide="ignore"):
        return np.log(np.clip(1 - sq / h**2, 0, None).mean(1) / norm)


def test_pca_reduces_only_spaces_wider_than_ten():
    rng = np.random.default_rng(0)
    assert fit_pca(rng.normal(size=(30, 10)), 0) == {}
    x = rng.normal(size=(30, 10)).astype(np.float32)
    same = apply_pca({}, x)
    assert same.dtype == np.float64 and np.array_equal(same, x.astype(np.float64))
    wide = rng.normal(size=(40, 11)) * np.arange(1, 12)
    pca = fit_pca(wide, 0)
    z = apply_pca(pca, wide)
    assert z.shape == (40, 10) and pca["pca_components"].shape == (10, 11)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0, ddof=1), 1, rtol=1e-9)  # whitened: unit variance on train


def test_cosine_of_a_zero_vector_is_zero_not_nan():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    out = METHODS["cosine_mean"].score({"train_mean": np.array([2.0, 0.0])}, x, np.zeros(3, dtype=bool))
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0, 1 / np.sqrt(2)])


def test_fractional_mean_is_the_half_power_distance():
    out = FractionalMean().score({"train_mean": np.array([1.0, 1.0])}, np.array([[5.0, 2.0], [1.0, 1.0]]), None)
    np.testing.assert_allclose(out[:, 0], [(2 + 1) ** 2, 0.0])
    assert METHODS["fractional_mean"].fit(np.array([[0.0, 2.0], [2.0, 4.0]]), SPACE, 0)["train_mean"].tolist() == [
        1.0,
        3.0,
    ]


def test_cosine_threshold_counts_other_training_videos_across_blocks():
    """More rows than one 2048-row block; a training video never counts itself; the threshold is inclusive."""
    rng = np.random.default_rng(1)
    train = np.abs(rng.normal(size=(30, 3)))
    x = np.concatenate([np.abs(rng.normal(size=(2100, 3))), train])
    is_train = np.r_[np.zeros(2100, dtype=bool), np.ones(30, dtype=bool)]
    method = CosineThreshold(0.9)
    out = method.score(method.fit(train, SPACE, 0), x, is_train)[:, 0]
    sims = _unit(x) @ _unit(train).T
    expected = ((sims >= 0.9).sum(1) - is_train) / (30 - is_train)
    np.testing.assert_allclose(out, expected)
    exact = CosineThreshold(1.0).score({"train": np.array([[1.0, 0.0]])}, np.array([[2.0, 0.0]]), np.array([False]))
    assert exact[0, 0] == 1.0  # a cosine of exactly t counts


def test_kde_subsamples_large_training_sets_and_floors_empty_densities(monkeypatch):
    monkeypatch.setattr(sim, "KDE_MAX_TRAIN", 40)
    rng = np.random.default_rng(2)
    train = rng.normal(size=(60, 2))
    arrays = KDE().fit(train, SPACE, seed=0)
    kept = arrays["train"]
    assert kept.shape == (40, 2)
    rows = [int(np.flatnonzero((train == r).all(1))[0]) for r in kept]
    assert rows == sorted(rows) and len(set(rows)) == 40  # a seeded subset, in the original order
    bandwidth = float(arrays["bandwidth"][0])
    assert np.isclose(np.logspace(-2, 2, 100), bandwidth).any()  # one of the grid's values
    logp = epanechnikov_logp(kept, kept, bandwidth)
    assert arrays["train_logp_min"][0] == pytest.approx(logp.min(), rel=1e-9)
    probe = kept[:1] + bandwidth / 2  # inside some kernels: a finite density below the train videos' own
    far = np.array([[1e6, 1e6], [2e6, 0.0]])
    out = KDE().score(arrays, np.concatenate([probe, far]), np.zeros(3, dtype=bool))[:, 0]
    own = epanechnikov_logp(kept, probe, bandwidth)[0]
    assert np.isfinite(own) and out[0] == pytest.approx(-own, rel=1e-9)
    assert out[1] == out[2] == pytest.approx(-(min(logp.min(), own) - 1.0))  # one nat below the lowest finite
    lower = {**arrays, "train_logp_min": np.array([-50.0])}
    assert KDE().score(lower, far, np.zeros(2, dtype=bool))[0, 0] == pytest.approx(51.0)


def test_dbscan_warns_when_it_finds_no_structure(monkeypatch, capsys):
    train = np.random.default_rng(3).normal(size=(20, 2))
    monkeypatch.setattr(sim.tsne, "embed", lambda x, seed, **kw: x)
    arrays = DBSCANClusters().fit(train, Space("hrnet", "s", "f", eps=1e-6, command=""), 0)
    assert arrays["train_labels"].tolist() == [-1] * 20 and arrays["n_columns"].tolist() == [1]
    assert capsys.readouterr().out == (
        "warning: DBSCAN (eps 1e-06) found no cluster (every train video is noise) in the hrnet space of 20 train "
        "videos: its dbscan feature is one constant column; kde and cosine_* still work\n"
    )
    arrays = DBSCANClusters().fit(train, Space("csn", "s", "f", eps=1e6, command=""), 0)
    assert arrays["train_labels"].tolist() == [0] * 20 and "classes" not in arrays
    assert "found a single cluster and no noise in the csn space of 20" in capsys.readouterr().out
    onehot = DBSCANClusters().score(arrays, np.zeros((3, 2)), np.zeros(3, dtype=bool))
    assert onehot.tolist() == [[1.0, 0.0]] * 3  # a new video joins the only cluster


def test_dbscan_train_videos_keep_their_clusters_and_new_ones_are_classified(monkeypatch):
    rng = np.random.default_rng(4)
    train = np.concatenate([rng.normal(c, 0.1, size=(15, 2)) for c in (0.0, 5.0)] + [np.array([[20.0, 20.0]])])
    monkeypatch.setattr(sim.tsne, "embed", lambda x, seed, **kw: x)
    arrays = DBSCANClusters().fit(train, Space("s", "s", "f", eps=1.0, command=""), 0)
    labels = arrays["train_labels"]
    assert sorted(set(labels.tolist())) == [-1, 0, 1] and labels[-1] == -1 and arrays["n_columns"].tolist() == [3]
    onehot = DBSCANClusters().score(arrays, train, np.ones(len(train), dtype=bool))
    assert onehot[-1].tolist() == [0.0, 0.0, 1.0]  # the noise video, in the last column, as DBSCAN said
    np.testing.assert_array_equal(onehot[:30].argmax(1), labels[:30])
    new = DBSCANClusters().score(arrays, np.array([[0.05, 0.0], [5.0, 5.1]]), np.zeros(2, dtype=bool))
    assert new.argmax(1).tolist() == [labels[0], labels[15]]


# --------------------------------------------------------------------------- the store


@pytest.fixture
def corpus(tmp_path):
    data_dir = tmp_path / "data"
    write_memento(data_dir / "Memento10k", {"train": 10, "val": 4, "test": 0})
    records = load_records("Memento10k", GenConfig(data_dir=str(data_dir)))
    x = np.abs(np.random.default_rng(5).normal(size=(len(records), 4)))
    store = FeatureStore.at(data_dir / "features", "Memento10k", "hrnet_f1")
    store.write(StoredFeatures([r.id for r in records], {"hrnet": x}, META))
    return data_dir, records


def _cfg(data_dir, **kw):
    base = {"data_dir": str(data_dir), "dataset": "Memento10k", "similarity_methods": ["cosine_mean"]}
    return GenConfig(**(base | kw))


def test_a_space_is_written_with_its_fitted_state_and_meta(corpus, capsys):
    data_dir, records = corpus
    written = compute_similarity(_cfg(data_dir), records, [SPACE], seed=4)
    path = data_dir / "features" / "Memento10k" / "similarity_hrnet_f1.h5"
    assert written == [str(path)]
    assert capsys.readouterr().out == f"similarity in hrnet space (hrnet_f1): {{'cosine_mean': 1}} -> {path}\n"
    stored = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1").read()
    assert stored.meta["family"] == "similarity" and stored.meta["dataset"] == "Memento10k"
    assert stored.meta["settings"] == {"source": "hrnet_f1", "source_settings": {"frames": 1}, "seed": 4}
    assert stored.meta["smoke"] is False
    info = stored.transforms["cosine_mean"].info
    assert info == {"space": "hrnet", "seed": 4, "fitted_on": "train", "n_train": 10}
    assert stored.features["cosine_mean"].dtype == np.float32 and stored.meta["code_version"] == code_version()
    compute_similarity(_cfg(data_dir, similarity_methods=["fractional_mean"]), records, [SPACE], seed=4)
    both = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1").read()
    assert set(both.features) == set(both.transforms) == {"cosine_mean", "fractional_mean"}  # fitted earlier: kept


def test_a_corpus_without_a_train_split_is_fitted_on_all_its_videos(corpus):
    """A folder of your own videos has no train split: it is its own corpus, exactly as if every video were train."""
    data_dir, records = corpus
    unscored = [dataclasses.replace(r, split="test", score=None) for r in records]
    compute_similarity(_cfg(data_dir, similarity_methods=["cosine_mean", "fractional_mean"]), unscored, [SPACE])
    store = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1")
    own = store.read()
    assert own.transforms["cosine_mean"].info["fitted_on"] == "all videos (no train split)"
    assert own.transforms["cosine_mean"].info["n_train"] == len(records) == 14
    all_train = [dataclasses.replace(r, split="train") for r in records]
    store.path.unlink()
    compute_similarity(_cfg(data_dir, similarity_methods=["cosine_mean", "fractional_mean"]), all_train, [SPACE])
    for method in ("cosine_mean", "fractional_mean"):
        np.testing.assert_array_equal(own.features[method], store.read().features[method])


def test_too_few_train_videos_and_missing_sources_are_refused(corpus, tmp_path):
    data_dir, records = corpus
    compute_similarity(_cfg(data_dir), records, [SPACE])  # 10 train videos: enough
    nine = [r for r in records if r.id != next(r.id for r in records if r.split == "train")]
    store = FeatureStore.at(data_dir / "features", "Memento10k", "hrnet_f1")
    x = store.read().features["hrnet"]
    store.write(StoredFeatures([r.id for r in nine], {"hrnet": x[: len(nine)]}, META))
    with pytest.raises(ConfigError) as err:
        compute_similarity(_cfg(data_dir), records, [SPACE])
    assert str(err.value) == "hrnet_f1 holds only 9 train videos; extract the train split"
    with pytest.raises(FileNotFoundError) as err:
        compute_similarity(_cfg(data_dir), records, [Space("csn", "ip_csn_152", "csn", 1.0, "make it")])
    assert str(err.value) == (
        f"similarity in the csn space needs {data_dir / 'features' / 'Memento10k' / 'ip_csn_152.h5'}; compute it "
        "first with make it"
    )


def test_fit_on_refuses_a_missing_store_or_method(corpus):
    data_dir, records = corpus
    cfg = _cfg(data_dir, fit_on="VideoMem")
    with pytest.raises(FileNotFoundError) as err:
        compute_similarity(cfg, records, [SPACE])
    missing = data_dir / "features" / "VideoMem" / "similarity_hrnet_f1.h5"
    assert str(err.value) == f"--fit_on VideoMem: {missing} does not exist; compute it first"
    compute_similarity(_cfg(data_dir), records, [SPACE])
    cfg = GenConfig(data_dir=str(data_dir), dataset="Memento10k", similarity_methods=["kde", "fractional_mean"],
                    fit_on="Memento10k")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        compute_similarity(cfg, records, [SPACE])
    fitted = data_dir / "features" / "Memento10k" / "similarity_hrnet_f1.h5"
    assert str(err.value) == f"{fitted} has no fitted kde, fractional_mean; compute them on Memento10k"


def test_kde_bandwidth_is_a_seeded_5_fold_search_over_100_log_spaced_values():
    """The reference's search: GridSearchCV over np.logspace(-2, 2, 100), 5 shuffled folds; its warnings (too small
    a bandwidth scores -inf on held-out folds) are kept out of the user's output."""
    import warnings

    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    for data_seed in (0, 4):  # heavy-tailed corpora whose best bandwidth moves with the folds (5 vs 6, the shuffle)
        train = np.random.default_rng(data_seed).standard_t(2, size=(30, 2))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arrays = KDE().fit(train, SPACE, seed=7)
        grid = GridSearchCV(KernelDensity(kernel="epanechnikov"), {"bandwidth": np.logspace(-2, 2, 100)},
                            cv=KFold(5, shuffle=True, random_state=7))  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grid.fit(train)
        assert arrays["bandwidth"].tolist() == [grid.best_params_["bandwidth"]]
        assert np.array_equal(arrays["train"], train)  # 30 videos: all kept


def test_cosine_threshold_covers_every_block_of_a_large_corpus():
    rng = np.random.default_rng(8)
    train, x = np.abs(rng.normal(size=(5, 3))), np.abs(rng.normal(size=(4200, 3)))  # three 2048-row blocks
    out = CosineThreshold(0.95).score({"train": train}, x, np.zeros(len(x), dtype=bool))[:, 0]
    np.testing.assert_allclose(out, ((_unit(x) @ _unit(train).T) >= 0.95).mean(1))


def test_kde_subsample_is_seeded(monkeypatch):
    monkeypatch.setattr(sim, "KDE_MAX_TRAIN", 40)
    train = np.random.default_rng(2).normal(size=(60, 2))
    first, again = KDE().fit(train, SPACE, seed=3)["train"], KDE().fit(train, SPACE, seed=3)["train"]
    assert np.array_equal(first, again)


def test_dbscan_uses_its_seed_min_samples_5_and_a_classifier_for_two_labels(monkeypatch):
    seeds = []
    monkeypatch.setattr(sim.tsne, "embed", lambda x, seed, **kw: (seeds.append(seed), x)[1])
    rng = np.random.default_rng(9)
    five, six = rng.normal(0, 0.01, size=(5, 2)), rng.normal(10, 0.01, size=(6, 2))
    arrays = DBSCANClusters().fit(np.concatenate([five, six]), Space("s", "s", "f", eps=1.0, command=""), 11)
    assert seeds == [11] and arrays["train_labels"].tolist() == [0] * 5 + [1] * 6  # 5 points are a cluster
    assert "classes" in arrays  # two labels, no noise: new videos still need the classifier
    new = DBSCANClusters().score(arrays, np.array([[0.0, 0.0], [10.0, 10.0]]), np.zeros(2, dtype=bool))
    assert new.argmax(1).tolist() == [0, 1]


def test_the_stored_classifier_is_applied_as_written():
    """One relu layer then the output layer; argmax over several outputs, the sign of one output (the 2-class stores
    scikit-learn's MLPClassifier wrote)."""
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.25, 0.0]])
    layer = {"w0": np.eye(2), "b0": np.zeros(2), "train_labels": np.array([0])}
    multi = layer | {"w1": np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]), "b1": np.array([0.0, 1.0, 0.0]),
                     "classes": np.array([-1, 4, 7])}  # fmt: skip
    assert DBSCANClusters.predict(multi, x).tolist() == [-1, 7, 4, 4]
    binary = layer | {"w1": np.array([[2.0], [-1.0]]), "b1": np.array([-1.0]), "classes": np.array([-1, 3])}
    assert DBSCANClusters.predict(binary, x).tolist() == [3, -1, -1, -1]  # logits 1, -2, -1, -0.5
    binary["b1"] = np.array([-0.5])
    assert DBSCANClusters.predict(binary, x).tolist() == [3, -1, -1, -1]  # logits 1.5, -1.5, -0.5, 0 (not > 0)


def test_the_similarity_store_inherits_smoke_and_settings_from_its_source(corpus):
    data_dir, records = corpus
    store = FeatureStore.at(data_dir / "features", "Memento10k", "hrnet_f1")
    x = store.read().features["hrnet"]
    out = FeatureStore.at(data_dir / "features", "Memento10k", "similarity_hrnet_f1")
    for meta, smoke, settings in (({"smoke": True, "settings": {"frames": 1}}, True, {"frames": 1}),
                                  ({"family": "hrnet"}, False, {})):  # fmt: skip
        store.write(StoredFeatures([r.id for r in records], {"hrnet": x}, meta))
        compute_similarity(_cfg(data_dir), records, [SPACE])
        assert (out.read().meta["smoke"], out.read().meta["settings"]["source_settings"]) == (smoke, settings)
