"""Heads: what maps a video's concatenated module features (B, in_dim) to its score (B,). One registry, ``HEADS``.

- ``mlp``: the M3-S ``ModularMLP`` (trained epoch by epoch by ``pipeline.run.training`` / ``pipeline.grid.batched``);
- ``ridge``, ``svr``: Ridge and RBF-SVR on standardised inputs, fitted by scikit-learn (``model.kernels``) and
  exported as torch modules of plain tensors (the standardisation, the coefficients or support vectors and dual
  coefficients): a checkpoint holds numbers, never a pickle, and ``evaluate.py``, ``--videos`` and ``--explain``
  (gradient x input included) run them like the MLP;
- ``stack``: a convex blend of the MLP, the SVR and Ridge, ``w_mlp * mlp + w_svr * svr + w_ridge * ridge``, the
  weights chosen on the simplex grid of step ``STACK_STEP`` by the Spearman of out-of-fold predictions on an inner
  K-fold split of the train videos (never val), each member's predictions standardised first (``BlendHead``); ties go
  to the more even blend. Then each member is refitted on every train video;
- ``select``: the same out-of-fold predictions choose one member alone (the vertices of that simplex): model
  selection by inner CV on train, fewer choices than the blend's 15, so less to overfit on small train sets;
- ``stack_1se``: the blend in sixths (28, equal thirds among them) chosen by the one-standard-error rule: of the
  blends whose out-of-fold Spearman is within one bootstrap standard error of the best one's, the most even (least
  sum of squared weights). On a few hundred train videos the inner-CV differences between blends are within noise,
  so it keeps the even blend; on thousands it follows the data;
- ``stack_ls``: stacked regression (Breiman, 1996): non-negative least-squares weights on the standardised
  out-of-fold predictions, a smooth fit where picking among blends by rank follows the noise of small train sets;
- ``average``: the three standardised members with equal weights (the inner CV only measures their spread).

Adding a head = a torch module with a ``dims`` attribute, a ``fit`` and one ``Head`` line; ``tests/test_heads.py`` is
parametrised over the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from model.kernels import fit_ridge, fit_svr, spearman
from model.mlp import ModularMLP

STACK_FOLDS = 3  # inner folds of the train videos on which the stack's blend weights are chosen
STACK_STEP = 4  # weights in quarters: the 15 blends of (mlp, svr, ridge) with weights k/4 summing to 1
STACK_WEIGHTS = [(a / STACK_STEP, b / STACK_STEP, (STACK_STEP - a - b) / STACK_STEP)
                 for a in range(STACK_STEP + 1) for b in range(STACK_STEP + 1 - a)]  # fmt: skip
VERTICES = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]  # one member alone: the MLP, the SVR, Ridge
SIXTHS = [(a / 6, b / 6, (6 - a - b) / 6) for a in range(7) for b in range(7 - a)]  # stack_1se's 28 blends
EVEN = (1 / 3, 1 / 3, 1 / 3)
BOOTSTRAP = 200  # resamples of the out-of-fold rows for the standard error of the best blend's Spearman


def _t(a: np.ndarray | float) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


class LinearHead(nn.Module):
    """``((x - mean) / scale) @ coef + intercept`` in float64 (a Ridge fitted on standardised inputs)."""

    def __init__(self, dims: dict[str, int], fit: dict | None = None) -> None:
        super().__init__()
        self.dims, d = dict(dims), sum(dims.values())
        fit = fit or {"mean": np.zeros(d), "scale": np.ones(d), "coef": np.zeros(d), "intercept": 0.0}
        for name in ("mean", "scale", "coef", "intercept"):
            self.register_buffer(name, _t(fit[name]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / self.scale  # (B, in_dim)
        return (z @ self.coef + self.intercept).float()


class KernelHead(nn.Module):
    """``sum_i dual_i exp(-gamma ||z - sv_i||^2) + intercept``, ``z`` the standardised input (an RBF-SVR)."""

    def __init__(self, dims: dict[str, int], fit: dict | None = None, n_support: int = 1) -> None:
        super().__init__()
        self.dims, d = dict(dims), sum(dims.values())
        fit = fit or {"mean": np.zeros(d), "scale": np.ones(d), "support": np.zeros((n_support, d)),
                      "dual": np.zeros(n_support), "intercept": 0.0, "gamma": 1.0 / d}  # fmt: skip
        for name in ("mean", "scale", "support", "dual", "intercept", "gamma"):
            self.register_buffer(name, _t(fit[name]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._score(part) for part in x.split(1024)])  # (B, n_support) float64 blocks stay small

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / self.scale  # (B, in_dim)
        d2 = (z * z).sum(1, keepdim=True) + (self.support**2).sum(1) - 2.0 * z @ self.support.T  # (B, n_support)
        return (torch.exp(-self.gamma * d2.clamp_min(0.0)) @ self.dual + self.intercept).float()


class BlendHead(nn.Module):
    """``offset + sum_k weight_k * scale_k * (member_k(x) - center_k)``: the blend heads (MLP, SVR, Ridge). Each member
    enters standardised (``center``, and in ``scale`` one over the spread of its out-of-fold predictions, times the
    slope that maps the blend onto the train scores), so a weight means a share of the ranking whatever the member's
    output range: an SVR or a Ridge fitted to noisy scores predicts within a narrow band, an MLP's outputs spread
    wider, and a raw sum is ranked by the widest member. (Checkpoints written before: ``_unstandardised``.)"""

    def __init__(
        self,
        dims: dict[str, int],
        members: list[nn.Module],
        weights: list[float],
        center: list[float] | None = None,
        scale: list[float] | None = None,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("center", torch.tensor(center or [0.0] * len(members), dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale or [1.0] * len(members), dtype=torch.float32))
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = zip(self.weights, self.scale, self.center, self.members, strict=True)
        return self.offset + sum(w * s * (m(x) - c) for w, s, c, m in parts)


#: ``train_mlps(parts, seeds)`` trains the MLP of the run's config on the rows ``train`` of each part, one run per
#: seed, and returns per part ``(predictions on its rows eval (seeds, n_eval), last-epoch state dicts per seed)``.
MLPTrainer = Callable[[list[tuple[np.ndarray, np.ndarray]], list[int]], list[tuple[np.ndarray, list[dict]]]]


@dataclass
class FitContext:
    """What a head's ``fit`` may use beside the train videos' inputs and scores."""

    dims: dict[str, int]
    hidden: list[int]
    seed: int
    train_mlps: MLPTrainer | None = None
    info: dict = field(default_factory=dict)  # filled by fit: chosen hyper-parameters, grid edges, warnings


def _fit_ridge(x: np.ndarray, y: np.ndarray, ctx: FitContext) -> nn.Module:
    fit = fit_ridge(x, y)
    ctx.info |= {k: fit[k] for k in ("params", "edge", "widened", "linalg_warnings")}
    return LinearHead(ctx.dims, fit)


def _fit_svr(x: np.ndarray, y: np.ndarray, ctx: FitContext) -> nn.Module:
    fit = fit_svr(x, y)  # the CV split is fixed (seed 0): one fit per table, shared by --baselines and the stack
    ctx.info |= {k: fit[k] for k in ("params", "edge", "widened")}
    return KernelHead(ctx.dims, fit)


#: how a blend head picks its weights of (mlp, svr, ridge) from the members' standardised out-of-fold predictions
#: ``z`` (3, n) of the train videos and their scores ``y``
Choice = Callable[[np.ndarray, np.ndarray], tuple[float, float, float]]


def best_of(grid: list[tuple[float, float, float]]) -> Choice:
    """The blend of ``grid`` whose out-of-fold predictions rank best (ties: the more even blend, then the first)."""
    return lambda z, y: max(grid, key=lambda k: (round(spearman(np.dot(k, z), y), 6), -max(k)))


def one_se(z: np.ndarray, y: np.ndarray, grid: list = SIXTHS) -> tuple[float, float, float]:
    """The most even blend of ``grid`` whose inner Spearman is within one standard error (bootstrap over the
    out-of-fold rows, seeded) of the best blend's; ties: the higher inner Spearman."""
    inner = {k: spearman(np.dot(k, z), y) for k in grid}
    best = max(grid, key=lambda k: inner[k])
    rows = np.random.default_rng(0).integers(0, len(y), size=(BOOTSTRAP, len(y)))
    pred = np.dot(best, z)
    se = float(np.std([spearman(pred[r], y[r]) for r in rows]))
    near = [k for k in grid if inner[k] >= inner[best] - se]
    return min(near, key=lambda k: (round(float(np.dot(k, k)), 9), -inner[k]))


def least_squares(z: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Stacked regression (Breiman, 1996): the non-negative least-squares weights of the out-of-fold predictions
    for the centred scores, as shares (the even blend where no member has a positive weight). A smooth fit of all
    rows, where picking the best-ranking of many blends follows the noise of a few hundred videos."""
    from scipy.optimize import nnls

    beta = nnls(z.T, y - y.mean())[0]
    return tuple(float(b) for b in beta / beta.sum()) if beta.sum() > 0 else EVEN


def _fit_blend(x: np.ndarray, y: np.ndarray, ctx: FitContext, choose: Choice) -> nn.Module:
    """The blend whose weights ``choose`` takes from the members' out-of-fold predictions on ``STACK_FOLDS`` inner
    folds of the train videos, each member standardised by the mean and spread of those predictions (a constant
    member gets no say), the blend mapped onto the scores by a least-squares line through its out-of-fold
    predictions; its members refitted on every train video."""
    from sklearn.model_selection import KFold

    folds = list(KFold(STACK_FOLDS, shuffle=True, random_state=0).split(x))
    runs = ctx.train_mlps(folds + [(np.arange(len(y)), np.arange(0))], [ctx.seed])
    oof = np.zeros((3, len(y)))  # out-of-fold predictions of (mlp, svr, ridge)
    for (tr, te), (pred, _) in zip(folds, runs, strict=False):
        xt = torch.from_numpy(x[te])
        oof[:, te] = [pred[0], KernelHead(ctx.dims, fit_svr(x[tr], y[tr]))(xt).detach().numpy(),
                      LinearHead(ctx.dims, fit_ridge(x[tr], y[tr]))(xt).detach().numpy()]  # fmt: skip
    center, spread = oof.mean(1), oof.std(1)
    scale = np.divide(y.std(), spread, out=np.zeros(3), where=spread > 1e-6 * y.std())  # constant member: 0
    z = (oof - center[:, None]) * scale[:, None]
    w = choose(z, y)
    inner_cv = {name: round(spearman(z[i], y), 4) for i, name in enumerate(("mlp", "svr", "ridge"))}
    blend = np.dot(w, z)  # mapped onto the scores by least squares on the out-of-fold rows (it shrinks as they do)
    inner_cv["chosen"] = round(spearman(blend, y), 4)
    slope = float(np.cov(blend, y)[0, 1] / blend.var(ddof=1)) if blend.var() > 0 else 0.0
    scale *= slope if slope > 0 else 1.0  # a blend ranking train videos backwards out of fold: left unshrunk
    svr, ridge = fit_svr(x, y), fit_ridge(x, y)
    mlp = ModularMLP(ctx.dims, ctx.hidden)
    mlp.load_state_dict(runs[-1][1][0])
    ctx.info |= {
        "params": {"weights (mlp, svr, ridge)": [round(v, 4) for v in w], "svr": svr["params"],
                   "ridge": ridge["params"], "scale (mlp, svr, ridge)": [round(float(v), 4) for v in scale]},
        "inner_cv": inner_cv,
        "edge": [f"svr {e}" for e in svr["edge"]] + [f"ridge {e}" for e in ridge["edge"]],
        "linalg_warnings": ridge["linalg_warnings"],
    }  # fmt: skip
    members = [mlp, KernelHead(ctx.dims, svr), LinearHead(ctx.dims, ridge)]
    return BlendHead(ctx.dims, members, list(w), center.tolist(), scale.tolist(), float(y.mean()))


@dataclass(frozen=True)
class Head:
    name: str
    help: str
    build: Callable[[dict[str, int], dict, dict], nn.Module]  # (dims, config, state dict) -> an empty module
    fit: Callable[[np.ndarray, np.ndarray, FitContext], nn.Module] | None  # None: trained epoch by epoch (mlp)
    epochs: bool = False  # trained over epochs (best / last epoch exist), or fitted once
    upgrade: Callable[[dict], dict] = lambda state: state  # a state dict an earlier m3s wrote, in today's keys


def _n_support(state: dict, prefix: str = "") -> int:
    return state[f"{prefix}support"].shape[0]


def _unstandardised(state: dict) -> dict:
    """A blend saved before its members were standardised loads with the identity (center 0, scale 1, offset 0):
    it predicts the raw weighted sum it was written with."""
    n = len(state["weights"])
    return {"center": torch.zeros(n), "scale": torch.ones(n), "offset": torch.tensor(0.0)} | state


def _build_blend(dims: dict[str, int], config: dict, state: dict) -> BlendHead:
    members = [ModularMLP(dims, config["hidden_channels"]),
               KernelHead(dims, n_support=_n_support(state, "members.1.")), LinearHead(dims)]  # fmt: skip
    return BlendHead(dims, members, [0.0, 0.0, 0.0])


HEADS: dict[str, Head] = {
    h.name: h
    for h in (
        Head("mlp", "the M3-S MLP (epochs, best / last epoch)", lambda d, c, s: ModularMLP(d, c["hidden_channels"]),
             None, epochs=True),
        Head("ridge", "Ridge on standardised inputs (alpha by leave-one-out on train)",
             lambda d, c, s: LinearHead(d), _fit_ridge),
        Head("svr", "RBF-SVR on standardised inputs and scores (C, gamma, epsilon: least 3-fold CV error on train)",
             lambda d, c, s: KernelHead(d, n_support=_n_support(s)), _fit_svr),
        Head("stack", "MLP, SVR and Ridge blended, the weights (in quarters) chosen by inner CV on train",
             _build_blend, lambda x, y, ctx: _fit_blend(x, y, ctx, best_of(STACK_WEIGHTS)), upgrade=_unstandardised),
        Head("select", "the one of MLP, SVR and Ridge whose inner CV on train ranks best (model selection)",
             _build_blend, lambda x, y, ctx: _fit_blend(x, y, ctx, best_of(VERTICES)), upgrade=_unstandardised),
        Head("stack_1se", "MLP, SVR and Ridge blended, the most even blend (in sixths) within one standard error of "
             "the best by inner CV on train", _build_blend, lambda x, y, ctx: _fit_blend(x, y, ctx, one_se),
             upgrade=_unstandardised),
        Head("stack_ls", "MLP, SVR and Ridge blended, non-negative least-squares weights on their inner-CV "
             "predictions on train (stacked regression)", _build_blend,
             lambda x, y, ctx: _fit_blend(x, y, ctx, least_squares), upgrade=_unstandardised),
        Head("average", "MLP, SVR and Ridge, standardised, with equal weights", _build_blend,
             lambda x, y, ctx: _fit_blend(x, y, ctx, lambda z, y: EVEN), upgrade=_unstandardised),
    )
}  # fmt: skip
