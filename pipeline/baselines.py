"""Baselines beside the MLP: Ridge and RBF-SVR on the same feature table (the same folds, modules and
normalisation), inputs standardised on each fold's train videos, hyper-parameters chosen by cross-validation on the
train videos only (never on val)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from model.metrics import compute_metrics
from pipeline.batched import FoldData

#: name -> (estimator, grid over its parameters, CV folds on train)
BASELINES = {
    "ridge": (Ridge(), {"ridge__alpha": np.logspace(-3, 4, 15)}, 5),
    "svr": (
        SVR(kernel="rbf", cache_size=1000),
        {"svr__C": [0.1, 1.0, 10.0], "svr__gamma": ["scale", 0.3, 3.0], "svr__epsilon": [0.01, 0.05]},
        3,
    ),
}
SVR_MAX_CV = 3000  # the SVR's CV grid runs on at most this many train videos (its cost grows with n^2); the final
# fit uses every train video


def fit_baseline(name: str, x_train: np.ndarray, y_train: np.ndarray, seed: int) -> tuple[Pipeline, dict]:
    """Standardise, then grid-search the hyper-parameters by K-fold CV on the train videos (scored by Spearman)."""
    estimator, grid, k = BASELINES[name]
    pipe = make_pipeline(StandardScaler(), estimator)
    if "svr__gamma" in grid:  # the RBF width is given per input dimension, relative to 'scale' (1 / n_features)
        grid = dict(grid) | {"svr__gamma": [g if g == "scale" else g / x_train.shape[1] for g in grid["svr__gamma"]]}
    search = GridSearchCV(
        pipe, grid, scoring=_spearman_scorer, cv=KFold(k, shuffle=True, random_state=seed), refit=False
    )
    rows = np.random.default_rng(seed).permutation(len(y_train))[: SVR_MAX_CV if name == "svr" else None]
    search.fit(x_train[rows], y_train[rows])
    pipe.set_params(**search.best_params_)
    pipe.fit(x_train, y_train)
    return pipe, search.best_params_


def _spearman_scorer(estimator, x: np.ndarray, y: np.ndarray) -> float:
    return compute_metrics(estimator.predict(x), y)["spearman"]


def run_baselines(folds: list[FoldData], combos: list[tuple[str, ...]], seed: int = 0) -> list[dict]:
    """One row per (combination, baseline): its val Spearman on every fold, and the hyper-parameters CV chose."""
    out = []
    for combo in combos:
        for name in BASELINES:
            per_fold, runs = [], []
            for f, fold in enumerate(folds):
                x_tr = np.concatenate([fold.x_train[m].cpu().numpy() for m in combo], axis=1)
                x_va = np.concatenate([fold.x_val[m].cpu().numpy() for m in combo], axis=1)
                pipe, params = fit_baseline(name, x_tr, fold.y_train.cpu().numpy(), seed)
                score = compute_metrics(pipe.predict(x_va), fold.y_val.cpu().numpy())["spearman"]
                per_fold.append(score)
                runs.append({"fold": f, "val_spearman": score, "params": {k: _plain(v) for k, v in params.items()}})
            out.append({"modules": combo, "model": name, "per_fold": per_fold, "runs": runs})
    return out


def _plain(v: object) -> object:
    return v.item() if isinstance(v, np.generic) else v
