"""The resmem tier: the pretrained ResMem image-memorability network (``model/resmem.py``) over sampled frames.

Per video, ``--resmem_frames`` evenly spaced frames (the Memento10k sampler, ``features/video.py``) are framed as the
``resmem`` package frames an image (resized to 256x256, a squash; centre crop 227; [0, 1], no mean/std
normalisation) and scored. The store ``resmem_f<n>`` holds, per video:

- ``resmem`` (3): mean, max and std over the frames of the frame-level ResMem score (each in (0, 1));
- ``resmem_profile`` (``PROFILE_LEN`` = 8): the scores along the video, linearly interpolated to 8 evenly spaced
  positions from the first to the last sampled frame (a fixed length whatever ``--resmem_frames``);
- ``resmem_resnet`` (2048): the mean over the frames of ResNet-152's global-average-pooled features (the network's
  ImageNet branch), the tier's similarity space.

An image (``.jpg``, ``.jpeg``, ``.png``: LaMem-style) is a one-frame clip: its score three times (std 0) and a flat
profile. Weights: ``resmem/model.pt`` inside the installed ``resmem`` wheel (``pip install --no-deps resmem==1.1.6``;
``bash envs/setup.sh --with resmem``), found through the distribution's file list (the package's own import needs a
torchvision API that no longer exists), hashed against the sha256 pinned in ``weights/SHA256SUMS`` and read with
``weights_only=True``. Licence: the ResMem Non-commercial License (University of Chicago): research and other
non-commercial use only. Batched over videos x frames under ``torch.inference_mode()``; on CUDA with autocast
(bf16 where supported) and channels-last, fp32 on the CPU.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.io import ConfigError
from features.base import Clip, Extractor, FrameSpec
from features.deep import compute_dtype
from model.backbones import SMOKE_SEED, check_state_dict, file_sha256, pinned_sha256, verify_weights
from model.resmem import INPUT_SIZE, RESIZE, ResMem

PACKAGE = "resmem"
VERSION = "1.1.6"
WEIGHTS_REL = "resmem/model.pt"  # its path inside the wheel, and its key in weights/SHA256SUMS
LICENCE = "ResMem Non-commercial License (University of Chicago): research and other non-commercial use only"
INSTALL = f"bash envs/setup.sh --with resmem (or: pip install --no-deps {PACKAGE}=={VERSION}, a 489 MB wheel)"
PROFILE_LEN = 8  # the temporal profile's fixed length
FRAMES_PER_FORWARD = 8  # frames per forward pass on the CPU (bench/resmem_speed.py: 8-16 best, 32 slower)
FRAMES_PER_FORWARD_CUDA = 64
CROP_TOP = int(round((RESIZE - INPUT_SIZE) / 2.0))  # torchvision's CenterCrop: round(14.5) = 14 (half to even)
_VERIFIED: dict[tuple, bool] = {}  # (path, size, mtime) of files already hashed in this process


class ResMemMissing(ConfigError):
    """The ``resmem`` package (which ships the weights) is not installed."""


def missing_message() -> str:
    return (
        f"the resmem tier needs the ResMem weights shipped by the `{PACKAGE}` package, which is not installed: "
        f"{INSTALL}. Licence: {LICENCE}."
    )


def weights_file() -> Path:
    """``resmem/model.pt`` of the installed ``resmem`` distribution, located through its file list (not imported)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ResMemMissing(missing_message()) from None
    entry = next((f for f in dist.files or () if f.as_posix() == WEIGHTS_REL), None)
    path = Path(dist.locate_file(entry)) if entry is not None else None
    if path is None or not path.is_file():
        raise ResMemMissing(
            f"the installed {PACKAGE} {dist.version} has no {WEIGHTS_REL} (looked in {dist.locate_file(PACKAGE)}); "
            f"reinstall it: {INSTALL}. Licence: {LICENCE}."
        )
    return path


def _verify(path: Path) -> None:
    """The pinned sha256 check (528 MB: 1.4 s), once per file and process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, pinned_sha256(WEIGHTS_REL))
    if key not in _VERIFIED:
        verify_weights(path, WEIGHTS_REL, f"`pip install --force-reinstall --no-deps {PACKAGE}=={VERSION}`")
        _VERIFIED[key] = True


def load_resmem(smoke: bool = False) -> tuple[ResMem, str]:
    """The ResMem network in eval mode on the CPU and a description of its weights."""
    if smoke:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SMOKE_SEED)
            return ResMem().eval().requires_grad_(False), "RANDOM (smoke)"
    path = weights_file()
    _verify(path)
    model = ResMem()
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    model.load_state_dict(check_state_dict(model, state, str(path)), strict=True)
    return model.eval().requires_grad_(False), f"{WEIGHTS_REL} ({PACKAGE} {importlib.metadata.version(PACKAGE)})"


def profile(scores: np.ndarray, length: int = PROFILE_LEN) -> np.ndarray:
    """(T,) frame scores -> (length,) linearly interpolated at evenly spaced positions, first to last frame."""
    positions = np.linspace(0, len(scores) - 1, length)
    return np.interp(positions, np.arange(len(scores)), scores)


def summarise(scores: np.ndarray, pooled: np.ndarray) -> dict[str, np.ndarray]:
    """One video's store row from its (T,) frame scores and (T, 2048) pooled features."""
    s = scores.astype(np.float64)
    return {
        "resmem": np.array([s.mean(), s.max(), s.std()], np.float32),
        "resmem_profile": profile(s).astype(np.float32),
        "resmem_resnet": pooled.astype(np.float64).mean(axis=0).astype(np.float32),
    }


class ResMemExtractor(Extractor):
    """``resmem``: frame-level ResMem scores (mean, max, std, profile) and ResNet-152 pooled features per video."""

    family = "resmem"
    dataset_crop = False  # the package's own framing (squash to 256, centre crop) on every dataset
    accepts_images = True

    def __init__(self, cfg: Any, device: torch.device | str) -> None:
        super().__init__(cfg, torch.device(device))
        self.n_frames = int(cfg.resmem_frames)
        if self.n_frames < 1:
            raise ConfigError(f"--resmem_frames must be >= 1, got {self.n_frames}")
        self.frame_spec = FrameSpec(self.n_frames, (RESIZE, RESIZE), "squash", "pil-bilinear")  # the package's Resize
        self.smoke = bool(getattr(cfg, "smoke_random_weights", False))
        self.dtype = compute_dtype(self.device, getattr(cfg, "deep_dtype", "auto"))
        model, self.weights = load_resmem(self.smoke)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        self.model = model.to(self.device)
        self.chunk = FRAMES_PER_FORWARD_CUDA if self.device.type == "cuda" else FRAMES_PER_FORWARD  # frames a pass

    def __getstate__(self) -> dict:
        """Decoding workers get a copy that reads only ``frame_spec``: leave the network behind."""
        return {k: v for k, v in self.__dict__.items() if k != "model"}

    def settings(self) -> dict:
        return {
            "weights": self.weights,
            "smoke": self.smoke,
            "frames": self.n_frames,
            "frame_rule": "n evenly spaced frames, i*(L-1)//n + (L-1)//(2n); an image is one frame",
            "resize": [RESIZE, RESIZE, "pil-bilinear"],
            "crop": f"center {INPUT_SIZE}",
            "normalisation": "none ([0, 1], as the resmem package)",
            "profile_len": PROFILE_LEN,
            "dtype": str(self.dtype).removeprefix("torch."),
            "dims": {"resmem": 3, "resmem_profile": PROFILE_LEN, "resmem_resnet": 2048},
        }

    @torch.inference_mode()
    def score_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB (N, 256, 256, 3) -> scores (N,) and pooled features (N, 2048), float32, in chunks."""
        scores, pooled = [], []
        for start in range(0, len(frames), self.chunk):
            crop = slice(CROP_TOP, CROP_TOP + INPUT_SIZE)
            part = frames[start : start + self.chunk, crop, crop]  # (n, 227, 227, 3): the centre crop
            x = torch.from_numpy(np.ascontiguousarray(part)).to(self.device)  # moved as uint8: 4x less traffic
            x = x.movedim(-1, 1).float().div_(255)  # (n, 3, 227, 227), the package's ToTensor
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                s, p = self.model.features_and_score(x)
            scores.append(s.float().cpu())
            pooled.append(p.float().cpu())
        return torch.cat(scores).numpy(), torch.cat(pooled).numpy()

    def extract(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        for clip in clips:
            f = clip.frames
            if f.ndim != 4 or tuple(f.shape[1:]) != (RESIZE, RESIZE, 3) or f.dtype != np.uint8 or len(f) < 1:
                raise ValueError(
                    f"resmem: video {clip.id} has {f.dtype} frames of shape {f.shape}; expected (T, {RESIZE}, "
                    f"{RESIZE}, 3) uint8 RGB as decoded for {self.frame_spec}"
                )
        scores, pooled = self.score_frames(np.concatenate([c.frames for c in clips]))  # every frame of the batch
        bounds = np.cumsum([0] + [len(c.frames) for c in clips])
        return [summarise(scores[a:b], pooled[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def weights_digest() -> str:
    """The installed weights file's sha256 (for the tests and the README)."""
    return file_sha256(weights_file())
