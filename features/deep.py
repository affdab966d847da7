"""The deep tiers: ``hrnet`` (scene semantics, HRNetV2-W48 on ADE20K) and ``csn`` (actions, ip/ir-CSN-152 on IG-65M
+ Kinetics). Each runs a pretrained backbone (``model.backbones``) over decoded clips and gives one vector per video.

Decoding, batching over videos, resume, failures and sharding belong to the orchestrator (``features/extract.py``);
these classes only turn a batch of decoded clips into vectors: batched, under ``torch.inference_mode()``, with
autocast (bf16, else fp16) on CUDA and fp32 on the CPU.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from features.base import Clip, Extractor, FrameSpec
from model.backbones import BACKBONES, archs, load_backbone
from model.e2e import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, hrnet_frame_indices

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "CSNExtractor",
    "HRNetExtractor",
    "compute_dtype",
    "hrnet_frame_indices",
]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compute_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The dtype the backbone runs in: fp32 on the CPU; on CUDA ``requested``, where ``auto`` means bf16 if the GPU
    supports it, else fp16. (Check reduced precision against fp32: some cuDNN versions get bf16 3-D convs wrong.)
    """
    if device.type != "cuda":
        return torch.float32
    if requested == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if requested not in _DTYPES:
        raise ValueError(f"deep_dtype {requested!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[requested]


class DeepExtractor(Extractor):
    """Shared machinery: load the backbone once, move it to the device, normalise and run batches of frames."""

    frame_spec: ClassVar[FrameSpec] = FrameSpec(45, (256, 256), "squash")
    feature: ClassVar[str]  # the feature name in the store
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    channels_last: ClassVar[bool]  # NHWC activations (faster 2-D convs on tensor cores); applied on CUDA only

    arch: str  # key of model.backbones.BACKBONES
    input_ndim: ClassVar[int]  # 4: a batch of frames (N, 3, H, W); 5: a batch of clips (B, 3, T, H, W)

    def __init__(self, cfg: Any, device: torch.device | str) -> None:
        super().__init__(cfg, torch.device(device))
        self.smoke = bool(cfg.smoke_random_weights)
        self.dtype = compute_dtype(self.device, cfg.deep_dtype)
        self.use_channels_last = self.channels_last and self.device.type == "cuda"
        model = load_backbone(self.arch, cfg.weights_dir, self.smoke).to(self.device)
        if self.use_channels_last:
            model = model.to(memory_format=self._memory_format)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        self.model = model
        shape = (1, 3) + (1,) * (self.input_ndim - 2)  # broadcast over (B, C, [T,] H, W)
        self._mean = torch.tensor(self.mean, device=self.device).view(shape)
        self._std = torch.tensor(self.std, device=self.device).view(shape)

    def __getstate__(self) -> dict:
        """Pickled copies (decoding workers under spawn/forkserver only read ``frame_spec``) leave the backbone behind:
        pickling it would send hundreds of tensors (one file descriptor each) to every worker."""
        return {k: v for k, v in self.__dict__.items() if k not in ("model", "_mean", "_std")}

    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.input_ndim == 4 else torch.channels_last_3d

    def settings(self) -> dict:
        return {
            "arch": self.arch,
            "input_size": list(self.frame_spec.size),
            "crop": self.frame_spec.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "weights": "RANDOM (smoke)" if self.smoke else BACKBONES[self.arch].file,
            "smoke": self.smoke,
            "dtype": str(self.dtype).removeprefix("torch."),
            "dim": BACKBONES[self.arch].feature_dim,
        }

    def _check(self, clip: Clip) -> None:
        frames = clip.frames
        size_ok = frames.ndim == 4 and frames.shape[3] == 3 and tuple(frames.shape[1:3]) == tuple(self.frame_spec.size)
        if not size_ok or frames.dtype != np.uint8:
            raise ValueError(
                f"{self.family}: clip {clip.id} has {frames.dtype} frames of shape {frames.shape}; expected (T, "
                f"{self.frame_spec.size[0]}, {self.frame_spec.size[1]}, 3) uint8 RGB as decoded for {self.frame_spec}"
            )

    def _forward(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB (N, H, W, 3) or (B, T, H, W, 3) -> (N or B, D) float32 features, under autocast on CUDA."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)  # moved as uint8: 4x less traffic
        x = x.movedim(-1, 1).float().div_(255)  # (N, 3, H, W) or (B, 3, T, H, W)
        x = (x - self._mean) / self._std
        # the NHWC uint8 layout already is channels-last memory: keep it for HRNet, make it contiguous otherwise
        x = x.contiguous(memory_format=self._memory_format if self.use_channels_last else torch.contiguous_format)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.model.features(x).float()


class HRNetExtractor(DeepExtractor):
    """``hrnet``: the 720-d pooled HRNetV2-W48 encoder output of k frames (``--hrnet_frames``), averaged."""

    family = "hrnet"
    feature = "hrnet"
    arch = "hrnetv2_w48"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    channels_last = True
    input_ndim = 4

    def __init__(self, cfg: Any, device: torch.device | str) -> None:
        self.k = int(cfg.hrnet_frames)
        if self.k not in (1, 5, 9):
            raise ValueError(f"hrnet_frames must be 1, 5 or 9, got {self.k}")
        super().__init__(cfg, device)

    def settings(self) -> dict:
        return super().settings() | {"frames": self.k, "frame_rule": "0, s, 2s, ... with s = T // k; mean of k"}

    @torch.inference_mode()
    def extract(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        for clip in clips:
            self._check(clip)
        picked = np.stack([c.frames[hrnet_frame_indices(len(c.frames), self.k)] for c in clips])  # (B, k, H, W, 3)
        feats = (
            self._forward(picked.reshape(-1, *picked.shape[2:])).view(len(clips), self.k, -1).mean(dim=1)
        )  # (B, 720)
        return [{self.feature: f} for f in feats.cpu().numpy().astype(np.float32)]


class CSNExtractor(DeepExtractor):
    """``csn``: the 2048-d pooled layer4 output of ip-CSN-152 (or ir-CSN-152, ``--csn_arch``) over the whole clip."""

    family = "csn"
    feature = "csn"
    mean, std = KINETICS_MEAN, KINETICS_STD
    channels_last = False  # NCDHW: channels-last-3d is unmeasured for depthwise 3-D convs (bench: --channels_last)
    input_ndim = 5

    def __init__(self, cfg: Any, device: torch.device | str) -> None:
        self.arch = cfg.csn_arch
        if self.arch not in archs("csn"):
            raise ValueError(f"csn_arch must be one of {', '.join(archs('csn'))}, got {self.arch!r}")
        super().__init__(cfg, device)

    def settings(self) -> dict:
        return super().settings() | {"frames": self.frame_spec.n_frames}

    @torch.inference_mode()
    def extract(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        for clip in clips:
            self._check(clip)
        out: list[dict[str, np.ndarray] | None] = [None] * len(clips)
        # clips of equal length run as one batch (a short video may have been decoded to fewer frames)
        by_len: dict[int, list[int]] = {}
        for i, clip in enumerate(clips):
            by_len.setdefault(len(clip.frames), []).append(i)
        for idx in by_len.values():
            feats = self._forward(np.stack([clips[i].frames for i in idx]))  # (B, T, H, W, 3) -> (B, 2048)
            for i, f in zip(idx, feats.cpu().numpy().astype(np.float32), strict=True):
                out[i] = {self.feature: f}
        return out  # type: ignore[return-value]
