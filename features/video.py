"""Video reading: a file (mp4, webm, ... or an M3-S ``videos_npy`` array) in, RGB uint8 ``(T, H, W, 3)`` out.

Sampling follows the Memento10k authors: ``n`` evenly spaced frames at ``i*(L-1)//n + (L-1)//(2n)`` (for n = 45:
``i*(L-1)//45 + (L-1)//90``), each squash-resized to the target size, or, with ``crop="center"`` (the M3-S VideoMem
loader), resized so the short side fits and centre-cropped. Downscaling uses ``INTER_AREA`` (anti-aliased),
upscaling ``INTER_LINEAR``.

Decoder: OpenCV's bundled FFmpeg (``cv2``) by default, PyAV as the alternative (``backend="av"``). Measured here
(``bench/raw_speed.py``, 1 thread): a 90-frame 256x342 H.264 clip sampled to 45x256x256 takes 0.038 s with cv2 and
0.048 s with PyAV (1.26x); both give the same frames. cv2 skips the colour conversion of frames it does not keep
(``grab`` without ``retrieve``).

Anything unreadable raises :class:`VideoError` naming the file and the reason (cannot open, no video stream, zero
length, fewer than 2 frames, truncated, frames smaller than ``MIN_SIDE`` pixels, an ``.npy`` of the wrong
shape/dtype). The extraction loop records the reason in the store's failure list and goes on with the next video.
Odd frame sizes (e.g. 129x97) are fine: every frame is resized.

``video_stream_bytes`` gives ``size_orig``: the bytes of the compressed video stream only (sum of its packet sizes,
container and audio excluded).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # a corrupt file is reported once, as a VideoError

import av
import cv2
import numpy as np

from core.media import IMAGE_SUFFIXES
from features.base import FrameSpec

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")
MIN_FRAMES = 2  # meanOF needs a pair of frames; a 1-frame "video" is an image, not a clip
MIN_SIDE = 8  # smaller frames carry no usable signal (a HOG cell is 8x8 at 256x256 after resizing)
# A container may declare a frame or two more than it decodes (edit lists); more than this is a truncated file.
TRUNCATION_TOLERANCE = 0.1


class VideoError(RuntimeError):
    """A video that cannot be used; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def sample_indices(length: int, n: int) -> np.ndarray:
    """``n`` evenly spaced frame indices of a ``length``-frame clip (the Memento10k authors' sampler)."""
    i = np.arange(n)
    return i * (length - 1) // n + (length - 1) // (2 * n)


def resize_frame(
    frame: np.ndarray, size: tuple[int, int], crop: str = "squash", resample: str = "opencv"
) -> np.ndarray:
    """Resize one ``(h, w, C)`` frame to ``size`` = (H, W): squash, or fit the short side and centre-crop; with
    OpenCV, or with Pillow's bilinear filter (``resample="pil-bilinear"``, ``FrameSpec``)."""
    h, w = frame.shape[:2]
    H, W = size
    if crop == "center":
        scale = max(H / h, W / w)
        rh, rw = max(H, round(h * scale)), max(W, round(w * scale))
    elif crop == "squash":
        rh, rw = H, W
    else:
        raise ValueError(f"crop must be 'squash' or 'center', not {crop!r}")
    if resample not in ("opencv", "pil-bilinear"):
        raise ValueError(f"resample must be 'opencv' or 'pil-bilinear', not {resample!r}")
    if (rh, rw) != (h, w) and resample == "pil-bilinear":
        from PIL import Image  # Pillow (a matplotlib dependency): only the families that ask for it

        frame = np.array(Image.fromarray(frame).resize((rw, rh), Image.Resampling.BILINEAR))  # writable
    elif (rh, rw) != (h, w):
        interp = cv2.INTER_AREA if rh * rw < h * w else cv2.INTER_LINEAR
        frame = cv2.resize(frame, (rw, rh), interpolation=interp)
    if (rh, rw) != (H, W):
        top, left = (rh - H) // 2, (rw - W) // 2
        frame = frame[top : top + H, left : left + W]
    return np.ascontiguousarray(frame)


# --------------------------------------------------------------------------- decoders
# A decoder yields (declared frame count, iterator of zero-argument callables returning the RGB frame): the
# sampler only pays for the colour conversion of frames it keeps.


@contextmanager
def c_path(path: Path) -> Iterator[str]:
    """``path`` as the C decoders can take it. A file name that is not valid UTF-8 (``caf\\xe9.mp4`` from a Latin-1
    file system) crashes OpenCV's FFmpeg backend with a segfault, so it is opened through an ASCII-named symlink in a
    temporary folder; an open decoder keeps reading after the link is gone."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory(prefix="m3s-clip-") as tmp:
            suffix = path.suffix if path.suffix.isascii() and path.suffix.isprintable() else ""
            link = Path(tmp) / f"clip{suffix}"
            os.symlink(path.resolve(), link)
            yield str(link)
        return
    yield name


def _open_cv2(path: Path) -> tuple[int, Iterator[Callable[[], np.ndarray]]]:
    with c_path(path) as name:
        cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not cap.isOpened():
        cap.release()
        _open_av(path)  # raises the more precise reason (e.g. an audio-only file) when there is one
        raise VideoError(path, "cannot open (corrupt, truncated or not a video file)")
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width <= 0 or height <= 0:
        cap.release()
        raise VideoError(path, "no video stream (audio-only or empty container)")
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames() -> Iterator[Callable[[], np.ndarray]]:
        try:
            while cap.grab():
                yield lambda: cv2.cvtColor(cap.retrieve()[1], cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    return declared, frames()


def _open_av(path: Path) -> tuple[int, Iterator[Callable[[], np.ndarray]]]:
    try:
        with c_path(path) as name:
            container = av.open(name)
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise VideoError(path, f"cannot open (corrupt, truncated or not a video file): {err}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream (audio-only or empty container)")
    stream = container.streams.video[0]
    declared = int(stream.frames or 0)

    def frames() -> Iterator[Callable[[], np.ndarray]]:
        try:
            for frame in container.decode(stream):
                yield lambda f=frame: f.to_ndarray(format="rgb24")
        except av.error.FFmpegError:
            return  # a corrupt tail: the caller compares the count with the declared one
        finally:
            container.close()

    return declared, frames()


DECODERS = {"cv2": _open_cv2, "av": _open_av}
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _sample_stream(path: Path, spec: FrameSpec, backend: str, length: int | None, first_only: bool):
    """Decode once; keep the frames at ``sample_indices(length)``. Returns (frames, number of frames decoded)."""
    declared, stream = DECODERS[backend](path)
    length = length or declared
    wanted = sample_indices(length, spec.n_frames) if length >= MIN_FRAMES else np.zeros(0, int)
    if first_only:
        wanted = wanted[:1]
    slots: dict[int, list[int]] = {}
    for slot, idx in enumerate(wanted):
        slots.setdefault(int(idx), []).append(slot)
    out: list[np.ndarray | None] = [None] * len(wanted)
    count = 0
    for get in stream:
        if count in slots:
            rgb = get()
            if min(rgb.shape[:2]) < MIN_SIDE:
                stream.close()
                raise VideoError(path, f"frames of {rgb.shape[1]}x{rgb.shape[0]} pixels are too small")
            rgb = resize_frame(rgb, spec.size, spec.crop, spec.resample)
            for slot in slots[count]:
                out[slot] = rgb
            if first_only:
                stream.close()
                return np.stack(out), -1, declared  # -1: the length was not checked
        count += 1
    return (np.stack(out) if out and all(f is not None for f in out) else None), count, declared


def read_clip(
    path: Path | str,
    spec: FrameSpec | None = None,
    backend: str = "cv2",
    first_only: bool = False,
    images: bool = False,
) -> np.ndarray:
    """RGB uint8 ``(spec.n_frames, H, W, 3)`` (or ``(1, H, W, 3)``: the first sampled frame, with ``first_only``; or
    an image file as one frame, with ``images``)."""
    path, spec = Path(path), spec or FrameSpec()
    if not path.is_file():
        raise VideoError(path, "no such file")
    if path.stat().st_size == 0:
        raise VideoError(path, "zero-length file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image(path, spec, images)
    if path.suffix == ".npy":
        return _read_npy(path, spec, first_only)
    if first_only:
        frames, count, _ = _sample_stream(path, spec, backend, None, True)
        if frames is not None:
            return frames
        if count < MIN_FRAMES:
            raise VideoError(path, f"{count} decodable frame(s); a clip needs at least {MIN_FRAMES}")
        # the container over-declared its length: sample again with the true count
        return _sample_stream(path, spec, backend, count, True)[0]
    frames, count, declared = _sample_stream(path, spec, backend, None, False)
    if count < MIN_FRAMES:
        raise VideoError(path, f"{count} decodable frame(s); a clip needs at least {MIN_FRAMES}")
    if declared > 0 and count < declared - max(2, TRUNCATION_TOLERANCE * declared):
        raise VideoError(path, f"truncated: the container declares {declared} frames, only {count} decode")
    if frames is None or count != declared:
        # the declared length was missing or wrong (common in webm): decode again, sampling the true length
        frames, count2, _ = _sample_stream(path, spec, backend, count, False)
        if frames is None or count2 != count:
            raise VideoError(path, f"decoding is not repeatable ({count} then {count2} frames)")
    return frames


def _read_image(path: Path, spec: FrameSpec, images: bool) -> np.ndarray:
    """An image file as a one-frame clip ``(1, H, W, 3)`` (read from bytes: any file name works), where the family
    takes images (``images``)."""
    if not images:
        raise VideoError(path, "an image, not a video (of the video tiers, only resmem scores images)")
    bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise VideoError(path, "not a readable image")
    if min(bgr.shape[:2]) < MIN_SIDE:
        raise VideoError(path, f"an image of {bgr.shape[1]}x{bgr.shape[0]} pixels is too small")
    return resize_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), spec.size, spec.crop, spec.resample)[None]


def _read_npy(path: Path, spec: FrameSpec, first_only: bool) -> np.ndarray:
    """An M3-S ``videos_npy`` array: uint8 ``(T, H, W, 3)`` RGB, already sampled (45 frames, 256x256)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise VideoError(path, f"not a readable .npy array ({err})") from None
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise VideoError(path, f"expected a uint8 (T, H, W, 3) RGB array, found {arr.dtype} {arr.shape}")
    if arr.shape[0] < MIN_FRAMES:
        raise VideoError(path, f"{arr.shape[0]} frame(s); a clip needs at least {MIN_FRAMES}")
    if min(arr.shape[1:3]) < MIN_SIDE:
        raise VideoError(path, f"frames of {arr.shape[2]}x{arr.shape[1]} pixels are too small")
    idx = np.arange(arr.shape[0]) if arr.shape[0] == spec.n_frames else sample_indices(arr.shape[0], spec.n_frames)
    if first_only:
        idx = idx[:1]
    frames = np.asarray(arr[idx])
    if frames.shape[1:3] != tuple(spec.size):
        frames = np.stack([resize_frame(f, spec.size, spec.crop, spec.resample) for f in frames])
    return np.ascontiguousarray(frames)


def original_video(path: Path | str) -> Path | None:
    """The compressed original of a clip: the file itself, or for ``videos_npy/<stem>.npy`` the sibling
    ``videos/<stem>.<ext>`` of the official layout (None when it is not there)."""
    path = Path(path)
    if path.suffix != ".npy":
        return path
    for suffix in VIDEO_SUFFIXES:
        candidate = path.parent.parent / "videos" / f"{path.stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def video_stream_bytes(path: Path | str) -> int:
    """Bytes of the compressed video stream of ``path`` (sum of its packet sizes; container and audio excluded)."""
    path = Path(path)
    try:
        with c_path(path) as name, av.open(name) as container:
            if not container.streams.video:
                raise VideoError(path, "no video stream (audio-only or empty container)")
            return int(sum(p.size for p in container.demux(container.streams.video[0]) if p.size))
    except av.error.FFmpegError as err:
        raise VideoError(path, f"cannot read the video stream: {err}") from None
