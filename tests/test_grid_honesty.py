"""The grid's numbers are what they say, checked against values computed here independently: the seed ensemble
averages the runs' LAST-epoch predictions (not their best, val-selected, epoch), and the Ridge / SVR baselines are
fitted on the train videos only (not train + val). Each assertion fails when that defect is injected."""

import csv

import numpy as np
from scipy.stats import spearmanr

from config import Paths, TrainConfig, parse
from dataset import load_records
from pipeline.grid.runner import run_experiment
from tests.conftest import signal_features
from tests.test_experiments import _argv, two_modules  # noqa: F401 (a fixture)


def _columns(path):
    with path.open() as f:
        rows = list(csv.DictReader(f))
    ids = [r["id"] for r in rows]
    return ids, np.array([float(r["score"]) for r in rows]), {c: np.array([float(r[c]) for r in rows])
                                                            for c in ("pred_best", "pred_last")}  # fmt: skip


def test_seed_ensemble_averages_last_epoch_predictions(two_modules, tmp_path):  # noqa: F811
    argv = _argv(two_modules, tmp_path, "-n", "ens", "--seeds", "1", "2", "3", "--epochs", "6")
    summary = run_experiment(parse(TrainConfig, argv))
    row = next(r for r in summary["rows"] if r["model"] == "mlp")
    preds = {"pred_best": [], "pred_last": []}
    for seed in (1, 2, 3):
        _, true, cols = _columns(tmp_path / f"runs/ens/a+b/seed{seed}-fold0/predictions_val.csv")
        for c in preds:
            preds[c].append(cols[c])
    last = spearmanr(np.mean(preds["pred_last"], 0), true).statistic
    best = spearmanr(np.mean(preds["pred_best"], 0), true).statistic
    assert abs(best - last) > 1e-3  # the two differ here, so averaging the wrong one is caught
    assert abs(row["ensemble"]["mean"] - last) < 1e-6
    assert abs(row["last"]["mean"] - np.mean([spearmanr(p, true).statistic for p in preds["pred_last"]])) < 1e-6


def test_ridge_and_svr_baselines_are_fitted_on_train_only(two_modules, tmp_path):  # noqa: F811
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    summary = run_experiment(parse(TrainConfig, _argv(two_modules, tmp_path, "-n", "bl", "--baselines")))
    # the imported modules, recomputed as the fixture made them (tests.test_experiments._import)
    ids_a, a = signal_features(two_modules, dim=6, noise=0.3, seed=1)
    ids_b, b = signal_features(two_modules, dim=4, noise=0.3, seed=2)
    assert ids_a == ids_b
    x = dict(zip(ids_a, np.concatenate([a, b], 1), strict=True))
    records = load_records("Memento10k", Paths(data_dir=str(two_modules)))
    tr = [r for r in records if r.split == "train"]
    va = [r for r in records if r.split == "val"]
    x_tr, y_tr = np.stack([x[r.id] for r in tr]), np.array([r.score for r in tr])
    x_va, y_va = np.stack([x[r.id] for r in va]), np.array([r.score for r in va])
    rows = {r["model"]: r for r in summary["rows"]}
    p = rows["svr"]["runs"][0]["fit"]["params"]
    gamma = float(p["gamma"].split("/")[0]) / x_tr.shape[1]
    u_tr = (y_tr - y_tr.mean()) / y_tr.std()  # the SVR fits standardised scores (C, epsilon in their units)
    svr = make_pipeline(StandardScaler(), SVR(C=p["C"], gamma=gamma, epsilon=p["epsilon"])).fit(x_tr, u_tr)
    assert abs(rows["svr"]["last"]["mean"] - spearmanr(svr.predict(x_va), y_va).statistic) < 1e-6
    alpha = rows["ridge"]["runs"][0]["fit"]["params"]["alpha"]
    ridge = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x_tr, y_tr)
    assert abs(rows["ridge"]["last"]["mean"] - spearmanr(ridge.predict(x_va), y_va).statistic) < 1e-6
    both = np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va])  # what a train+val fit would score
    leak = spearmanr(make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(*both).predict(x_va), y_va).statistic
    assert abs(leak - rows["ridge"]["last"]["mean"]) > 1e-3


def test_search_on_inner_cv_never_sees_val_and_scores_the_best_trial_on_val_once(two_modules, tmp_path, monkeypatch):  # noqa: F811
    from pipeline.grid.runner import Grid
    from pipeline.grid.search import run_search

    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n")
    seen, real_init = [], Grid.__init__

    def spy(self, cfg, inner_cv=0):
        real_init(self, cfg, inner_cv)
        seen.append((inner_cv, {i for f in self.folds for i in f.train_ids + f.val_ids}))

    monkeypatch.setattr(Grid, "__init__", spy)
    argv = _argv(two_modules, tmp_path, "-n", "si", "--search", "2", "--search_space", str(space), "--seed", "1")
    summary = run_search(parse(TrainConfig, [*argv, "--search_on", "inner_cv"]))
    records = load_records("Memento10k", Paths(data_dir=str(two_modules)))
    train = {r.id for r in records if r.split == "train"}
    val = {r.id for r in records if r.split == "val"}
    assert seen[0] == (3, train)  # the trials' grid: 3 folds of the train videos, no val video
    assert seen[1][0] == 0 and seen[1][1] == train | val  # then the best config, trained on train, scored on val
    assert "inner folds" in summary["metric"] and set(summary["best"]["val_once"]) == {"ensemble", "last"}


def _stat(mean, n, std=0.0):
    return {"mean": mean, "std": std, "n": n}


def test_summary_table_says_single_values_have_no_spread_and_when_a_baseline_wins(tmp_path):
    from pipeline.grid.summary import _notes, plot_ablation, table_lines

    mlp = {"combination": "a", "model": "mlp", "best": _stat(0.6, 3, 0.01), "last": _stat(0.5, 3, 0.02),
           "ensemble": _stat(0.52, 1), "runs": []}  # fmt: skip
    svr = {"combination": "a", "model": "svr", "best": None, "last": _stat(0.55, 1), "ensemble": _stat(0.55, 1),
           "runs": [{"fit": {"edge": ["C"], "widened": ["C"], "linalg_warnings": 0}}]}  # fmt: skip
    ridge = {"combination": "a", "model": "ridge", "best": None, "last": _stat(0.4, 1), "ensemble": _stat(0.4, 1),
             "runs": [{"fit": {"edge": [], "widened": [], "linalg_warnings": 22}}]}  # fmt: skip
    rows = [svr, mlp, ridge]
    lines = table_lines({"rows": rows})
    assert "± 0.0000" not in "\n".join(lines)
    assert lines[2] == "| a | svr | 1 fit | 0.5500 ± - | 0.5500 ± - | - |"
    assert lines[3] == "| a | mlp | 3 | 0.5200 ± - | 0.5000 ± 0.0200 | 0.6000 ± 0.0100 |"
    notes = _notes(rows, "mlp")
    assert notes[0] == "svr beats mlp on a: 0.5500 vs 0.5200 (seed ensemble)"
    assert not any("ridge beats" in n for n in notes)
    assert any("edge" in n and "svr C" in n for n in notes) and any(n.startswith("22 scikit-learn") for n in notes)
    svr["head_minus_this"] = {"diff": -0.03, "ci95": [-0.08, 0.02]}  # a grid with --baselines: the paired interval
    assert _notes(rows, "mlp")[0] == ("svr beats mlp on a: 0.5500 vs 0.5200 (seed ensemble; mlp minus svr -0.0300, "
                                      "95 % CI [-0.080, +0.020], holds 0: not told apart)")  # fmt: skip
    paired = table_lines({"rows": rows, "head": "mlp"})
    assert paired[0].endswith("| mlp minus this, 95 % CI (paired bootstrap) |") and paired[1].count("---") == 7
    assert paired[2].endswith("| -0.0300 [-0.080, +0.020] |") and paired[3].endswith("| - |")
    del svr["head_minus_this"]
    import matplotlib.figure

    seen = {}
    real = matplotlib.figure.Figure.savefig

    def spy(self, *args, **kwargs):
        seen["labels"] = [t.get_text() for t in self.axes[0].get_legend().get_texts()]
        return real(self, *args, **kwargs)

    matplotlib.figure.Figure.savefig = spy
    try:
        plot_ablation(tmp_path / "a.png", {"rows": rows, "dataset": "d", "runs": 3, "head": "mlp"})
    finally:
        matplotlib.figure.Figure.savefig = real
    # one swatch per model, in the table's order, then the markers
    swatches = [f"{m}: last epoch, mean ± std" for m in ("svr", "mlp", "ridge")]
    assert seen["labels"] == [*swatches, "best epoch (val-selected)", "seed ensemble"]


def test_search_refuses_a_fitted_head():
    import pytest

    from config import ConfigError

    with pytest.raises(ConfigError, match="--search tunes the MLP"):
        parse(TrainConfig, ["--extra_features", "a", "--search", "2", "--head", "svr"])
