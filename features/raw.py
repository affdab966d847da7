"""The raw (low-level) tier: six features per video, one function each in ``RAW_FEATURES``.

Every function takes the decoded clip (RGB uint8 ``(T, 256, 256, 3)``, squash-resized on every dataset as the
M3-S reference did) and returns either one row per frame ``(T, d)`` (``per_frame=True``: summarised by the mean,
stored as ``<name>``, and the standard deviation over frames (ddof 0), stored as ``<name>_std``) or one vector per
video ``(d,)`` (no std). Stored names and dims: ``hog`` 10, ``hog_std`` 10, ``brightness``, ``brightness_std``,
``contrast``, ``contrast_std``, ``blurriness``, ``blurriness_std``, ``meanOF``, ``size_orig`` (1 each). Nothing is
normalised here: the training side fits the normalisation on the train split.

- ``hog``: scikit-image's HOG (9 orientations, 8x8 cells, 2x2 blocks, L2-Hys, ``channel_axis=-1``: at each pixel
  the gradient of the channel with the largest magnitude, first channel on ties), re-implemented with OpenCV
  element-wise kernels and one ``np.bincount`` per few frames, and checked against ``skimage.feature.hog`` in the
  tests (2e-6). Orientation bins are looked up
  in a table built with scikit-image's own float64 formula over every integer gradient pair, so the binning is
  exact, edges included. Then PCA to 10 whitened components.
- ``brightness``: mean of the HSV V channel (max of R, G, B), 0-255.
- ``contrast``: standard deviation of the grey level (OpenCV's RGB2GRAY), 0-255.
- ``blurriness``: resize to width 500 keeping the aspect (``INTER_AREA``, as ``imutils.resize``), grey, FFT, shift,
  zero the 120x120 square around DC (frequencies -60..59 on each axis), inverse FFT, mean of ``20*ln|x|``. |x| is
  floored at ``BLUR_FLOOR`` so that a flat frame gives a finite, precision-independent value instead of -inf.
- ``meanOF``: mean magnitude of dense Farneback flow between consecutive sampled frames, computed on grey frames
  downscaled to ``FLOW_SIZE`` (80x80, ``INTER_AREA``) with ``FLOW_PARAMS`` (3 pyramid levels, 15-pixel windows,
  1 iteration per level) and expressed in pixels of the 256x256 frame (x 256/80). The reference never computed this
  feature for videos, so the definition is ours; resolution and iterations are a speed choice (OpenCV's Farneback
  costs ~0.1 us per pixel per pair): 31 ms per 45-frame clip instead of 117 ms for 128x128 with 3 iterations. On 54
  synthetic clips (the demo corpus's moving discs and drifting stripes, translations, moving squares) it ranks the
  clips as 128x128/3 iterations does with Spearman 0.95 (median ratio 1.005); a 6-pixel translation reads 5.4
  (5.2 at 128x128).
- ``size_orig``: bytes of the original file's compressed video stream (PyAV packet sizes; audio and container
  excluded). For a ``videos_npy/<stem>.npy`` input it is measured on ``videos/<stem>.mp4`` of the official layout;
  when that original is absent the video FAILS with a clear reason (the .npy size is the same for every clip and
  would be a silent constant, so we refuse it rather than store something that is not the feature).

**How the HOG PCA is fitted without storing 34,596-d descriptors per frame: two passes.** The PCA must be fitted
on the first (sampled) frame of every *training* video before ``hog``/``hog_std`` can be computed, because the
temporal std of the projection is not a function of any small per-video statistic of the raw descriptors.
So before extraction, ``prepare`` decodes only the first sampled frame of each training video (cheap: no other
frame is converted), computes its descriptor, fits the PCA (exact SVD, float64) and saves it in the store as the
fitted transform ``hog_pca`` (arrays ``mean`` (D,), ``components`` (10, D), ``scale`` (10,) = sqrt of the
explained variance; info: settings, the number and a hash of the training ids). Extraction then projects every
frame, ``z = (x - mean) @ components.T / scale``, and stores the mean and std of ``z`` over frames. A resumed run
reuses the stored transform; a transform fitted on other training videos is refused. ``fit`` (after extraction)
only checks that the stored transform matches the final training ids. Memory of the fit: ``N_train x 34,596``
float32 (about 1 GB for Memento10k's 7000 training videos).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.fft

from features.base import Clip, Extractor, FrameSpec, register
from features.store import FeatureStore, StoredFeatures, StoreError, Transform
from features.video import VideoError, original_video, video_stream_bytes

HOG_ORIENTATIONS = 9
HOG_CELL = 8
HOG_BLOCK = 2
HOG_PCA_COMPONENTS = 10
BLUR_WIDTH = 500
BLUR_RADIUS = 60  # half-side of the zeroed square around DC
BLUR_FLOOR = 1e-3
FLOW_SIZE = 80
FLOW_PARAMS = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 1, "poly_n": 5, "poly_sigma": 1.2}

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


def _hog_cell_index(T: int, H: int, W: int, cell: int) -> tuple[np.ndarray, int]:  # noqa: N803
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
    T, H, W, C = frames.shape  # noqa: N806
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
    T, H, W, _ = frames.shape  # noqa: N806
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
    def fit(cls, x: np.ndarray, k: int = HOG_PCA_COMPONENTS) -> HogPCA:
        """Exact PCA of ``x`` (N, D) by the eigen-decomposition of the N x N Gram matrix (N << D), in float64."""
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

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float64) - self.mean) @ self.components.T) / self.scale

    def to_transform(self, info: dict) -> Transform:
        arrays = {"mean": self.mean, "components": self.components, "scale": self.scale}
        return Transform({k: v.astype(np.float64) for k, v in arrays.items()}, info)

    @classmethod
    def from_transform(cls, t: Transform) -> HogPCA:
        return cls(t.arrays["mean"], t.arrays["components"], t.arrays["scale"])


# --------------------------------------------------------------------------- the six features


@dataclass(frozen=True)
class RawFeature:
    fn: Callable[[Clip, dict], np.ndarray]  # (clip, context) -> (T, dim) if per_frame else (dim,)
    dim: int
    per_frame: bool


def hog_feature(clip: Clip, ctx: dict) -> np.ndarray:
    """(T, 10): the whitened PCA projection of every frame's HOG descriptor."""
    pca: HogPCA | None = ctx.get("hog_pca")
    if pca is None:
        raise RuntimeError("the HOG PCA is not fitted: the extraction loop fits it before extract()")
    return pca.transform(hog_descriptors(clip.frames))


def brightness(clip: Clip, ctx: dict) -> np.ndarray:
    """(T, 1): mean of HSV V = max(R, G, B) (exact integer sums per frame)."""
    f = clip.frames
    T, H, W, _ = f.shape  # noqa: N806
    r, g, b = cv2.split(np.ascontiguousarray(f).reshape(T * H, W, 3))
    v = cv2.max(cv2.max(r, g), b).reshape(T, H * W)
    return cv2.reduce(v, 1, cv2.REDUCE_SUM, dtype=cv2.CV_64F) / (H * W)


def _grey(frames: np.ndarray) -> np.ndarray:
    T, H, W, _ = frames.shape  # noqa: N806
    return cv2.cvtColor(frames.reshape(T * H, W, 3), cv2.COLOR_RGB2GRAY).reshape(T, H, W)


def contrast(clip: Clip, ctx: dict) -> np.ndarray:
    """(T, 1): standard deviation of the grey level (population, ddof 0)."""
    g = ctx.get("grey")
    g = _grey(clip.frames) if g is None else g
    return np.array([cv2.meanStdDev(frame)[1][0] for frame in g])


_STACKED_RESIZE_OK: dict[tuple, bool] = {}


def _resize_frames(frames: np.ndarray, w: int, h: int) -> np.ndarray:
    """``cv2.resize(f, (w, h), INTER_AREA)`` of every frame of (T, H, W, C) uint8, bit-exact.

    One call on the frames stacked vertically is twice as fast as T calls; it is bit-identical to the per-frame
    calls whenever OpenCV's row mapping of the stack tiles the per-frame one, which is checked once per shape on a
    random probe (falling back to per-frame calls otherwise)."""
    T, H, W, C = frames.shape  # noqa: N806
    key = (T, H, W, C, w, h)
    ok = _STACKED_RESIZE_OK.get(key)
    if ok is None:
        probe = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
        per_frame = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in probe])
        stacked = cv2.resize(probe.reshape(T * H, W, C), (w, T * h), interpolation=cv2.INTER_AREA)
        ok = _STACKED_RESIZE_OK[key] = bool(np.array_equal(stacked.reshape(per_frame.shape), per_frame))
    if ok:
        stacked = cv2.resize(
            np.ascontiguousarray(frames).reshape(T * H, W, C), (w, T * h), interpolation=cv2.INTER_AREA
        )
        return stacked.reshape(T, h, w, C)
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def _blur_lowpass_masks(nr: int, nc: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the low-pass spectrum's Hermitian part on the half plane l = 0..r, and the rows kept."""
    k = np.rint(np.fft.fftfreq(nr, 1.0 / nr)).astype(np.int64)  # signed frequency of each row index
    in_k = (k >= -r) & (k <= r - 1)  # the zeroed square's rows: -r..r-1
    in_mirror = (k >= -r + 1) & (k <= r)  # rows whose mirror -k is zeroed
    ms = (in_k[:, None] & (np.arange(r + 1) <= r - 1)[None, :]).astype(np.float32) + in_mirror[:, None]
    return ms / 2, in_k | in_mirror


def _blur_log_power(grey: np.ndarray, r: int) -> np.ndarray:
    """Per frame of ``grey`` (T, nr, nc) uint8, the mean of ``20 ln max(|ifft2(fft2(g) * (1 - M))|, BLUR_FLOOR)``,
    M = the square of frequencies -r..r-1 on both axes (the reference's zeroed 2r x 2r square of the shifted
    spectrum, ``np.fft.fftshift`` centre conventions, odd sizes included). Needs both sizes > 2r.

    Same value as two full complex FFTs, to float32 rounding (about 1e-6 relative), at a fraction of the cost:
    the high-pass image is ``g - L`` with L the low-pass part ``ifft2(fft2(g) * M)``. M is not symmetric (-r is in
    it, +r is not), so L is complex. Its real part is the inverse of the Hermitian spectrum ``F * (M + M(-.))/2``,
    which is nonzero only for |k|, |l| <= r: real row DFTs (OpenCV, packed CCS) of which only bins 0..r are kept,
    column DFTs of those r + 1 columns, and back the same way (real inverse row DFTs of r + 1 nonzero bins). Its
    imaginary part comes only from the frequencies with k = -r or l = -r (whose mirror is not in M): two rank-1
    terms, ``Im(u_r (x) a + b (x) u_c)`` with ``u = exp(-2 pi i r m / n)``. Frame by frame, so that every
    temporary stays in cache."""
    T, nr, nc = grey.shape  # noqa: N806
    ms, _ = _blur_lowpass_masks(nr, nc, r)
    ms = (ms / nc).astype(np.float32)  # scipy's column inverse divides by nr; OpenCV's row inverse does not scale
    ur = np.exp(-2j * np.pi * r * np.arange(nr) / nr)
    uc = np.exp(-2j * np.pi * r * np.arange(nc) / nc)
    k = np.arange(-r + 1, r)
    # Im L = left @ right, rank 4: [Re u_r, Im u_r, Re b, Im b] @ [Im a; Re a; Im u_c; Re u_c]
    left = np.empty((nr, 4), np.float32)
    left[:, 0], left[:, 1] = ur.real, ur.imag
    right = np.empty((4, nc), np.float32)
    right[2], right[3] = uc.imag, uc.real
    g = np.empty((nr, nc), np.float32)
    half = np.empty((nr, r + 1), np.complex64)
    packed = np.zeros((nr, nc), np.float32)  # CCS rows: Re0, Re1, Im1, ..., only the first 2r + 1 ever nonzero
    row = np.zeros(nc, np.complex128)
    col = np.zeros(nr, np.complex128)
    out = np.empty(T)
    for t in range(T):
        g[:] = grey[t]
        ccs = cv2.dft(g, flags=cv2.DFT_ROWS)
        half[:, 0] = ccs[:, 0]
        half[:, 1:] = ccs[:, 1 : 2 * r + 1].view(np.complex64)
        spec = scipy.fft.fft(half, axis=0, workers=1)  # F(k, l), l = 0..r
        cols = scipy.fft.ifft(spec * ms, axis=0, workers=1, overwrite_x=True)
        packed[:, 0] = cols[:, 0].real
        packed[:, 1 : 2 * r + 1].view(np.complex64)[:] = cols[:, 1:]
        low_real = cv2.dft(packed, flags=cv2.DFT_ROWS | cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT)
        # a: row k = -r, l = -r..r-1; b: column l = -r, k = -r+1..r-1; F(k, -l) = conj F(-k, l)
        row[:r] = spec[nr - r, :r]
        row[nc - r :] = np.conj(spec[r, r:0:-1])
        a = np.fft.ifft(row) / nr
        col[k % nr] = np.conj(spec[(-k) % nr, r])
        b = np.fft.ifft(col) / nc
        left[:, 2], left[:, 3] = b.real, b.imag
        right[0], right[1] = a.imag, a.real
        m = cv2.magnitude(cv2.subtract(g, low_real), left @ right)
        cv2.max(m, BLUR_FLOOR, dst=m)
        cv2.log(m, dst=m)
        out[t] = cv2.sumElems(m)[0]
    return out * (20.0 / (nr * nc))


def _blur_log_power_full(grey: np.ndarray, r: int) -> np.ndarray:
    """The same by two full complex FFTs (any size; used when a side is <= 2r)."""
    T, nr, nc = grey.shape  # noqa: N806
    spec = scipy.fft.fft2(grey, axes=(1, 2), workers=1)
    rows = np.r_[0:r, nr - r : nr]
    cols = np.r_[0:r, nc - r : nc]
    spec[:, rows[:, None], cols[None, :]] = 0
    recon = scipy.fft.ifft2(spec, axes=(1, 2), workers=1)
    power = recon.real**2 + recon.imag**2
    np.maximum(power, BLUR_FLOOR**2, out=power)
    return (10.0 * np.log(power)).reshape(T, -1).mean(axis=1, dtype=np.float64)


def blurriness(clip: Clip, ctx: dict) -> np.ndarray:
    """(T, 1): mean log-magnitude of the high-pass (DC square removed) image at width 500; high = sharp."""
    T, H, W, _ = clip.frames.shape  # noqa: N806
    h = int(H * BLUR_WIDTH / W)  # imutils.resize: int(h * width / w)
    grey = _grey(_resize_frames(clip.frames, BLUR_WIDTH, h))  # (T, h, 500) uint8
    if min(h, BLUR_WIDTH) > 2 * BLUR_RADIUS:
        return _blur_log_power(grey, BLUR_RADIUS)[:, None]
    return _blur_log_power_full(grey.astype(np.float32), BLUR_RADIUS)[:, None]


def mean_optical_flow(clip: Clip, ctx: dict) -> np.ndarray:
    """(1,): mean Farneback flow magnitude between consecutive frames, in pixels of the input frame."""
    g = ctx.get("grey")
    g = _grey(clip.frames) if g is None else g
    H, W = g.shape[1:]  # noqa: N806
    small = [cv2.resize(f, (FLOW_SIZE, FLOW_SIZE), interpolation=cv2.INTER_AREA) for f in g]
    mags = []
    for a, b in zip(small[:-1], small[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, flags=0, **FLOW_PARAMS)  # (h, w, 2) in small pixels
        flow[..., 0] *= W / FLOW_SIZE
        flow[..., 1] *= H / FLOW_SIZE
        mags.append(cv2.magnitude(flow[..., 0], flow[..., 1]).mean(dtype=np.float64))
    return np.array([np.mean(mags)])


def size_orig(clip: Clip, ctx: dict) -> np.ndarray:
    """(1,): bytes of the original file's compressed video stream."""
    if clip.path is None:
        raise VideoError("<memory>", "size_orig needs the original video file")
    original = original_video(clip.path)
    if original is None:
        raise VideoError(
            clip.path,
            "size_orig needs the original compressed video (looked for videos/<stem>.mp4 beside videos_npy/); "
            "the .npy array's size says nothing about the video",
        )
    return np.array([float(video_stream_bytes(original))])


RAW_FEATURES: dict[str, RawFeature] = {
    "hog": RawFeature(hog_feature, HOG_PCA_COMPONENTS, per_frame=True),
    "brightness": RawFeature(brightness, 1, per_frame=True),
    "contrast": RawFeature(contrast, 1, per_frame=True),
    "blurriness": RawFeature(blurriness, 1, per_frame=True),
    "meanOF": RawFeature(mean_optical_flow, 1, per_frame=False),
    "size_orig": RawFeature(size_orig, 1, per_frame=False),
}


def stored_dims() -> dict[str, int]:
    """Every feature name the raw store holds, with its dimension."""
    dims = {}
    for name, feat in RAW_FEATURES.items():
        dims[name] = feat.dim
        if feat.per_frame:
            dims[f"{name}_std"] = feat.dim
    return dims


def raw_features(clip: Clip, hog_pca: HogPCA) -> dict[str, np.ndarray]:
    """All raw features of one clip: ``{name: float32 vector}`` (per-frame ones as mean and ``_std``)."""
    ctx = {"hog_pca": hog_pca, "grey": _grey(clip.frames)}
    out = {}
    for name, feat in RAW_FEATURES.items():
        value = np.asarray(feat.fn(clip, ctx), dtype=np.float64)
        if feat.per_frame:
            out[name] = value.mean(axis=0).astype(np.float32)
            out[f"{name}_std"] = value.std(axis=0).astype(np.float32)
        else:
            out[name] = value.reshape(-1).astype(np.float32)
    return out


# --------------------------------------------------------------------------- the extractor


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()


@register
class RawExtractor(Extractor):
    """The raw tier. Pass 1 (``prepare_item`` per training video, ``prepare_fit``) fits the HOG PCA; pass 2
    (``extract``) computes all six features. ``features.extract`` drives both passes for any extractor that has
    ``prepare_fit``."""

    family = "raw"
    frame_spec = FrameSpec(n_frames=45, size=(256, 256), crop="squash")
    #: the raw tier squash-resizes whole frames on every dataset (M3-S reference), whatever the dataset's crop
    dataset_crop = False
    #: pure CPU work: the extraction loop runs ``extract`` inside its decoding worker processes
    cpu_extract = True
    transform_name = "hog_pca"

    def __init__(self, cfg, device) -> None:  # noqa: ANN001
        super().__init__(cfg, device)
        self.hog_pca: HogPCA | None = None

    def settings(self) -> dict:
        return {
            "frames": self.frame_spec.n_frames,
            "size": list(self.frame_spec.size),
            "crop": self.frame_spec.crop,
            "hog": {"orientations": HOG_ORIENTATIONS, "cell": HOG_CELL, "block": HOG_BLOCK, "norm": "L2-Hys"},
            "hog_pca": {"components": HOG_PCA_COMPONENTS, "whiten": True, "fit": "first frame of train videos"},
            "blurriness": {"width": BLUR_WIDTH, "radius": BLUR_RADIUS, "floor": BLUR_FLOOR},
            "meanOF": {"size": FLOW_SIZE, **FLOW_PARAMS},
            "std": "ddof0",
        }

    # pass 1 ------------------------------------------------------------------
    def load_prepared(self, store: FeatureStore, train_ids: list[str] | None) -> bool:
        """Load the stored HOG PCA if it was fitted on exactly ``train_ids``; False if there is none.

        ``train_ids=None``: the PCA was adopted from another dataset (``--fit_on``) and is taken as it is."""
        if not store.exists():
            return False
        data = store.read()
        t = data.transforms.get(self.transform_name)
        if t is None:
            return False
        if train_ids is not None and t.info.get("train_ids_sha1") != ids_digest(train_ids):
            raise StoreError(
                f"{store.path}: its HOG PCA was fitted on other training videos ({t.info.get('n_train_ids')} ids) "
                f"than this dataset's {len(train_ids)}; delete the store to extract again"
            )
        self.hog_pca = HogPCA.from_transform(t)
        return True

    def prepare_fit(
        self, store: FeatureStore, train_ids: list[str], first_frames: dict[str, np.ndarray], meta: dict
    ) -> None:
        """Fit the HOG PCA on ``{train id: descriptor of its first sampled frame}`` and save it in the store."""
        used = sorted(first_frames)
        x = np.stack([first_frames[i] for i in used]) if used else np.zeros((0, 1), np.float32)
        try:
            self.hog_pca = HogPCA.fit(x)
        except ValueError as err:
            raise StoreError(f"cannot fit the HOG PCA for {store.path}: {err}") from None
        info = {
            "fitted_on": "HOG of the first sampled frame of every training video",
            "n_train_ids": len(train_ids),
            "train_ids_sha1": ids_digest(train_ids),
            "n_used": len(used),
            "skipped_unreadable": len(train_ids) - len(used),
            "settings": self.settings(),
        }
        transform = self.hog_pca.to_transform(info)
        if store.exists():
            store.set_transform(self.transform_name, transform)
        else:
            store.write(StoredFeatures([], {}, meta, {}, {self.transform_name: transform}))

    def prepare_item(self, clip: Clip) -> np.ndarray:
        """Pass 1, per training video (run in the decoding workers): the HOG of its first sampled frame."""
        return hog_descriptors(clip.frames[:1])[0]

    # pass 2 ------------------------------------------------------------------
    def extract(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        if self.hog_pca is None:
            raise RuntimeError(
                "RawExtractor: the HOG PCA is not loaded (the extraction loop runs prepare_fit / load_prepared first)"
            )
        return [raw_features(clip, self.hog_pca) for clip in clips]

    def fit(self, store: FeatureStore, train_ids: list[str] | None) -> None:
        """The PCA was fitted before extraction (see the module docstring); check it matches the train split."""
        if not self.load_prepared(store, train_ids):
            raise StoreError(f"{store.path} has no HOG PCA transform; run gen_features.py --features raw again")
