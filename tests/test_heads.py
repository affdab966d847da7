"""Every head of ``model.heads.HEADS`` is a model like the MLP: trained by ``train.py --head NAME``, its checkpoint
loads with ``weights_only=True`` and is used by ``evaluate.py`` (a split), ``--videos`` (new files) and ``--explain``,
which all give the predictions the training run wrote. And the exported scikit-learn heads compute what
scikit-learn computes."""

import csv
import shutil
import sys

import numpy as np
import pytest
import torch

from config import EvalConfig, GenConfig, parse
from model.heads import HEADS, BlendHead, KernelHead, LinearHead
from model.kernels import fit_ridge, fit_svr, spearman
from model.mlp import ModularMLP
from pipeline.generate import run
from pipeline.scoring.evaluate import run_evaluation
from pipeline.scoring.explain import run_explain
from pipeline.scoring.videos import read_scores, score_videos
from tests.fixtures_video import memento_layout


@pytest.fixture(scope="module")
def raw_store(tmp_path_factory):
    """A tiny Memento10k with videos (30 clips: 18 train, 6 val, 6 test) and its raw-tier store."""
    tmp = tmp_path_factory.mktemp("heads")
    data = tmp / "data"
    memento_layout(data / "Memento10k", 30, n_frames=8)
    run(GenConfig(data_dir=str(data), dataset="Memento10k", workers=1))
    return tmp


def _train(tmp, head, monkeypatch):
    import train

    argv = ["train.py", "--data_dir", str(tmp / "data"), "--runs_dir", str(tmp / "runs"), "-n", head, "--use_raw",
            "--epochs", "3", "--hidden_channels", "16", "--batch_size", "4", "--seed", "1", "--head", head, "-s",
            "--device", "cpu"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    train.main()
    return tmp / "runs" / head


def _column(path, col):
    with open(path, newline="") as f:
        return {r["id"]: float(r[col]) for r in csv.DictReader(f)}


@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_round_trips_through_evaluate_videos_and_explain(raw_store, head, monkeypatch, capsys):
    run_dir = _train(raw_store, head, monkeypatch)
    trained = _column(run_dir / "predictions_val.csv", "pred_best")
    state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)  # plain tensors, no pickle
    assert state["config"]["head"] == head and len(trained) == 6
    # evaluate.py on the dataset's val split
    run_evaluation(parse(EvalConfig, ["--checkpoint", str(run_dir / "best.pt"), "--split", "val"]))
    scored = _column(run_dir / "predictions_Memento10k_val_best.csv", "pred")
    assert scored.keys() == trained.keys()
    assert max(abs(scored[k] - trained[k]) for k in trained) < 1e-5
    # --videos: the val videos as new files, from the checkpoint alone (the dataset's stores moved away)
    videos = raw_store / f"videos_{head}"
    videos.mkdir()
    for vid in trained:
        shutil.copy(raw_store / "data/Memento10k/videos" / f"{vid}.mp4", videos)
    shutil.move(raw_store / "data/features", raw_store / "features_away")
    try:
        out = raw_store / f"scores_{head}.csv"
        score_videos(parse(EvalConfig, ["--checkpoint", str(run_dir / "best.pt"), "--videos", str(videos),
                                        "--out", str(out), "--workers", "1", "--device", "cpu"]))  # fmt: skip
    finally:
        shutil.move(raw_store / "features_away", raw_store / "data/features")
    new = read_scores(out)
    assert max(abs(new[k] - trained[k]) for k in trained) < 1e-5
    # --explain: the head's predictions, and its gradient x input, per module
    result = run_explain(parse(EvalConfig, ["--checkpoint", str(run_dir / "best.pt"), "--explain"]))
    e = result["explanation"]
    assert np.allclose(e.pred, [trained[i] for i in e.ids], atol=1e-5)
    assert e.modules == ["raw"] and abs(sum(e.grad_share.values()) - 1) < 1e-6


def test_exported_svr_and_ridge_compute_what_scikit_learn_computes():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 7)).astype(np.float32) * [1, 2, 3, 4, 5, 6, 0.1]
    y = np.tanh(x[:, 0] + 0.3 * x[:, 1] ** 2 + rng.normal(scale=0.3, size=120)).astype(np.float32)
    x_new = rng.normal(size=(40, 7)).astype(np.float32)
    dims = {"a": 4, "b": 3}
    fit = fit_svr(x, y)
    c, e = fit["params"]["C"], fit["params"]["epsilon"]
    u = (y - y.mean(dtype=np.float64)) / y.std(dtype=np.float64)
    svr = make_pipeline(StandardScaler(), SVR(C=c, epsilon=e, gamma=fit["gamma"])).fit(x, u)
    want = y.mean(dtype=np.float64) + y.std(dtype=np.float64) * svr.predict(x_new)
    got = KernelHead(dims, fit)(torch.from_numpy(x_new)).numpy()
    assert np.abs(got - want).max() < 1e-5
    fit = fit_ridge(x, y)
    want = make_pipeline(StandardScaler(), Ridge(alpha=fit["params"]["alpha"])).fit(x, y).predict(x_new)
    got = LinearHead(dims, fit)(torch.from_numpy(x_new)).numpy()
    assert np.abs(got - want).max() < 1e-5


def test_the_svr_minimises_the_cv_squared_error_and_follows_the_scores_scale():
    """The SVR's (C, gamma, epsilon) are the grid cell of least mean squared error over its 3 CV folds, recomputed
    here with scikit-learn's own RBF-SVR (on noisy scores the cell of best CV Spearman is another one); and scores
    multiplied by 100 give the same SVR, predictions x 100 (it fits standardised scores)."""
    from sklearn.model_selection import KFold
    from sklearn.svm import SVR

    from model import kernels

    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 5))
    y = 0.8 + 0.1 * np.tanh(x[:, 0] - 0.5 * x[:, 1] ** 2 + rng.normal(scale=1.5, size=90))
    fit = fit_svr(x, y)
    rows = np.random.default_rng(0).permutation(90)  # the CV's row order (seed 0)
    z, yr = ((x - x.mean(0)) / x.std(0))[rows], ((y - y.mean()) / y.std())[rows]
    cells = {}
    for c in kernels.SVR_C:
        for g in kernels.SVR_GAMMA:
            for e in kernels.SVR_EPSILON:
                mse, rho = [], []
                for tr, te in KFold(kernels.SVR_FOLDS, shuffle=True, random_state=0).split(z):
                    p = SVR(C=c, epsilon=e, gamma=g / 5).fit(z[tr], yr[tr]).predict(z[te])
                    mse.append(np.mean((p - yr[te]) ** 2))
                    rho.append(spearman(p, yr[te]))
                cells[(c, f"{g:g}/d", e)] = np.mean(mse), np.mean(rho)
    chosen = (fit["params"]["C"], fit["params"]["gamma"], fit["params"]["epsilon"])
    assert fit["widened"] == [] and chosen == min(cells, key=lambda k: cells[k][0])
    by_rank = fit_svr(x, y, criterion="spearman")["params"]  # the old rule, kept for bench/svr_selection.py
    assert chosen != (by_rank["C"], by_rank["gamma"], by_rank["epsilon"]) == max(cells, key=lambda k: cells[k][1])
    assert abs(fit["params"]["cv_mse"] - cells[chosen][0] * y.var()) < 1e-3 * cells[chosen][0] * y.var()
    scaled = fit_svr(x, 100 * y)
    same = ("C", "gamma", "epsilon", "cv_spearman")
    assert {k: scaled["params"][k] for k in same} == {k: fit["params"][k] for k in same}
    x_new = torch.from_numpy(rng.normal(size=(20, 5)).astype(np.float32))
    dims = {"a": 5}
    big, small = KernelHead(dims, scaled)(x_new), 100 * KernelHead(dims, fit)(x_new)
    assert torch.allclose(big, small, rtol=1e-5)
    assert fit_svr(x, y) is fit and kernels._DATA == {}  # a remembered fit keeps no copy of its data


def test_fast_spearman_equals_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)
    assert abs(spearman(a, b) - spearmanr(a, b).statistic) < 1e-12
    assert spearman(np.ones(5), np.arange(5.0)) == 0.0


def test_a_fitted_head_is_a_grid_row_with_checkpoints(tmp_path):
    """--head ridge over --ablate x --folds, with --baselines: one row per (combination, head), sub-runs that
    evaluate.py scores, and the baseline run once per fold and combination (its fits ignore the seed)."""
    from config import TrainConfig
    from pipeline.grid.runner import run_experiment
    from pipeline.run.checkpoint import load_checkpoint, model_from_checkpoint
    from tests.conftest import write_memento
    from tests.test_experiments import _argv, _import

    write_memento(tmp_path / "data" / "Memento10k")
    data = tmp_path / "data"
    _import(data, tmp_path, "a", 6, 1)
    _import(data, tmp_path, "b", 4, 2)
    argv = _argv(data, tmp_path, "-n", "g", "--head", "ridge", "--ablate", "--folds", "2", "--seeds", "1", "2",
                 "--baselines", "-s")  # fmt: skip
    summary = run_experiment(parse(TrainConfig, argv))
    pairs = sorted((r["combination"], r["model"]) for r in summary["rows"])
    assert pairs == sorted((c, m) for c in ("a", "b", "a+b") for m in ("ridge", "svr"))
    rows = {(r["combination"], r["model"]): r for r in summary["rows"]}
    assert rows["a+b", "ridge"]["last"]["n"] == 4 and rows["a+b", "svr"]["last"]["n"] == 2
    assert rows["a+b", "ridge"]["best"] is None  # no epochs, no val-selected epoch
    ckpt = load_checkpoint(tmp_path / "runs/g/a+b/svr-seed1-fold1/last.pt")
    assert ckpt["config"]["head"] == "svr" and isinstance(model_from_checkpoint(ckpt), KernelHead)
    ridge = load_checkpoint(tmp_path / "runs/g/a/ridge-seed2-fold0/last.pt")
    assert isinstance(model_from_checkpoint(ridge), LinearHead)
    best = load_checkpoint(tmp_path / "runs/g/a/ridge-seed2-fold0/best.pt")  # fitted once: its best is its last
    assert all(torch.equal(best["model"][k], ridge["model"][k]) for k in ridge["model"]) and best["epoch"] == 0


def test_select_takes_the_member_whose_inner_cv_ranks_best_and_predicts_as_it_alone():
    """On a linear target, Ridge's out-of-fold Spearman beats the SVR's and a 3-epoch MLP's: select is Ridge alone
    (the ridge head's predictions, fitted on every train video, up to a rising line), and says what each member
    scored."""
    from config import TrainConfig
    from pipeline.run.heads import fit_head

    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 30)).astype(np.float32)  # 30 dims: a linear score is far from an RBF kernel's reach
    y = (0.5 + 0.02 * x @ rng.normal(size=30) + rng.normal(scale=0.005, size=150)).astype(np.float32)
    dims = {"a": 20, "b": 10}
    cfg = TrainConfig(epochs=3, hidden_channels=[16, 8], batch_size=16, device="cpu")
    model, info = fit_head(cfg, "select", x, y, dims, 0, torch.device("cpu"))
    scores = info["inner_cv"]
    assert scores["ridge"] > max(scores["svr"], scores["mlp"]) and scores["chosen"] == scores["ridge"]
    assert info["params"]["weights (mlp, svr, ridge)"] == [0.0, 0.0, 1.0]
    x_new = torch.from_numpy(rng.normal(size=(20, 30)).astype(np.float32))
    ridge = LinearHead(dims, fit_ridge(x, y))(x_new)  # select = Ridge's own predictions, recalibrated on its OOF
    assert np.corrcoef(model(x_new).detach().numpy(), ridge.detach().numpy())[0, 1] > 1 - 1e-6


def test_average_is_the_even_blend_of_its_members_standardised_by_their_out_of_fold_spread():
    """``average``: weights 1/3 each over the members standardised by the mean and spread of their out-of-fold
    predictions (recomputed here for the SVR and Ridge, whose fits are deterministic), mapped onto the train scores
    by one slope; the members themselves fitted on all of (x, y)."""
    from sklearn.model_selection import KFold

    from config import TrainConfig
    from model.heads import STACK_FOLDS
    from pipeline.run.heads import fit_head

    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 12)).astype(np.float32)
    y = (0.5 + 0.05 * np.tanh(x[:, 0]) + rng.normal(scale=0.01, size=80)).astype(np.float32)
    dims = {"a": 12}
    cfg = TrainConfig(epochs=2, hidden_channels=[8, 4], batch_size=16, device="cpu")
    model, info = fit_head(cfg, "average", x, y, dims, 0, torch.device("cpu"))
    assert torch.allclose(model.weights, torch.full((3,), 1 / 3)) and set(info["inner_cv"]) >= {"mlp", "svr", "ridge"}
    oof = np.zeros((2, 80))
    for tr, te in KFold(STACK_FOLDS, shuffle=True, random_state=0).split(x):
        xt = torch.from_numpy(x[te])
        oof[:, te] = [
            KernelHead(dims, fit_svr(x[tr], y[tr]))(xt).numpy(),
            LinearHead(dims, fit_ridge(x[tr], y[tr]))(xt).numpy(),
        ]
    assert np.allclose(model.center[1:].numpy(), oof.mean(1), atol=1e-6)
    ratio = model.scale[1:].numpy() * oof.std(1) / y.std()  # 1 / spread, times the one slope of the blend on its OOF
    assert np.allclose(ratio, ratio[0], rtol=1e-4) and 0 < ratio[0] < 1.5
    x_new = torch.from_numpy(rng.normal(size=(10, 12)).astype(np.float32))
    mlp = model.members[0](x_new)
    svr, ridge = KernelHead(dims, fit_svr(x, y))(x_new), LinearHead(dims, fit_ridge(x, y))(x_new)
    z = [s * (p - c) for s, p, c in zip(model.scale, (mlp, svr, ridge), model.center, strict=True)]
    assert torch.allclose(model(x_new), float(y.mean()) + sum(z) / 3, atol=1e-5)


def test_a_blend_saved_before_standardisation_loads_as_the_raw_weighted_sum():
    """A stack checkpoint of the same format without ``center`` / ``scale`` / ``offset`` loads through the one scoring
    loader and predicts what it predicted when written: ``sum_k w_k member_k(x)``; one missing a member's key is still
    refused."""
    from core.io import ConfigError
    from pipeline.run.checkpoint import model_from_checkpoint

    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x[:, 0] + 0.1 * rng.normal(size=40)).astype(np.float32)
    dims = {"a": 6}
    svr, ridge = fit_svr(x, y), fit_ridge(x, y)
    blend = BlendHead(
        dims, [ModularMLP(dims, [8, 4]), KernelHead(dims, svr), LinearHead(dims, ridge)], [0.5, 0.25, 0.25]
    )
    old = {k: v for k, v in blend.state_dict().items() if k not in ("center", "scale", "offset")}
    loaded = model_from_checkpoint({"config": {"head": "stack", "hidden_channels": [8, 4]}, "dims": dims, "model": old})
    xt = torch.from_numpy(x)
    raw = sum(w * m(xt) for w, m in zip((0.5, 0.25, 0.25), blend.members, strict=True))
    assert torch.allclose(loaded(xt), raw, atol=1e-6) and float(loaded.scale.sum()) == 3.0
    broken = {k: v for k, v in old.items() if k != "members.2.coef"}
    with pytest.raises(ConfigError, match="members.2.coef missing"):
        model_from_checkpoint({"config": {"head": "stack", "hidden_channels": [8, 4]}, "dims": dims, "model": broken})


def test_stack_1se_keeps_the_even_blend_within_noise_and_follows_a_clear_winner():
    """The one-standard-error rule: on 60 rows, where the best blend leans on the MLP's out-of-fold predictions but
    the even blend scores within one standard error of it -> the even blend; on 3000 rows where Ridge's are the score
    and the others noise -> Ridge (almost) alone, as the plain stack would."""
    from model.heads import EVEN, SIXTHS, one_se

    rng = np.random.default_rng(6)

    def choose(oof, y):
        return one_se(oof, y), max(SIXTHS, key=lambda k: spearman(np.dot(k, oof), y))

    y = rng.normal(size=60)
    noisy = np.stack([y + s * rng.normal(size=60) for s in (0.8, 1.5, 1.5)])  # the first member the least noisy
    chosen, best = choose(noisy, y)
    assert best != EVEN and chosen == EVEN
    y = rng.normal(size=3000)
    clear = np.stack([rng.normal(size=3000), rng.normal(size=3000), y + 0.1 * rng.normal(size=3000)])
    chosen, best = choose(clear, y)
    assert chosen[2] >= 5 / 6 and chosen != EVEN and spearman(np.dot(chosen, clear), y) > 0.95


def test_stack_ls_weights_members_by_what_they_add_out_of_fold():
    """Stacked regression: two members carrying independent halves of the score share the weight evenly and the
    noise member gets none; a member that merely repeats another's signal with more noise gets little."""
    from model.heads import least_squares

    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(2, 2000))
    y = a + b
    w = least_squares(np.stack([a, b, rng.normal(size=2000)]), y)
    assert abs(w[0] - 0.5) < 0.03 and abs(w[1] - 0.5) < 0.03 and w[2] < 0.02 and abs(sum(w) - 1) < 1e-9
    w = least_squares(np.stack([y + 0.3 * rng.normal(size=2000), y + 2.0 * rng.normal(size=2000), -y]), y)
    assert w[0] > 0.85 and w[2] == 0.0
