"""Evaluation metrics: Spearman (primary), Kendall, MSE, MAE, and divergences of the score distributions."""

from __future__ import annotations

import numpy as np
from scipy import stats

HIST_BINS = 64


def histogram(scores: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Probability histogram of scores over [0, 1] in ``bins`` equal bins."""
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return counts / max(counts.sum(), 1)


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-10) -> float:
    """KL(p || q) of two histograms, with ``eps`` added to every bin so empty bins do not give infinity."""
    p, q = p + eps, q + eps
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log, in [0, ln 2])."""
    m = (p + q) / 2
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


def compute_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """All metrics of predictions against ground truth. The divergences compare the 64-bin histograms of
    the two score distributions (truth || prediction), not the raw vectors as the reference did."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    h_pred, h_true = histogram(pred), histogram(true)
    constant = np.ptp(pred) == 0 or np.ptp(true) == 0  # rank correlations are undefined
    return {
        "spearman": 0.0 if constant else float(stats.spearmanr(pred, true).statistic),
        "kendall": 0.0 if constant else float(stats.kendalltau(pred, true).statistic),
        "mse": float(np.mean((pred - true) ** 2)),
        "mae": float(np.mean(np.abs(pred - true))),
        "kl": kl_divergence(h_true, h_pred),
        "js": js_divergence(h_true, h_pred),
    }


PAIRED_RESAMPLES = 1000  # resamples of the val videos for a paired difference's confidence interval


def spearman_rows(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of ``pred`` against the same row of ``true`` (both (R, n)), as the Pearson
    correlation of average ranks; 0 where either is constant."""
    a, b = stats.rankdata(pred, axis=1), stats.rankdata(true, axis=1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    denom = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.divide((a * b).sum(1), denom, out=np.zeros(len(a)), where=denom > 0)


def paired_difference(a: list[np.ndarray], b: list[np.ndarray], true: list[np.ndarray], seed: int = 0) -> dict:
    """Spearman of predictions ``a`` minus that of ``b`` on the same videos (one array per fold; the difference is
    the mean over folds), with a 95 % percentile interval from a paired bootstrap: each resample draws the videos of
    every fold with replacement and scores both models on the same draw. An interval that holds 0 says the two cannot
    be told apart on these videos."""
    rng = np.random.default_rng(seed)
    diff, boot = 0.0, np.zeros(PAIRED_RESAMPLES)
    for pa, pb, y in zip(a, b, true, strict=True):
        pa, pb, y = (np.asarray(v, dtype=np.float64) for v in (pa, pb, y))
        diff += (spearman_rows(pa[None], y[None]) - spearman_rows(pb[None], y[None]))[0] / len(a)
        rows = rng.integers(0, len(y), size=(PAIRED_RESAMPLES, len(y)))
        for i in range(0, PAIRED_RESAMPLES, 100):  # 100 resamples at a time: memory stays small for large val splits
            r = rows[i : i + 100]
            boot[i : i + 100] += (spearman_rows(pa[r], y[r]) - spearman_rows(pb[r], y[r])) / len(a)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"diff": float(diff), "ci95": [float(lo), float(hi)]}
