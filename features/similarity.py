"""The similarity tier: how much a video stands out from the training corpus, in another feature's space.

``python gen_features.py --dataset D --features similarity --similarity_features hrnet ip_csn_152
--similarity_methods dbscan kde`` reads the stores of those feature spaces (which store a space is, and its DBSCAN
eps, the tier that offers it says: ``tiers/similarity.py`` resolves them), fits every method on the *train* split
only, scores every video (train, val, test) and writes the store ``similarity_<space>.h5``: one feature per method,
plus the fitted state of each method as a transform (plain arrays + JSON), so new videos can be scored later.

Shared first step: when the space has more than 10 dimensions, PCA to 10 whitened components fitted on train --
except for the cosine methods: PCA centres the data on the train mean, which makes the cosine to that mean
undefined (the mean is the zero vector) and every cosine a comparison of directions around the centre; they use the
original space instead, where pooled backbone features are non-negative and cosines are meaningful.
Each method is one class in ``METHODS``: ``fit(train) -> Transform`` and ``score(transform, x, is_train) -> (N, d)``.
Everything random is seeded (the reference seeded nothing).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.io import ConfigError, code_version
from features import label_mlp, tsne
from features.base import fitting_videos
from features.store import FeatureStore, StoredFeatures, Transform

PCA_DIM = 10
# The reference's t-SNE settings (scikit-learn 0.24 defaults; random initialisation, see features/tsne.py). The
# embedding's scale depends on the number of videos and the learning rate, and eps above is tuned for corpora of
# thousands of videos.
TSNE_PARAMS = {"perplexity": 30.0, "learning_rate": 200.0, "max_iter": 1000}
KDE_MAX_TRAIN = 10_000


@dataclass(frozen=True)
class Space:
    """A feature space similarity is computed in, as the tier that offers it resolves it (``tiers``)."""

    name: str  # hrnet, ip_csn_152, ...
    store: str  # the store holding its features
    feature: str
    eps: float  # DBSCAN eps for this space (the reference's, per backbone family)
    command: str  # the gen_features.py command that makes ``store``

    @property
    def out_store(self) -> str:
        return f"similarity_{self.store}"


# --------------------------------------------------------------------------- shared PCA


def fit_pca(train: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Whitened PCA to 10 components (identity when the space is already small)."""
    if train.shape[1] <= PCA_DIM:
        return {}
    from sklearn.decomposition import PCA  # lazy: see KDE.fit

    pca = PCA(n_components=PCA_DIM, whiten=True, random_state=seed).fit(train)
    return {"pca_mean": pca.mean_, "pca_components": pca.components_, "pca_scale": np.sqrt(pca.explained_variance_)}


def apply_pca(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    if "pca_components" not in arrays:
        return x.astype(np.float64)
    return (x - arrays["pca_mean"]) @ arrays["pca_components"].T / arrays["pca_scale"]


# --------------------------------------------------------------------------- methods


class Method(ABC):
    """A similarity method: fitted on train vectors (already PCA-reduced), then scores any vectors.

    ``is_train`` marks the rows that are the training videos themselves, in fitting order (a method may use its
    fitted labels for them, or leave them out of their own statistics)."""

    uses_pca = True  # False: works in the original space (see the module docstring)

    def fit(self, train: np.ndarray, space: Space, seed: int) -> dict[str, np.ndarray]:
        return {"train_mean": train.mean(axis=0)}

    @abstractmethod
    def score(self, arrays: dict[str, np.ndarray], x: np.ndarray, is_train: np.ndarray) -> np.ndarray:
        """(N, d) scores of the rows of ``x``."""


def _cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, M) cosine similarities."""
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    yn = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return xn @ yn.T


class CosineMean(Method):
    uses_pca = False

    def score(self, arrays, x, is_train):
        return _cosine(x, arrays["train_mean"][None])  # (N, 1)


class FractionalMean(Method):
    """Fractional (p = 0.5) distance to the mean training vector: (sum |x - m|^p)^(1/p)."""

    p = 0.5

    def score(self, arrays, x, is_train):
        return (np.abs(x - arrays["train_mean"]) ** self.p).sum(axis=1, keepdims=True) ** (1 / self.p)


class CosineThreshold(Method):
    """Fraction of *training* videos with cosine similarity >= t. A training video does not count itself."""

    uses_pca = False

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def fit(self, train, space, seed):
        return {"train": train}

    def score(self, arrays, x, is_train):
        train = arrays["train"]
        out = np.empty((len(x), 1))
        for start in range(0, len(x), 2048):  # blocks keep the (block, N_train) matrix small
            sims = _cosine(x[start : start + 2048], train)
            out[start : start + 2048, 0] = (sims >= self.threshold).sum(axis=1)
        own = is_train.astype(np.float64)  # a training video's similarity to itself is 1 >= t
        return (out - own[:, None]) / (len(train) - own[:, None])


class KDE(Method):
    """Minus the log-density of an Epanechnikov KDE fitted on train (bandwidth: 5-fold grid search, 100 values)."""

    def fit(self, train, space, seed):
        # scikit-learn's estimators are imported where they are used: deliberately lazy, they add about a second
        # to the start of every script (config.py imports this module through the tier registry)
        from sklearn.model_selection import GridSearchCV, KFold
        from sklearn.neighbors import KernelDensity

        rng = np.random.default_rng(seed)
        if len(train) > KDE_MAX_TRAIN:
            train = train[np.sort(rng.choice(len(train), KDE_MAX_TRAIN, replace=False))]
        grid = GridSearchCV(
            KernelDensity(kernel="epanechnikov"),
            {"bandwidth": np.logspace(-2, 2, 100)},
            cv=KFold(5, shuffle=True, random_state=seed),
        )
        with warnings.catch_warnings():  # compact kernels: too small a bandwidth scores -inf on held-out folds
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            grid.fit(train)
        bandwidth = grid.best_params_["bandwidth"]
        logp = KernelDensity(kernel="epanechnikov", bandwidth=bandwidth).fit(train).score_samples(train)
        return {"train": train, "bandwidth": np.array([bandwidth]), "train_logp_min": np.array([logp.min()])}

    def score(self, arrays, x, is_train):
        from sklearn.neighbors import KernelDensity  # lazy: see KDE.fit

        kde = KernelDensity(kernel="epanechnikov", bandwidth=float(arrays["bandwidth"][0])).fit(arrays["train"])
        logp = kde.score_samples(x)
        # Outside every kernel's support the density is 0 (log -inf): such a video gets a log-density one nat below
        # the lowest finite one seen (in training or in this batch), so it ranks as the most distinctive, finitely.
        floor = min(float(arrays["train_logp_min"][0]), np.min(logp[np.isfinite(logp)], initial=np.inf)) - 1.0
        return -np.where(np.isfinite(logp), logp, floor)[:, None]


class DBSCANClusters(Method):
    """t-SNE (3-d) of the train features, DBSCAN on it, an MLP classifier from features to cluster labels for
    non-train videos, then a one-hot of the cluster: one column per cluster plus one for noise (label -1)."""

    def fit(self, train, space, seed):
        from sklearn.cluster import DBSCAN  # lazy: see KDE.fit

        labels = DBSCAN(eps=space.eps, min_samples=5).fit_predict(tsne.embed(train, seed, **TSNE_PARAMS))
        n_clusters = int(labels.max()) + 1
        arrays = {"train_labels": labels, "n_columns": np.array([n_clusters + 1])}
        if len(np.unique(labels)) == 1:  # one constant column: the feature says nothing, which must not go unnoticed
            found = "no cluster (every train video is noise)" if n_clusters == 0 else "a single cluster and no noise"
            print(f"warning: DBSCAN (eps {space.eps}) found {found} in the {space.name} space of {len(train)} "
                  "train videos: its dbscan feature is one constant column; kde and cosine_* still work")  # fmt: skip
        if len(np.unique(labels)) > 1:
            arrays |= label_mlp.fit(train, labels, seed)
        return arrays

    @staticmethod
    def predict(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        """The classifier's labels, computed from its stored weights (relu hidden layer, argmax output)."""
        if "classes" not in arrays:
            return np.full(len(x), arrays["train_labels"][0])
        logits = np.maximum(x @ arrays["w0"] + arrays["b0"], 0) @ arrays["w1"] + arrays["b1"]
        if logits.shape[1] == 1:  # stores fitted by scikit-learn's MLPClassifier: one logistic output for 2 labels
            return arrays["classes"][(logits[:, 0] > 0).astype(int)]
        return arrays["classes"][logits.argmax(axis=1)]

    def score(self, arrays, x, is_train):
        labels = self.predict(arrays, x)
        if is_train.sum() == len(arrays["train_labels"]):  # the training videos keep their DBSCAN cluster
            labels[is_train] = arrays["train_labels"]
        n = int(arrays["n_columns"][0])
        onehot = np.zeros((len(x), n))
        onehot[np.arange(len(x)), np.where(labels < 0, n - 1, labels)] = 1.0  # noise gets its own last column
        return onehot


METHODS: dict[str, Method] = {
    "dbscan": DBSCANClusters(),
    "kde": KDE(),
    "cosine_mean": CosineMean(),
    "cosine_threshold0.4": CosineThreshold(0.4),
    "cosine_threshold0.5": CosineThreshold(0.5),
    "cosine_threshold0.7": CosineThreshold(0.7),
    "fractional_mean": FractionalMean(),
}


# --------------------------------------------------------------------------- store


def compute_similarity(cfg: Any, records: list, spaces: list[Space], seed: int = 0) -> list[str]:
    """Fit and score every (space, method) of ``cfg`` (``similarity_methods``) over ``records``; returns the paths of
    the stores written.

    With ``cfg.fit_on`` (another dataset, e.g. to score your own videos), nothing is fitted: the fitted state stored
    by that dataset's similarity stores scores this dataset's videos, as its validation videos were scored. Without
    it, a dataset with no train split (a folder) is fitted on all its own videos (``fitting_videos``)."""
    fitting = fitting_videos(records)
    train_ids = {r.id for r in fitting}
    fitted_on = "train" if any(r.split == "train" for r in fitting) else "all videos (no train split)"
    written = []
    for space in spaces:
        data = _read_space(cfg, space)
        x = data.features[space.feature].astype(np.float64)
        out = FeatureStore.at(cfg.resolved_features_dir(), cfg.dataset, space.out_store)
        if cfg.fit_on:
            feats, transforms, meta = _score_fitted_elsewhere(cfg, x, out)
        else:
            feats, transforms, meta = _fit_space(cfg, data, x, out, (train_ids, fitted_on), space, seed)
        # videos whose source features failed fail here too, with the same reason (training then leaves them out)
        out.write(StoredFeatures(data.ids, feats, meta, dict(data.failures), transforms))
        dims = {m: feats[m].shape[1] for m in cfg.similarity_methods}
        print(f"similarity in {space.name} space ({space.store}): {dims} -> {out.path}")
        written.append(str(out.path))
    return written


def _score_fitted_elsewhere(cfg: Any, x: np.ndarray, out: FeatureStore):
    """``--fit_on D``: score every row with the state D's store of the same name holds (none is a train video)."""
    fitted = FeatureStore.at(cfg.resolved_features_dir(), cfg.fit_on, out.path.stem)
    if not fitted.exists():
        raise FileNotFoundError(f"--fit_on {cfg.fit_on}: {fitted.path} does not exist; compute it first")
    stored = fitted.read()
    missing = [m for m in cfg.similarity_methods if m not in stored.transforms]
    if missing:
        raise ConfigError(f"{fitted.path} has no fitted {', '.join(missing)}; compute them on {cfg.fit_on}")
    feats, transforms = {}, {m: stored.transforms[m] for m in cfg.similarity_methods}
    not_train = np.zeros(len(x), dtype=bool)
    for method, t in transforms.items():
        m = METHODS[method]
        feats[method] = m.score(t.arrays, apply_pca(t.arrays, x) if m.uses_pca else x, not_train)
    return feats, transforms, stored.meta | {"dataset": cfg.dataset, "fit_on": cfg.fit_on}


def _read_space(cfg: Any, space: Space) -> StoredFeatures:
    source = FeatureStore.at(cfg.resolved_features_dir(), cfg.dataset, space.store)
    if not source.exists():
        raise FileNotFoundError(
            f"similarity in the {space.name} space needs {source.path}; compute it first with {space.command}"
        )
    return source.read()


def _fit_space(cfg, data, x, out, fitting, space, seed):
    """Fit every method of ``cfg`` on the rows of one space ``fitting`` = (ids, label) names (the train split);
    keep methods fitted earlier on the same rows."""
    train_ids, fitted_on = fitting
    is_train = np.array([i in train_ids for i in data.ids])
    if is_train.sum() < 10:
        what = (
            "train videos; extract the train split"
            if fitted_on == "train"
            else (
                "videos; similarity is fitted on at least 10 (or pass --fit_on DATASET to use a training dataset's fit)"
            )
        )
        raise ConfigError(f"{space.store} holds only {int(is_train.sum())} {what}")
    pca = fit_pca(x[is_train], seed)
    z = apply_pca(pca, x)  # (N, 10)
    settings = {"source": space.store, "source_settings": data.meta.get("settings", {}), "seed": seed}
    smoke = bool(data.meta.get("smoke", False))
    previous = out.read() if out.exists() else None
    # methods fitted earlier are kept only if they were fitted on these very features (same videos, same settings)
    same = previous and previous.ids == data.ids and previous.meta.get("settings") == settings
    same = same and previous.meta.get("smoke") == smoke
    feats = dict(previous.features) if same else {}
    transforms = dict(previous.transforms) if same else {}
    for method in cfg.similarity_methods:
        m = METHODS[method]
        space_x, reduce = (z, pca) if m.uses_pca else (x, {})
        arrays = m.fit(space_x[is_train], space, seed)
        feats[method] = m.score(arrays, space_x, is_train).astype(np.float32)
        info = {"space": space.name, "seed": seed, "fitted_on": fitted_on, "n_train": int(is_train.sum())}
        transforms[method] = Transform(reduce | arrays, info)
    meta = {"family": "similarity", "dataset": cfg.dataset, "smoke": smoke, "settings": settings,
            "code_version": code_version()}  # fmt: skip
    return feats, transforms, meta
