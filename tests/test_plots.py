"""The run's plots say what they show: split, n, rho and epoch (counted from 1), the loss by name, the best epoch."""

import numpy as np
from matplotlib.figure import Figure

from pipeline.run import plots


def _history(n=12, first=50.0):
    return [{"epoch": e, "train_loss": first if e == 0 else 0.02 + 0.01 / (e + 1), "val_loss": 0.03 + 0.001 * e,
             "val_spearman": 0.3 + 0.02 * e, "val_kendall": 0.2 + 0.01 * e} for e in range(n)]  # fmt: skip


def _texts(fig: Figure) -> str:
    return " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def test_plots_state_what_they_show(tmp_path, monkeypatch):
    saved: dict[str, Figure] = {}
    real = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, path, **k: saved.setdefault(path.name, self) and real(self, path, **k)
    )
    true = np.random.default_rng(0).uniform(0.6, 0.95, 45)
    paths = plots.plot_run(tmp_path, _history(), true, true * 0.5 + 0.4, "demo", 6, "mse_tails")
    assert [p.name for p in paths] == list(plots.PLOTS) and all(p.stat().st_size > 0 for p in paths)
    scatter = _texts(saved["scatter_val.png"])
    assert "Spearman rho = 1.000" in scatter and "n = 45 val videos" in scatter and "best epoch 7 of 12" in scatter
    hist = saved["histograms_val.png"].axes[0]
    lo, hi = hist.get_xlim()
    assert 0.55 < lo and hi < 0.97 and "epoch 7" in hist.get_title()  # the axis spans the data, not 0-1
    loss_ax, rank_ax = saved["learning_curves.png"].axes
    assert loss_ax.get_yscale() == "log" and "mse_tails" in loss_ax.get_title()  # epoch 1 dwarfs the rest
    assert "best epoch 7 (Spearman 0.420)" in _texts(saved["learning_curves.png"])
    assert loss_ax.lines[0].get_xdata()[0] == 1  # counted from 1


def test_linear_loss_axis_when_no_epoch_dwarfs_the_rest(tmp_path, monkeypatch):
    saved: dict[str, Figure] = {}
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **k: saved.setdefault(path.name, self))
    plots.plot_run(tmp_path, _history(first=0.05), np.linspace(0, 1, 9), np.linspace(0.2, 0.8, 9), "x", 0, "mse")
    assert saved["learning_curves.png"].axes[0].get_yscale() == "linear"
