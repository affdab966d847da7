"""What the SVR's selection criterion buys, on the train videos only: each real dev set's train rows split 3-fold
(twice, two seeds); on each outer fold m3s's SVR (``model.kernels.fit_svr``, its own 3-fold CV inside) is fitted
with its hyper-parameters chosen by the CV's least squared error (m3s's rule) and by its best Spearman (the old
rule), and Ridge beside them; the number is the Spearman on the held-out outer fold, the mean over the 6 folds, and
the two rules' paired difference fold by fold.
Val is never read.

    python bench/svr_selection.py [--sets videomem_coco80 trecvid_text_minilm ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from recipe_realdata import REAL, SETS, _videomem_scores  # noqa: E402

from model.heads import KernelHead, LinearHead  # noqa: E402
from model.kernels import CRITERIA, SVR_MAX_CV, fit_ridge, fit_svr, spearman  # noqa: E402

#: the real sets with distinct train rows (trecvid_as_minilm's train videos and features are trecvid_text_minilm's)
REAL_SETS = [name for name, (npz, _) in SETS.items() if npz is not None and name != "trecvid_as_minilm"]


def train_rows(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The set's train rows (at most ``SVR_MAX_CV``, seeded, as the SVR's own CV would take)."""
    npz, keys = SETS[name]
    d = np.load(REAL / npz)
    y = _videomem_scores(d["ids"]) if "y" not in d.files else d["y"]
    keep = np.flatnonzero(d["split"] == "train")
    keep = keep[np.random.default_rng(0).permutation(len(keep))[:SVR_MAX_CV]]
    return np.concatenate([d[k] for k in keys], 1)[keep].astype(np.float64), np.asarray(y, np.float64)[keep]


def held_out(x: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Outer-fold Spearman of the SVR under each criterion and of Ridge, and the SVR's chosen cells."""
    import torch
    from sklearn.model_selection import KFold

    out: dict[str, list] = {f"svr ({c})": [] for c in CRITERIA} | {"ridge": []}
    dims = {"x": x.shape[1]}
    for seed in (0, 1):
        for tr, te in KFold(3, shuffle=True, random_state=seed).split(x):
            xt = torch.from_numpy(x[te].astype(np.float32))
            for c in CRITERIA:
                fit = fit_svr(x[tr], y[tr], seed, criterion=c)
                out[f"svr ({c})"].append(spearman(KernelHead(dims, fit)(xt).numpy(), y[te]))
            out["ridge"].append(spearman(LinearHead(dims, fit_ridge(x[tr], y[tr]))(xt).numpy(), y[te]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=REAL_SETS, choices=REAL_SETS)
    args = ap.parse_args()
    heads = [*(f"svr ({c})" for c in CRITERIA), "ridge", "mse - spearman"]
    print(f"{'dev set (train rows)':34s} " + "  ".join(f"{k:>15s}" for k in heads) + "  (mean +- s.e. over folds)")
    for name in args.sets:
        t0 = time.perf_counter()
        x, y = train_rows(name)
        res = held_out(x, y)
        res["mse - spearman"] = np.subtract(res["svr (mse)"], res["svr (spearman)"])  # paired: the same folds
        cells = "  ".join(f"{np.mean(v):8.3f} +-{np.std(v) / np.sqrt(len(v)):.3f}" for v in res.values())
        print(f"{name + f' ({len(y)})':34s} {cells}   {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
