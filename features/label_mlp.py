"""The classifier that carries DBSCAN's cluster labels from the training videos to any other video.

The reference's model and training (scikit-learn's ``MLPClassifier((100,), relu, adam, alpha=1e-4, max_iter=500)``):
one hidden layer of 100 ReLU units, a softmax output, Glorot-uniform initialisation, Adam (lr 1e-3) over shuffled
mini-batches of 200 with the L2 penalty ``alpha / 2 * |W|^2`` divided by the batch size, for at most 500 epochs,
stopping once the epoch's training loss has not improved by 1e-4 for more than 10 epochs.

Why not scikit-learn's class: on the 255 clusters DBSCAN finds in ``bench/similarity_speed.py``'s 720-d space
(7000 videos) it took 40.3 s, this float32 torch loop (gradients written out, fused Adam, one thread, denormals
flushed) 25.6 s, measured one after the other: a step is four small matrix products, which more threads do not speed
up. The weights come back as plain arrays (``w0, b0, w1, b1``: ``x @ w0 + b0``, ReLU, ``@ w1 + b1``), the layout
``DBSCANClusters.predict`` reads.
"""

from __future__ import annotations

import numpy as np
import torch

HIDDEN, ALPHA, LR, BATCH, MAX_EPOCHS, TOL, PATIENCE = 100, 1e-4, 1e-3, 200, 500, 1e-4, 10


def _glorot(fan_in: int, fan_out: int, gen: torch.Generator) -> list[torch.Tensor]:
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    return [(torch.rand(shape, generator=gen) * 2 - 1) * bound for shape in ((fan_in, fan_out), fan_out)]


@torch.no_grad()
def _train(x: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor], gen: torch.Generator, max_epochs: int) -> None:
    """Mini-batch Adam with the gradients written out (1.5-2x faster than autograd's bookkeeping at this size)."""
    w0, b0, w1, b1 = params
    opt = torch.optim.Adam(params, lr=LR, fused=True)
    best, stale = np.inf, 0
    for _ in range(max_epochs):
        order, total = torch.randperm(len(x), generator=gen), torch.zeros((), dtype=torch.float64)
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            n, xb, rows, target = len(idx), x[idx], torch.arange(len(idx)), y[idx]
            pre = torch.addmm(b0, xb, w0)
            h = pre.clamp_min(0)
            logp = torch.log_softmax(torch.addmm(b1, h, w1), dim=1)
            penalty = 0.5 * ALPHA * (w0.square().sum() + w1.square().sum())
            total += penalty - logp[rows, target].sum()  # n * (mean cross-entropy + penalty / n)
            dlogits = logp.exp_()  # softmax - one-hot, over n: d(loss) / d(logits)
            dlogits[rows, target] -= 1
            dlogits /= n
            w1.grad, b1.grad = torch.addmm(w1, h.T, dlogits, beta=ALPHA / n), dlogits.sum(0)
            dpre = (dlogits @ w1.T).mul_(pre > 0)
            w0.grad, b0.grad = torch.addmm(w0, xb.T, dpre, beta=ALPHA / n), dpre.sum(0)
            opt.step()
        epoch_loss = float(total) / len(x)
        stale = stale + 1 if epoch_loss > best - TOL else 0
        best = min(best, epoch_loss)
        if stale > PATIENCE:
            return


def fit(x: np.ndarray, labels: np.ndarray, seed: int, max_epochs: int = MAX_EPOCHS) -> dict[str, np.ndarray]:
    """Train on rows ``x`` (N, D) with integer ``labels`` (N,); returns ``classes`` (sorted labels) and the weights."""
    classes, target = np.unique(labels, return_inverse=True)
    gen = torch.Generator().manual_seed(seed)
    params = _glorot(x.shape[1], HIDDEN, gen) + _glorot(HIDDEN, len(classes), gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # Adam's second moments of rare classes decay into denormals: 3x slower without
    try:
        _train(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(target), params, gen, max_epochs)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)  # torch has no getter for the previous state; False is its default
    arrays = dict(zip(("w0", "b0", "w1", "b1"), (p.double().numpy() for p in params), strict=True))
    return arrays | {"classes": classes}
