"""How long the similarity tier's fit takes on a Memento10k-sized corpus, and where the time goes.

    python bench/similarity_speed.py                  # 7000 train + 1500 val videos, 720-d and 2048-d spaces
    python bench/similarity_speed.py --n_train 2000   # quicker

For each space (synthetic, clustered like pooled backbone features) it times the whole fit of the default methods
(``dbscan``: shared PCA, 3-d t-SNE, DBSCAN, the label classifier; scored on train + val) through
``features.similarity``, then the two costly steps alone against the libraries: t-SNE (ours, exact,
``features/tsne.py``) vs scikit-learn's Barnes-Hut (what the reference ran, and m3s before) and openTSNE's (3-d: its
FFT method is 1-/2-d only) when that package is installed; the label classifier (``features/label_mlp.py``) vs
scikit-learn's ``MLPClassifier``. Compare the figures within one run: shared machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from features import label_mlp, tsne
from features.similarity import METHODS, TSNE_PARAMS, Space, apply_pca, fit_pca


def corpus(n_train: int, n_val: int, dim: int, seed: int = 0) -> np.ndarray:
    """Non-negative vectors around 12 scene centres with Zipf-like shares (train rows first)."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(2.0, 1.0, size=(12, dim))
    shares = 1 / np.arange(1, 13)
    labels = rng.choice(12, size=n_train + n_val, p=shares / shares.sum())
    return np.abs(centres[labels] + rng.normal(0, 0.6, size=(n_train + n_val, dim))).astype(np.float64)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def compare(train: np.ndarray, space: Space) -> None:
    """The two costly steps of ``dbscan`` alone, ours against the libraries' on the same inputs."""
    from sklearn.cluster import DBSCAN
    from sklearn.manifold import TSNE
    from sklearn.neural_network import MLPClassifier

    t_ours, emb = timed(tsne.embed, train, 0, **TSNE_PARAMS)
    t_sk, _ = timed(TSNE(3, random_state=0, init="random", **TSNE_PARAMS).fit_transform, train)
    line = f"{space.name} t-SNE alone (3-d, {len(train)} x {train.shape[1]}): ours (exact) {t_ours:.1f} s, "
    line += f"scikit-learn (Barnes-Hut) {t_sk:.1f} s: {t_sk / t_ours:.1f}x"
    try:
        import openTSNE
    except ImportError:
        line += "; openTSNE not installed"
    else:
        embedder = openTSNE.TSNE(
            n_components=3, perplexity=30, learning_rate=200, n_iter=750, negative_gradient_method="bh",
            initialization="random", random_state=0, n_jobs=os.cpu_count(),
        )  # fmt: skip
        t_open, _ = timed(embedder.fit, train)
        line += f"; openTSNE (Barnes-Hut, 750 iterations) {t_open:.1f} s: {t_open / t_ours:.1f}x"
    print(line)
    labels = DBSCAN(eps=space.eps, min_samples=5).fit_predict(emb)
    t_ours, _ = timed(label_mlp.fit, train, labels, 0)
    clf = MLPClassifier((100,), alpha=1e-4, max_iter=500, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it rarely converges within 500 epochs over hundreds of clusters
        t_sk, _ = timed(clf.fit, train, labels)
    print(f"{space.name} label classifier alone ({int(labels.max()) + 1} clusters): ours {t_ours:.1f} s, "
          f"scikit-learn MLPClassifier {t_sk:.1f} s: {t_sk / t_ours:.1f}x")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_train", type=int, default=7000)
    p.add_argument("--n_val", type=int, default=1500)
    p.add_argument("--dims", type=int, nargs="+", default=[720, 2048])
    p.add_argument("--methods", nargs="+", default=["dbscan"])
    p.add_argument("--no-compare", dest="compare", action="store_false",
                   help="skip timing t-SNE and the classifier alone against scikit-learn / openTSNE")  # fmt: skip
    args = p.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.n_train} train + {args.n_val} val")
    total = 0.0
    for dim in args.dims:
        x = corpus(args.n_train, args.n_val, dim)
        is_train = np.arange(len(x)) < args.n_train
        space = Space(f"{dim}-d", "store", "f", eps=1.25 if dim == 720 else 0.9, command="")
        t_pca, pca = timed(fit_pca, x[is_train], 0)
        z = apply_pca(pca, x)
        for name in args.methods:
            method = METHODS[name]
            fit_x = z if method.uses_pca else x
            t_fit, arrays = timed(method.fit, fit_x[is_train], space, 0)
            t_score, scores = timed(method.score, arrays, fit_x, is_train)
            total += t_pca + t_fit + t_score
            print(f"{dim}-d {name}: PCA {t_pca:.1f} s, fit {t_fit:.1f} s, score {t_score:.2f} s; "
                  f"{scores.shape[1]} columns")  # fmt: skip
        if args.compare:
            compare(z[is_train], space)
    print(f"whole fit of {', '.join(args.methods)} in {len(args.dims)} spaces: {total:.1f} s (target < 60 s)")


if __name__ == "__main__":
    main()
