"""The kernel and linear heads' fitting: RBF-SVR and Ridge on standardised inputs, hyper-parameters chosen by
cross-validation on the train videos only (never on val).

Cheap by construction: the SVR's CV computes each fold's RBF kernel once per gamma and fits every (C, epsilon) on it
(``kernel="precomputed"``: libsvm evaluates no kernel itself), the (fold, gamma) cells run in parallel on the cores
this process may use. The SVR's (C, gamma, epsilon) minimise the mean CV squared error, as Ridge's leave-one-out does:
Spearman, the metric we report, is a noisy criterion on folds of a few hundred videos (on the TRECVid dev sets' 588
train videos its choice of C jumped from 0.001 to 3 between folds); ``bench/svr_selection.py`` measures the two rules
on held-out train folds (README, Baselines). The CV Spearman of the choice is reported beside. Ridge's alpha comes from
its efficient leave-one-out error (one SVD for every alpha). A choice on the edge of its grid widens the grid in that
direction (at most ``WIDEN`` times) and the row says so; fits of the same data are remembered (``fit_svr`` is called
for ``--baselines`` and for the ``stack`` head's member on the same table).
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache

import numpy as np
from scipy.linalg import LinAlgWarning

from model.metrics import spearman_rows

# scikit-learn and joblib are imported where they are used: config.py imports the head registry, and every script's
# start-up should not pay for them

# The SVR fits standardised scores (train mean 0, sd 1) and maps its predictions back: a user's scores on any scale
# (0-1, 0-100) get the same SVR, and libsvm's absolute stopping tolerance means the same on each. C and epsilon are
# in those units: on memorability scores (sd ~0.1) C = 1 is the old absolute 0.1, the old grid's edge (7 of 8 real sets)
SVR_C = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
SVR_GAMMA = (0.1, 0.3, 1.0, 3.0)  # x 1 / n_features (sklearn's 'scale' for standardised inputs is 1.0)
SVR_EPSILON = (0.1, 0.5)
RIDGE_ALPHA = tuple(np.logspace(-2, 5, 15))
SVR_FOLDS, SVR_MAX_CV = 3, 3000  # CV on at most this many train videos (the cost grows with n^2); refit on all
CRITERIA = ("mse", "spearman")  # the columns of a CV cell: minus the squared error, the Spearman
WIDEN = 2  # grid extensions past an edge choice, one factor-of-10 step each (C, gamma; alpha)


def spearman(pred: np.ndarray, true: np.ndarray) -> float:
    """Spearman's rho as the Pearson correlation of average ranks (0 for constant input)."""
    return float(spearman_rows(np.asarray(pred)[None], np.asarray(true)[None])[0])


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train mean and scale (1 where a column is constant), float64."""
    mean, scale = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
    return mean, np.where(scale > 0, scale, 1.0)


def rbf(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """(len(a), len(b)) ``exp(-gamma ||a_i - b_j||^2)``."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-gamma * np.maximum(d2, 0.0))


def _cv_cell(z, y, tr, te, gamma, cs, eps) -> np.ndarray:
    """Minus the squared error, and the Spearman, of every (C, epsilon) on one fold at one gamma:
    (len(cs), len(eps), 2)."""
    from sklearn.svm import SVR

    k_tr, k_te = rbf(z[tr], z[tr], gamma), rbf(z[te], z[tr], gamma)
    out = np.empty((len(cs), len(eps), 2))
    for i, c in enumerate(cs):
        for j, e in enumerate(eps):
            pred = SVR(kernel="precomputed", C=c, epsilon=e).fit(k_tr, y[tr]).predict(k_te)
            out[i, j] = -np.mean((pred - y[te]) ** 2), spearman(pred, y[te])
    return out


def _widened(grid: tuple, chosen: float) -> tuple | None:
    """The grid extended one factor-of-10 step past ``chosen`` when it is the grid's lowest or highest value."""
    if chosen == grid[0]:
        return (grid[0] / 10, *grid)
    if chosen == grid[-1]:
        return (*grid, grid[-1] * 10)
    return None


def _jobs() -> int:
    from core.device import available_cores

    return max(1, available_cores())


def _key(x: np.ndarray, y: np.ndarray, seed: int) -> str:
    h = hashlib.sha1(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return f"{h.hexdigest()}-{x.shape}-{seed}"


_DATA: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def fit_svr(x: np.ndarray, y: np.ndarray, seed: int = 0, criterion: str = "mse") -> dict:
    """RBF-SVR on standardised ``x`` and scores: ``{"mean", "scale", "support", "dual", "intercept", "gamma",
    "params", "edge", "widened"}``; ``support`` are standardised support vectors, ``dual`` and ``intercept`` predict
    in the scores' units; ``params`` C and epsilon are in the standardised scores' units. ``criterion``: the CV's
    least squared error (``mse``) or, to measure what that buys (``bench/svr_selection.py``), its best Spearman.
    Remembered per (data, seed, criterion)."""
    key = _key(x, y, seed)
    _DATA[key] = (x, y)  # read by a cache miss only; dropped either way
    try:
        return _fit_svr(key, seed, CRITERIA.index(criterion))
    finally:
        del _DATA[key]


def _score(z, y, folds, gammas, cs, scores: dict) -> None:
    """Fill ``scores[(C, gamma)]`` (per epsilon: mean over folds of minus the squared error, and of the Spearman) for
    every pair not yet scored."""
    from joblib import Parallel, delayed

    jobs = [
        (g, tr, te, new) for g in gammas for tr, te in folds if (new := tuple(c for c in cs if (c, g) not in scores))
    ]
    cells = Parallel(n_jobs=max(1, min(_jobs(), len(jobs))), prefer="threads")(
        delayed(_cv_cell)(z, y, tr, te, g / z.shape[1], new, SVR_EPSILON) for g, tr, te, new in jobs
    )
    acc: dict[tuple, list] = {}
    for (g, _, _, new), cell in zip(jobs, cells, strict=True):
        for i, c in enumerate(new):
            acc.setdefault((c, g), []).append(cell[i])
    scores |= {k: np.mean(v, axis=0) for k, v in acc.items()}


@lru_cache(maxsize=64)
def _fit_svr(key: str, seed: int, col: int) -> dict:
    from sklearn.model_selection import KFold
    from sklearn.svm import SVR

    x, y = _DATA[key]
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean, scale = standardise(x)
    z = (x - mean) / scale
    y_mean, y_sd = float(y.mean()), float(y.std() or 1.0)
    u = (y - y_mean) / y_sd
    rows = np.random.default_rng(seed).permutation(len(y))[:SVR_MAX_CV]
    folds = list(KFold(SVR_FOLDS, shuffle=True, random_state=seed).split(rows))
    cs, gammas, widened, scores = SVR_C, SVR_GAMMA, [], {}
    for step in range(WIDEN + 1):
        _score(z[rows], u[rows], folds, gammas, cs, scores)
        c, g = max(((c, g) for c in cs for g in gammas), key=lambda k: scores[k][:, col].max())
        wider_c, wider_g = _widened(cs, c), _widened(gammas, g)
        if step == WIDEN or (wider_c is None and wider_g is None):
            break
        widened += [n for n, w in (("C", wider_c), ("gamma", wider_g)) if w is not None]
        cs, gammas = wider_c or cs, wider_g or gammas
    j = int(np.argmax(scores[(c, g)][:, col]))
    e, (minus_mse, cv_spearman) = SVR_EPSILON[j], scores[(c, g)][j]
    edge = [n for n, v, grid in (("C", c, cs), ("gamma", g, gammas)) if v in (grid[0], grid[-1])]
    model = SVR(kernel="precomputed", C=c, epsilon=e).fit(rbf(z, z, g / z.shape[1]), u)
    return {
        "mean": mean, "scale": scale, "support": z[model.support_],
        "dual": y_sd * model.dual_coef_[0].astype(np.float64),
        "intercept": y_mean + y_sd * float(model.intercept_[0]), "gamma": g / z.shape[1],
        "params": {"C": c, "gamma": f"{g:g}/d", "epsilon": e, "cv_mse": float(f"{-minus_mse * y_sd**2:.4g}"),
                   "cv_spearman": round(float(cv_spearman), 4), "score_sd": float(f"{y_sd:.4g}")},
        "edge": edge, "widened": widened,
    }  # fmt: skip


def fit_ridge(x: np.ndarray, y: np.ndarray) -> dict:
    """Ridge on standardised ``x``, alpha by efficient leave-one-out: ``{"mean", "scale", "coef", "intercept",
    "params", "edge", "widened", "linalg_warnings"}``."""
    from sklearn.linear_model import RidgeCV

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean, scale = standardise(x)
    z = (x - mean) / scale
    alphas, widened, caught = RIDGE_ALPHA, [], 0
    for step in range(WIDEN + 1):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", LinAlgWarning)
            model = RidgeCV(alphas=alphas).fit(z, y)
        caught += sum(issubclass(w.category, LinAlgWarning) for w in seen)
        wider = _widened(alphas, model.alpha_)
        if step == WIDEN or wider is None:
            break
        widened.append("alpha")
        alphas = wider
    return {
        "mean": mean, "scale": scale, "coef": model.coef_.astype(np.float64), "intercept": float(model.intercept_),
        "params": {"alpha": float(model.alpha_)}, "edge": ["alpha"] if _widened(alphas, model.alpha_) else [],
        "widened": widened, "linalg_warnings": caught,
    }  # fmt: skip
