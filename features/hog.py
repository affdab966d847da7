"""HOG descriptors exactly as scikit-image computes them (9 orientations, 8x8 cells, 2x2 blocks, L2-Hys,
``channel_axis=-1``), with OpenCV element-wise kernels, and the whitened PCA the raw tier projects them with.
See ``features/raw.py`` for how the ``hog`` feature uses them."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from features.store import Transform

HOG_ORIENTATIONS = 9
HOG_CELL = 8
HOG_BLOCK = 2
HOG_PCA_COMPONENTS = 10

# --------------------------------------------------------------------------- HOG (scikit-image compatible)


def _orientation_table(orientations: int) -> np.ndarray:
    """Bin of every integer gradient pair (g_row, g_col) in [-255, 255]^2, by scikit-image's float64 formula.

    Index ``[g_row + 255, g_col + 255]``; the value ``orientations`` means "no bin" (an angle that rounds to 180).
    """
    g = np.arange(-255, 256, dtype=np.float64)
    angle = np.rad2deg(np.arctan2(g[:, None], g[None, :])) % 180
    table = np.full(angle.shape, orientations, dtype=np.uint8)
    width = 180.0 / orientations
    for i in range(orientations):
        # scikit-image's cell_hog keeps angle in [width*i, width*(i+1)), bounds as C floats (exact here)
        lo, hi = np.float32(width * i), np.float32(width * (i + 1))
        table[(angle >= lo) & (angle < hi)] = i
    return table.ravel()


_ORIENT_TABLE = _orientation_table(HOG_ORIENTATIONS)


_ORIENT_TABLE_BY_CODE = np.roll(_ORIENT_TABLE, -(255 * 511 + 255))  # indexed by g_row*511 + g_col; negatives wrap
_DIFF_COLS = np.array([[-1, 0, 1]], np.float32)  # centred difference along columns (correlation, anchor 1)
_DIFF_ROWS = _DIFF_COLS.T.copy()
_HOG_INDEX_CACHE: dict[tuple, tuple[np.ndarray, int]] = {}
HOG_CHUNK = 3  # frames per pass: every temporary of a chunk stays in cache


def _hog_cell_index(T: int, H: int, W: int, cell: int) -> tuple[np.ndarray, int]:
    """Histogram slot of every pixel's bin 0 in a chunk of T frames, as (T*H, W) intp, and the slots per frame."""
    key = (T, H, W, cell)
    if key not in _HOG_INDEX_CACHE:
        n_cr, n_cc = H // cell, W // cell
        n_bins = HOG_ORIENTATIONS + 1  # the last one collects angles that fall in no bin, then is dropped
        cell_r = np.minimum(np.arange(H) // cell, n_cr)  # rows past the last full cell go to a dropped cell
        cell_c = np.minimum(np.arange(W) // cell, n_cc)
        per_frame = (n_cr + 1) * (n_cc + 1) * n_bins
        index = (cell_r[:, None] * (n_cc + 1) + cell_c[None, :]) * n_bins + (np.arange(T) * per_frame)[:, None, None]
        _HOG_INDEX_CACHE[key] = index.astype(np.intp).reshape(T * H, W), per_frame
    return _HOG_INDEX_CACHE[key]


def _hog_cell_histograms(frames: np.ndarray, cell: int) -> np.ndarray:
    """Unnormalised orientation histograms (sum of magnitudes) of every cell, flat float64 (T * per_frame,)."""
    T, H, W, C = frames.shape
    planes = cv2.split(np.ascontiguousarray(frames).reshape(T * H, W, C)) if C > 1 else [frames.reshape(T * H, W)]
    best = code = None
    for p in planes:
        # centred differences as exact float32 integers, zero on the border rows (g_row) / columns (g_col)
        g_row = cv2.filter2D(p, cv2.CV_32F, _DIFF_ROWS)
        g_row.reshape(T, H, W)[:, [0, H - 1]] = 0  # also drops the rows that straddled two stacked frames
        g_col = cv2.filter2D(p, cv2.CV_32F, _DIFF_COLS)
        g_col[:, [0, W - 1]] = 0
        mag2 = cv2.multiply(g_row, g_row)  # exact integer (<= 2 * 255^2), so ties are exact
        cv2.add(mag2, cv2.multiply(g_col, g_col), dst=mag2)
        pair = cv2.scaleAdd(g_row, 511.0, g_col)  # g_row*511 + g_col, exact
        if best is None:
            best, code = mag2, pair
        else:  # channel with the largest magnitude, the first one on ties (as argmax)
            cv2.copyTo(pair, cv2.compare(mag2, best, cv2.CMP_GT), code)
            cv2.max(best, mag2, dst=best)
    index, per_frame = _hog_cell_index(T, H, W, cell)
    index = index + _ORIENT_TABLE_BY_CODE[code.astype(np.int32)]
    return np.bincount(index.ravel(), weights=cv2.sqrt(best).ravel(), minlength=T * per_frame)


def hog_descriptors(frames: np.ndarray, cell: int = HOG_CELL, block: int = HOG_BLOCK) -> np.ndarray:
    """scikit-image ``hog(f, 9, (cell, cell), (block, block), 'L2-Hys', channel_axis=-1)`` of every frame.

    ``frames`` uint8 ``(T, H, W, C)`` -> float32 ``(T, n_blocks_r * n_blocks_c * block * block * 9)``. Computed
    ``HOG_CHUNK`` frames at a time (OpenCV element-wise kernels on the stacked frames, one ``np.bincount``); the
    gradients, squared magnitudes and channel choice are exact integers, the bins come from the exact table.
    """
    T, H, W, _ = frames.shape
    n_cr, n_cc = H // cell, W // cell
    hist = np.concatenate([_hog_cell_histograms(frames[s : s + HOG_CHUNK], cell) for s in range(0, T, HOG_CHUNK)])
    hist = hist.reshape(T, n_cr + 1, n_cc + 1, HOG_ORIENTATIONS + 1)[:, :n_cr, :n_cc, :HOG_ORIENTATIONS]
    hist = hist.astype(np.float32) * np.float32(1 / (cell * cell))

    # blocks of block x block cells, L2-Hys: (T, n_br, n_bc, block, block, 9)
    n_br, n_bc = n_cr - block + 1, n_cc - block + 1
    blocks = np.empty((T, n_br, n_bc, block, block, HOG_ORIENTATIONS), np.float32)
    for r in range(block):
        for c in range(block):
            blocks[:, :, :, r, c] = hist[:, r : r + n_br, c : c + n_bc]
    flat = blocks.reshape(T * n_br * n_bc, -1)
    eps2 = np.float32(1e-5**2)
    flat *= (1 / np.sqrt(np.einsum("ij,ij->i", flat, flat) + eps2))[:, None]
    np.minimum(flat, np.float32(0.2), out=flat)
    flat *= (1 / np.sqrt(np.einsum("ij,ij->i", flat, flat) + eps2))[:, None]
    return blocks.reshape(T, -1)


@dataclass
class HogPCA:
    """PCA to ``k`` whitened components: ``z = (x - mean) @ components.T / scale``."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), unit rows, sign fixed so the largest-|.| entry of each row is positive
    scale: np.ndarray  # (k,) sqrt of the explained variance (ddof 1, as scikit-learn)

    @classmethod
    @threadpool_limits.wrap(limits=1)
    def fit(cls, x: np.ndarray, k: int = HOG_PCA_COMPONENTS) -> HogPCA:
        """Exact PCA of ``x`` (N, D) by the eigen-decomposition of the N x N Gram matrix (N << D), in float64.

        On one BLAS thread: OpenBLAS's Gram product and eigh round differently with 1, 2 or 16 threads (1e-17 apart
        from 300 videos up), and the store is promised byte-identical whichever process writes it (a resumed run, a
        torchrun rank, a worker). Measured on one core: 7000 Memento10k videos take about a minute, once per dataset."""
        n = x.shape[0]
        if n <= k:
            raise ValueError(f"the HOG PCA needs more than {k} training videos, found {n}")
        mean = x.mean(axis=0, dtype=np.float64)
        xc = x.astype(np.float64) - mean
        eigval, eigvec = np.linalg.eigh(xc @ xc.T)  # ascending
        eigval, eigvec = eigval[::-1][:k], eigvec[:, ::-1][:, :k]
        if eigval[-1] <= 1e-12 * max(eigval[0], 1e-300):
            raise ValueError(f"the training HOG descriptors span fewer than {k} dimensions: cannot whiten")
        components = (eigvec.T @ xc) / np.sqrt(eigval)[:, None]  # (k, D), unit rows
        signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
        components *= signs[:, None]
        return cls(mean, components, np.sqrt(eigval / (n - 1)))

    @threadpool_limits.wrap(limits=1)  # byte-identical whoever projects it: see fit()
    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float64) - self.mean) @ self.components.T) / self.scale

    def to_transform(self, info: dict) -> Transform:
        arrays = {"mean": self.mean, "components": self.components, "scale": self.scale}
        return Transform({k: v.astype(np.float64) for k, v in arrays.items()}, info)

    @classmethod
    def from_transform(cls, t: Transform) -> HogPCA:
        return cls(t.arrays["mean"], t.arrays["components"], t.arrays["scale"])
