"""ModularMLP, the losses registry (each checked against a direct computation) and the metrics."""

import math

import numpy as np
import pytest
import torch

from model.losses import LOSSES, LossContext
from model.metrics import compute_metrics, histogram, js_divergence, kl_divergence, paired_difference
from model.mlp import ModularMLP


def test_mlp_architecture_matches_spec():
    model = ModularMLP({"raw": 15, "hrnet": 720, "csn": 2048}, (512, 64))
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2783, 512), (512, 64), (64, 1)]
    assert [type(m).__name__ for m in model.net] == ["Linear", "Mish", "Linear", "Mish", "Linear"]
    x = torch.randn(7, 2783)
    out = model(x)
    assert out.shape == (7,) and bool(((out > 0) & (out < 1)).all())
    h = x
    for layer in model.net[:-1]:
        h = layer(h) if isinstance(layer, torch.nn.Linear) else h * torch.tanh(torch.nn.functional.softplus(h))
    torch.testing.assert_close(out, torch.sigmoid(model.net[-1](h)).squeeze(-1))


@pytest.mark.parametrize("dims", [{"raw": 15}, {"csn": 2048}, {"raw": 3, "clip": 5}])
def test_mlp_any_module_subset(dims):
    model = ModularMLP(dims, [8])
    parts = {m: torch.randn(2, d) for m, d in dims.items()}
    assert model(ModularMLP.concat(parts, dims)).shape == (2,)


def test_mlp_refuses_empty_and_checks_widths():
    with pytest.raises(ValueError, match="at least one module"):
        ModularMLP({})
    with pytest.raises(ValueError, match="module 'raw' has width 4, expected 3"):
        ModularMLP.concat({"raw": torch.zeros(1, 4)}, {"raw": 3})


def _soft_rank_direct(x: np.ndarray) -> np.ndarray:
    """l2 soft rank with strength 1 (Blondel et al. 2020) by projection onto the permutahedron, via isotonic
    regression written out with pool-adjacent-violators: an independent check of torchsort."""
    n = len(x)
    w = np.arange(n, 0, -1, dtype=np.float64)  # target ranks n..1 for the descending order
    order = np.argsort(-x)
    z = x[order]  # descending input / strength
    y = z - w  # solve isotonic (non-increasing) regression of y, then rank = z - v
    blocks = []  # (sum, count)
    for val in y:
        blocks.append([val, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] <= blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    v = np.concatenate([np.full(c, s / c) for s, c in blocks])
    out = np.empty(n)
    out[order] = z - v
    return out


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _direct(name: str, p: np.ndarray, t: np.ndarray, ctx: LossContext) -> float:
    mse = float(np.mean((p - t) ** 2))
    spear = -_pearson(_soft_rank_direct(p), _soft_rank_direct(t)) / 100
    if name == "mse":
        return mse
    if name == "l1":
        return float(np.mean(np.abs(p - t)))
    if name == "mse_tails":
        w = 1 + ctx.tails_mult * np.abs(t - ctx.train_mean) ** ctx.tails_pow
        return float(np.mean(w / w.mean() * (p - t) ** 2))
    if name == "spearman":
        return spear
    if name == "mse_to_spearman":
        a = ctx.epoch / (ctx.epochs - 1)
        return (1 - a) * mse + a * spear
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_matches_direct_computation(name):
    rng = np.random.default_rng(1)
    p, t = rng.uniform(0.2, 1, 32), rng.uniform(0.4, 1, 32)
    ctx = LossContext(epoch=3, epochs=10, train_mean=0.8, tails_pow=4.0, tails_mult=2.0)
    got = LOSSES[name](torch.tensor(p), torch.tensor(t), ctx)
    assert float(got) == pytest.approx(_direct(name, p, t, ctx), rel=1e-6, abs=1e-9)
    q = torch.tensor(p, requires_grad=True)
    LOSSES[name](q, torch.tensor(t), ctx).backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_mse_to_spearman_schedule_ends_on_spearman():
    p, t = torch.rand(16), torch.rand(16)
    first = LOSSES["mse_to_spearman"](p, t, LossContext(epoch=0, epochs=5))
    last = LOSSES["mse_to_spearman"](p, t, LossContext(epoch=4, epochs=5))
    assert float(first) == pytest.approx(float(LOSSES["mse"](p, t, LossContext())))
    assert float(last) == pytest.approx(float(LOSSES["spearman"](p, t, LossContext())))


def test_metrics_by_hand():
    """Literal values worked out by hand, with ties (average ranks, Kendall's tau-b) and an asymmetric KL pair."""
    pred, true = np.array([1.0, 2.0, 2.0, 3.0]) / 4, np.array([1.0, 2.0, 3.0, 4.0]) / 4
    m = compute_metrics(pred, true)
    # ranks 1 2.5 2.5 4 against 1 2 3 4: centred (-1.5 0 0 1.5) . (-1.5 -.5 .5 1.5) = 4.5, norms^2 4.5 and 5
    assert m["spearman"] == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # 5 concordant pairs, 0 discordant, 1 tied in pred only: tau-b = 5 / sqrt((6 - 1) * 6)
    assert m["kendall"] == pytest.approx(5 / math.sqrt(30))
    assert m["mse"] == pytest.approx((0.25**2 + 0.25**2) / 4) and m["mae"] == pytest.approx(0.5 / 4)
    # histograms: truth half in bin 6, half in bin 57; prediction 3/4 and 1/4. KL(truth || prediction), not the reverse
    pred, true = np.array([0.1, 0.1, 0.1, 0.9]), np.array([0.1, 0.1, 0.9, 0.9])
    m = compute_metrics(pred, true)
    assert m["kl"] == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), rel=1e-6)
    assert 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5) != pytest.approx(m["kl"], rel=0.05)
    js = 0.5 * (0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375))
    js += 0.5 * (0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375))
    assert m["js"] == pytest.approx(js, rel=1e-6)
    assert compute_metrics(true, true)["kl"] == pytest.approx(0, abs=1e-9)


def test_divergences_of_histograms():
    p = histogram(np.array([0.1, 0.1, 0.9]))
    assert p.shape == (64,) and p.sum() == pytest.approx(1) and p[6] == pytest.approx(2 / 3)
    a, b = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert kl_divergence(a, b) == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), rel=1e-6)
    assert js_divergence(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(math.log(2), rel=1e-6)
    assert compute_metrics(np.full(5, 0.5), np.linspace(0, 1, 5))["spearman"] == 0.0  # constant: undefined -> 0


def test_paired_difference_of_two_models_on_the_same_videos():
    """The head-minus-baseline difference is the plain difference of Spearmans (mean over folds); its paired interval
    excludes 0 for a clearly better model, holds 0 for two equally noisy ones, is [0, 0] for identical predictions,
    and mirrors when the models swap (the same resamples)."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    good, bad, also_bad = y + 0.5 * rng.normal(size=400), y + 3 * rng.normal(size=400), y + 3 * rng.normal(size=400)
    d = paired_difference([good], [bad], [y])
    assert d["diff"] == pytest.approx(spearmanr(good, y)[0] - spearmanr(bad, y)[0], abs=1e-12)
    assert 0 < d["ci95"][0] < d["diff"] < d["ci95"][1]
    swapped = paired_difference([bad], [good], [y])
    assert swapped["diff"] == -d["diff"] and swapped["ci95"] == pytest.approx([-d["ci95"][1], -d["ci95"][0]], abs=1e-12)
    tie = paired_difference([bad], [also_bad], [y])
    assert tie["ci95"][0] < 0 < tie["ci95"][1]
    assert paired_difference([good], [good], [y]) == {"diff": 0.0, "ci95": [0.0, 0.0]}
    two = paired_difference([good, bad], [bad, bad], [y, y])  # folds: the mean of the per-fold differences
    assert two["diff"] == pytest.approx(d["diff"] / 2, abs=1e-12)
