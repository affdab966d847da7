"""t-SNE to 3-d for the similarity tier's DBSCAN clusters, with the exact repulsion in one fused kernel.

The objective and the optimiser are scikit-learn's (the reference ran ``TSNE(3)`` of scikit-learn 0.24): input
affinities from the ``3 * perplexity + 1`` nearest neighbours (squared euclidean distances, a binary search per row
to the perplexity, symmetrised and normalised), a Student-t kernel with ``n_components - 1 = 2`` degrees of freedom,
``1e-4 * N(0, 1)`` initialisation from ``RandomState(seed)``, early exaggeration 12 with momentum 0.5 for 250
iterations then momentum 0.8, delta-bar-delta gains (min 0.01), learning rate 200, 1000 iterations in all.

What differs: scikit-learn approximates the repulsive forces with a Barnes-Hut octree (angle 0.5); here they are
computed exactly, over every pair, by a numba kernel that fuses the kernel, the normaliser and the force sums in one
pass and runs over the cores. It is the exact gradient, and on 2 cores 6.8x faster than scikit-learn's octree on the
real VideoMem features (6400 videos: 17.4 s vs 117.9 s) and 7.6-9.3x on Memento10k-sized synthetic ones
(``bench/similarity_speed.py``). Barnes-Hut's embedding is a little tighter, so DBSCAN with the reference's eps finds
clusters of the same kind, not the same ones (README, Features). It is quadratic: 41 M pairs an iteration for 6400
videos (12 ms of repulsion on our 2 cores); for 45,000 (LaMem-sized) about 2 G, roughly 0.6 s an iteration at that
rate (estimated, not measured), where Barnes-Hut's N log N would be close. Every run with the same seed gives the same
embedding on one machine (each point's sums run in a fixed order), whatever the thread count; it also runs every
iteration (scikit-learn may stop early when its error stalls, which it rarely does within 1000 iterations).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from core.device import available_cores

N_COMPONENTS = 3  # the reference's; the kernels below are written for it
DOF = max(N_COMPONENTS - 1, 1)  # scikit-learn's degrees of freedom of the Student-t kernel
EXAGGERATION, EXPLORATION_ITER = 12.0, 250
MOMENTUM = (0.5, 0.8)  # during / after early exaggeration
MIN_GAIN = 0.01


@numba.njit(fastmath=True, inline="always")
def _kernel(d2):
    """The Student-t kernel with ``DOF = 2`` degrees of freedom: ``(1 + d2 / 2) ** -1.5``."""
    t = np.float32(2.0) / (np.float32(2.0) + d2)
    return t * np.sqrt(t)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _repulsion(y: np.ndarray, out: np.ndarray) -> float:
    """``out[:, i] = sum_{j != i} q_ij^2 (y_i - y_j)`` over every pair, for ``y`` of shape (3, N); returns
    ``Z = sum_{i != j} q_ij``. One thread owns each row ``i`` and sums it in index order, so the result does not
    depend on the thread count. (Computing each pair once and scattering its force to ``j`` too halves the
    arithmetic but stops the loop from vectorising: 65 vs 12 ms an iteration at 6400 points, measured one after the
    other.)"""
    n = y.shape[1]
    y0, y1, y2 = y[0], y[1], y[2]
    z = np.zeros(n)
    for i in numba.prange(n):
        a0, a1, a2 = y0[i], y1[i], y2[i]
        f0 = f1 = f2 = zi = np.float32(0.0)
        for j in range(n):
            d0, d1, d2 = a0 - y0[j], a1 - y1[j], a2 - y2[j]
            q = _kernel(d0 * d0 + d1 * d1 + d2 * d2)
            zi += q
            q2 = q * q
            f0 += q2 * d0
            f1 += q2 * d1
            f2 += q2 * d2
        out[0, i], out[1, i], out[2, i] = f0, f1, f2
        z[i] = zi - np.float32(1.0)  # q_ii = 1 is not a pair
    return z.sum()


@numba.njit(parallel=True, fastmath=True, cache=True)
def _attraction(y: np.ndarray, indptr: np.ndarray, indices: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
    """``out[:, i] = sum_j p_ij q_ij (y_i - y_j)`` over the sparse (CSR) affinities."""
    for i in numba.prange(y.shape[1]):
        f0 = f1 = f2 = np.float32(0.0)
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            d0, d1, d2 = y[0, i] - y[0, j], y[1, i] - y[1, j], y[2, i] - y[2, j]
            pq = p[k] * _kernel(d0 * d0 + d1 * d1 + d2 * d2)
            f0 += pq * d0
            f1 += pq * d1
            f2 += pq * d2
        out[0, i], out[1, i], out[2, i] = f0, f1, f2


def _conditional_p(d2: np.ndarray, perplexity: float, steps: int = 100, tol: float = 1e-5) -> np.ndarray:
    """Row-wise Gaussian affinities over the neighbours' squared distances ``d2`` (N, k), each row's precision found by
    bisection so that its entropy is ``log(perplexity)`` (scikit-learn's search, vectorised over the rows)."""
    n = len(d2)
    beta, lo, hi = np.ones(n), np.full(n, -np.inf), np.full(n, np.inf)
    target = np.log(perplexity)
    for _ in range(steps):
        p = np.exp(-d2 * beta[:, None])
        total = np.maximum(p.sum(axis=1), 1e-8)
        entropy = np.log(total) + beta * (d2 * p).sum(axis=1) / total
        p /= total[:, None]
        diff = entropy - target
        if np.all(np.abs(diff) <= tol):
            break
        up = diff > 0  # too flat: sharpen
        lo, hi = np.where(up, beta, lo), np.where(up, hi, beta)
        beta = np.where(
            up,
            np.where(np.isinf(hi), beta * 2, (beta + hi) / 2),
            np.where(np.isinf(lo), beta / 2, (beta + lo) / 2),
        )
    return p


def joint_p(x: np.ndarray, perplexity: float) -> sp.csr_array:
    """Symmetric, normalised input affinities over each point's ``3 * perplexity + 1`` nearest neighbours."""
    from sklearn.neighbors import NearestNeighbors  # lazy, as in features/similarity.py

    n = len(x)
    k = min(n - 1, int(3.0 * perplexity + 1))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
    cond = _conditional_p(dist.astype(np.float64) ** 2, perplexity)
    p = sp.csr_array((cond.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    p = p + p.T
    return p / max(p.sum(), np.finfo(np.float64).eps)


class _Affinities:
    """The joint affinities in the float32 CSR arrays the kernels read."""

    def __init__(self, p: sp.csr_array) -> None:
        self.indptr, self.indices = p.indptr.astype(np.int64), p.indices.astype(np.int64)
        self.values = p.data.astype(np.float32)


def gradient(y: np.ndarray, p: _Affinities, exaggeration: float = 1.0) -> np.ndarray:
    """The gradient (3, N) of the objective at ``y`` (3, N): ``c * sum_j (e * p_ij - q_ij) w_ij (y_i - y_j)``, with
    ``w`` the kernel, ``q = w / Z``, ``e`` the exaggeration and ``c = 2 (dof + 1) / dof`` (scikit-learn's)."""
    pos, neg = np.empty_like(y), np.empty_like(y)
    _attraction(y, p.indptr, p.indices, p.values * np.float32(exaggeration), pos)
    z = _repulsion(y, neg)
    return np.float32(2.0 * (DOF + 1.0) / DOF) * (pos - neg / np.float32(z))


def embed(x: np.ndarray, seed: int, perplexity: float = 30.0, learning_rate: float = 200.0, max_iter: int = 1000,
          threads: int | None = None) -> np.ndarray:  # fmt: skip
    """The 3-d t-SNE embedding (N, 3) of the rows of ``x``, on ``threads`` threads (default: the cores this process
    may use)."""
    n = len(x)
    if n < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {n}")
    numba.set_num_threads(max(1, min(threads or available_cores(), numba.config.NUMBA_NUM_THREADS)))
    p = _Affinities(joint_p(x, perplexity))
    y = (1e-4 * np.random.RandomState(seed).standard_normal((n, N_COMPONENTS))).astype(np.float32).T.copy()
    update, gains = np.zeros_like(y), np.ones_like(y)
    for it in range(max_iter):
        exploring = it < EXPLORATION_ITER
        grad = gradient(y, p, EXAGGERATION if exploring else 1.0)
        inc = update * grad < 0
        gains = np.maximum(np.where(inc, gains + 0.2, gains * 0.8), MIN_GAIN).astype(np.float32)
        update = MOMENTUM[0 if exploring else 1] * update - learning_rate * gains * grad
        y += update
    return y.T.copy()
