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
reuses the stored transform; a transform fitted on other training videos is refused. With 10 or fewer training
videos (a folder of your own clips, fitted on itself) the first frames cannot give 10 components, and the PCA is
fitted on every sampled frame of each instead (said in the transform's info). ``fit`` (after extraction)
only checks that the stored transform matches the final training ids. Memory of the fit: ``N_train x 34,596``
float32 (about 1 GB for Memento10k's 7000 training videos).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from core.io import StoreError
from features.base import Clip, Extractor, FrameSpec
from features.blur import BLUR_FLOOR, BLUR_RADIUS, BLUR_WIDTH, blur_log_power, grey_frames, resize_frames
from features.hog import HOG_BLOCK, HOG_CELL, HOG_ORIENTATIONS, HOG_PCA_COMPONENTS, HogPCA, hog_descriptors
from features.store import FeatureStore, StoredFeatures
from features.video import VideoError, original_video, video_stream_bytes

__all__ = ["BLUR_FLOOR", "RAW_FEATURES", "HogPCA", "RawExtractor", "hog_descriptors", "raw_features", "stored_dims"]

FLOW_SIZE = 80
FLOW_PARAMS = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 1, "poly_n": 5, "poly_sigma": 1.2}

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
    T, H, W, _ = f.shape
    r, g, b = cv2.split(np.ascontiguousarray(f).reshape(T * H, W, 3))
    v = cv2.max(cv2.max(r, g), b).reshape(T, H * W)
    return cv2.reduce(v, 1, cv2.REDUCE_SUM, dtype=cv2.CV_64F) / (H * W)


def contrast(clip: Clip, ctx: dict) -> np.ndarray:
    """(T, 1): standard deviation of the grey level (population, ddof 0)."""
    g = ctx.get("grey")
    g = grey_frames(clip.frames) if g is None else g
    return np.array([cv2.meanStdDev(frame)[1][0] for frame in g])


def blurriness(clip: Clip, ctx: dict) -> np.ndarray:
    """(T, 1): mean log-magnitude of the high-pass (DC square removed) image at width 500; high = sharp."""
    T, H, W, _ = clip.frames.shape
    h = int(H * BLUR_WIDTH / W)  # imutils.resize: int(h * width / w)
    grey = grey_frames(resize_frames(clip.frames, BLUR_WIDTH, h))  # (T, h, 500) uint8
    return blur_log_power(grey, BLUR_RADIUS)[:, None]


def mean_optical_flow(clip: Clip, ctx: dict) -> np.ndarray:
    """(1,): mean Farneback flow magnitude between consecutive frames, in pixels of the input frame."""
    g = ctx.get("grey")
    g = grey_frames(clip.frames) if g is None else g
    H, W = g.shape[1:]
    small = [cv2.resize(f, (FLOW_SIZE, FLOW_SIZE), interpolation=cv2.INTER_AREA) for f in g]
    mags = []
    for a, b in zip(small[:-1], small[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, flags=0, **FLOW_PARAMS)  # (h, w, 2) in small pixels
        flow[..., 0] *= W / FLOW_SIZE
        flow[..., 1] *= H / FLOW_SIZE
        # not cv2.magnitude: its IPP kernel rounds by the buffers' alignment (a resumed run must give the same bytes)
        fx, fy = flow[..., 0], flow[..., 1]
        mags.append(np.sqrt(fx * fx + fy * fy).mean(dtype=np.float64))
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
    ctx = {"hog_pca": hog_pca, "grey": grey_frames(clip.frames)}
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


class RawExtractor(Extractor):
    """The raw tier. Pass 1 (``prepare_item`` per training video, ``prepare_fit``) fits the HOG PCA; pass 2
    (``extract``) computes all six features. ``features.extract`` drives both passes (``has_prepass``)."""

    family = "raw"
    frame_spec = FrameSpec(n_frames=45, size=(256, 256), crop="squash")
    dataset_crop = False  # squash-resizes whole frames on every dataset (M3-S reference), whatever its crop
    cpu_extract = True
    has_prepass = True
    transform_name = "hog_pca"

    def __init__(self, cfg, device) -> None:
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
        t = store.read_transforms().get(self.transform_name)
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
        self, store: FeatureStore, train_ids: list[str], descriptors: dict[str, np.ndarray], meta: dict
    ) -> None:
        """Fit the HOG PCA on ``{train id: (n, D) descriptors of its first sampled frame, or of every sampled frame
        when the videos are too few}`` and save it in the store."""
        used = sorted(descriptors)
        x = np.concatenate([descriptors[i] for i in used]) if used else np.zeros((0, 1), np.float32)
        every_frame = any(len(descriptors[i]) > 1 for i in used)
        try:
            self.hog_pca = HogPCA.fit(x)
        except ValueError as err:
            raise StoreError(f"cannot fit the HOG PCA for {store.path}: {err}") from None
        info = {
            "fitted_on": (
                f"HOG of every sampled frame of the {len(used)} videos it is fitted on (too few first frames for "
                f"{HOG_PCA_COMPONENTS} components)"
                if every_frame
                else "HOG of the first sampled frame of every training video"
            ),
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

    def prepare_all_frames(self, n_videos: int) -> bool:
        """A PCA to k components needs more than k rows: with k or fewer training videos (a folder of three clips
        fitted on itself) it is fitted on every sampled frame of each instead of the first."""
        return n_videos <= HOG_PCA_COMPONENTS

    def prepare_item(self, clip: Clip) -> np.ndarray:
        """Pass 1, per training video (run in the decoding workers): the HOG of its first sampled frame (or of every
        sampled frame, when the loop decoded them all), ``(n, D)``."""
        return hog_descriptors(clip.frames)

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
