"""The blurriness kernel: the mean log-magnitude of a frame's high-pass image (its spectrum without the square of
low frequencies around DC), computed by pruned transforms. See ``features/raw.py`` for the feature's definition."""

from __future__ import annotations

import cv2
import numpy as np
import scipy.fft

BLUR_WIDTH = 500
BLUR_RADIUS = 60  # half-side of the zeroed square around DC
BLUR_FLOOR = 1e-3


def grey_frames(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) RGB uint8 -> (T, H, W) grey uint8 (OpenCV's RGB2GRAY), in one call."""
    T, H, W, _ = frames.shape
    return cv2.cvtColor(frames.reshape(T * H, W, 3), cv2.COLOR_RGB2GRAY).reshape(T, H, W)


_STACKED_RESIZE_OK: dict[tuple, bool] = {}


def resize_frames(frames: np.ndarray, w: int, h: int) -> np.ndarray:
    """``cv2.resize(f, (w, h), INTER_AREA)`` of every frame of (T, H, W, C) uint8, bit-exact.

    One call on the frames stacked vertically is twice as fast as T calls; it is bit-identical to the per-frame
    calls whenever OpenCV's row mapping of the stack tiles the per-frame one, which is checked once per shape on a
    random probe (falling back to per-frame calls otherwise)."""
    T, H, W, C = frames.shape
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
    temporary stays in cache.

    The tail squares (``20 ln |x| = 10 ln |x|^2``) with single IEEE operations and sums with numpy in float64, not
    ``cv2.magnitude`` and ``cv2.sumElems``: those run IPP kernels that split the work by the buffers' alignment, so
    the result moved by an ulp with where the allocator put the arrays, and the feature store promises identical
    bytes on a resumed run or another rank."""
    T, nr, nc = grey.shape
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
    power = np.empty((nr, nc), np.float32)  # |high-pass|^2, then its log
    im = np.empty((nr, nc), np.float32)
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
        cv2.subtract(g, low_real, dst=power)
        cv2.multiply(power, power, dst=power)
        np.matmul(left, right, out=im)
        cv2.multiply(im, im, dst=im)
        cv2.add(power, im, dst=power)
        cv2.max(power, BLUR_FLOOR**2, dst=power)
        cv2.log(power, dst=power)
        out[t] = power.sum(dtype=np.float64)
    return out * (10.0 / (nr * nc))


def _blur_log_power_full(grey: np.ndarray, r: int) -> np.ndarray:
    """The same by two full complex FFTs (any size; used when a side is <= 2r)."""
    T, nr, nc = grey.shape
    spec = scipy.fft.fft2(grey, axes=(1, 2), workers=1)
    rows = np.r_[0:r, nr - r : nr]
    cols = np.r_[0:r, nc - r : nc]
    spec[:, rows[:, None], cols[None, :]] = 0
    recon = scipy.fft.ifft2(spec, axes=(1, 2), workers=1)
    power = recon.real**2 + recon.imag**2
    np.maximum(power, BLUR_FLOOR**2, out=power)
    return (10.0 * np.log(power)).reshape(T, -1).mean(axis=1, dtype=np.float64)


def blur_log_power(grey: np.ndarray, r: int = BLUR_RADIUS) -> np.ndarray:
    """(T,) per-frame mean log-magnitude of the high-pass image of ``grey`` (T, nr, nc) uint8: the pruned transforms
    when both sides exceed ``2r``, two full FFTs otherwise."""
    if min(grey.shape[1:]) > 2 * r:
        return _blur_log_power(grey, r)
    return _blur_log_power_full(grey.astype(np.float32), r)
