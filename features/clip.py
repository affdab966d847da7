"""The clip tier: CLIP image embeddings of ``--clip_frames`` evenly spaced frames per video, via ``open_clip``.

Each frame goes through the image tower of ``--clip_model`` / ``--clip_pretrained`` (default ``RN50`` / ``openai``,
the frame features of the best public Memento10k system; ``ViT-L-14`` / ``openai`` is the larger choice). A frame is
decoded as CLIP's own preprocessing frames it (short side resized to the model's input size, centre crop; our
decoder's resampling, ``features/video.py``), normalised with the pretrained weights' mean/std, embedded, and
L2-normalised (CLIP's space is a cosine space). The store holds ``clip``, the mean over the frames, and ``clip_std``,
their temporal standard deviation (``--clip_std`` appends it to the module, like the raw tier's
``--use_temporal_std``). Batched over videos x frames, under ``torch.inference_mode()``, with autocast (bf16 where
supported, else fp16) and channels-last on CUDA, fp32 on the CPU, as the hrnet / csn tiers.

Weights (only the image tower is kept): ``<weights_dir>/clip/<model>_<pretrained>.{pt,bin,safetensors}``, which is
an OpenAI TorchScript archive (the published ``.pt`` files) or a plain state dict (open_clip's hub files).
``bash weights/download.sh`` fetches the OpenAI ones listed in ``CLIP_WEIGHTS``; with internet, ``--clip_download``
fetches any open_clip model/tag from its hub or URL into that path. A missing file is refused with both commands;
``--smoke_random_weights`` builds seeded random weights and marks the store ``smoke``. The OpenAI files' sha256 are
pinned in ``weights/SHA256SUMS``, checked by download.sh and again on load (``model.backbones.verify_weights``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.io import ConfigError
from features.base import Clip, Extractor, FrameSpec
from features.deep import compute_dtype
from features.tv_compat import ensure_torchvision_importable
from model.backbones import SMOKE_SEED, check_state_dict, verify_weights

SUFFIXES = (".pt", ".bin", ".safetensors")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation (open_clip's default)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# keys of the OpenAI TorchScript archives that are model hyper-parameters, not weights
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class ClipWeights:
    """A CLIP checkpoint with a stable published URL (``weights/download.sh`` fetches these; ``weights/SHA256SUMS``
    pins their sha256, which OpenAI publishes as the URL's folder name)."""

    model: str
    pretrained: str
    url: str

    @property
    def name(self) -> str:
        return f"clip_{self.model}_{self.pretrained}"

    @property
    def file(self) -> str:
        return f"clip/{weights_stem(self.model, self.pretrained)}.pt"


_OPENAI = "https://openaipublic.azureedge.net/clip/models"
CLIP_WEIGHTS: dict[tuple[str, str], ClipWeights] = {
    (w.model, w.pretrained): w
    for w in (
        ClipWeights(
            "RN50", "openai", f"{_OPENAI}/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
        ),
        ClipWeights(
            "ViT-B-32", "openai",
            f"{_OPENAI}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        ),
        ClipWeights(
            "ViT-L-14", "openai",
            f"{_OPENAI}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        ),
    )
}  # fmt: skip


def slug(text: str) -> str:
    """``text`` as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)


def weights_stem(model: str, pretrained: str) -> str:
    return f"{slug(model)}_{slug(pretrained)}"


def find_weights(weights_dir: str | Path, model: str, pretrained: str) -> Path | None:
    folder = Path(weights_dir) / "clip"
    return next((p for s in SUFFIXES if (p := folder / f"{weights_stem(model, pretrained)}{s}").is_file()), None)


def fetch_commands(weights_dir: str | Path, model: str, pretrained: str, dataset: str = "DATASET") -> str:
    """The commands that fetch the weights of ``model`` / ``pretrained`` (download.sh's where it lists them)."""
    ways = []
    if (model, pretrained) in CLIP_WEIGHTS:
        ways.append(f"`bash weights/download.sh {weights_dir} {CLIP_WEIGHTS[model, pretrained].name}`")
    ways.append(
        f"`python gen_features.py --dataset {dataset} --features clip --clip_model {model} --clip_pretrained "
        f"{pretrained} --weights_dir {weights_dir} --clip_download` (from open_clip's hub or URL; needs internet)"
    )
    return " or ".join(ways)


def missing_weights_message(weights_dir: str | Path, model: str, pretrained: str, dataset: str = "DATASET") -> str:
    where = Path(weights_dir) / "clip" / weights_stem(model, pretrained)
    return (
        f"CLIP {model}/{pretrained} weights not found: looked for {where}{{{','.join(SUFFIXES)}}}. Fetch them with "
        + fetch_commands(weights_dir, model, pretrained, dataset)
        + " (see weights/README.md). To test the pipeline without weights, pass --smoke_random_weights (random "
        "features, marked as smoke in the store)."
    )


def _open_clip() -> Any:
    ensure_torchvision_importable()  # open_clip imports torchvision (a CUDA build from the registry)
    import open_clip

    return open_clip


def _check_names(open_clip: Any, model: str, pretrained: str, need_tag: bool) -> dict:
    """open_clip's config of ``pretrained`` for ``model`` (empty for an unknown tag when ``need_tag`` is False)."""
    if model not in open_clip.list_models():
        raise ConfigError(f"--clip_model {model!r} is not an open_clip model; e.g. RN50, ViT-B-32, ViT-L-14")
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg and need_tag:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ConfigError(f"--clip_pretrained {pretrained!r} is not an open_clip tag of {model}; its tags: {tags}")
    return cfg


def fetch_weights(model: str, pretrained: str, weights_dir: str | Path) -> Path:
    """``--clip_download``: fetch the weights from open_clip's source (hub or URL) into ``<weights_dir>/clip/``."""
    open_clip = _open_clip()
    cfg = _check_names(open_clip, model, pretrained, need_tag=True)
    folder = Path(weights_dir) / "clip"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        got = Path(open_clip.download_pretrained(cfg, cache_dir=tmp))  # verifies the checksum the source publishes
        suffix = got.suffix if got.suffix in SUFFIXES else ".pt"
        target = folder / f"{weights_stem(model, pretrained)}{suffix}"
        shutil.copyfile(got.resolve(), target.with_name(f".{target.name}.part"))
        target.with_name(f".{target.name}.part").replace(target)
    return target


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def load_clip_weights(model: nn.Module, path: Path) -> None:
    """An OpenAI TorchScript archive (read with ``torch.jit.load``: no pickled Python runs; its hyper-parameter
    entries dropped) or an open_clip state dict (``weights_only``), every key and shape checked against the model."""
    if _is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
        # a scripted module also saves buffers the model keeps out of its state dict (open_clip's attn_mask)
        transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
        state = {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS and k not in transient}
        model.load_state_dict(check_state_dict(model, state, str(path)), strict=True)  # fp16 values become fp32
    else:
        _open_clip().load_checkpoint(model, str(path), strict=True, weights_only=True)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip warns "initialized randomly" on the root logger when built without weights: ours load next."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def build_image_tower(
    model: str, pretrained: str, weights_dir: str | Path, smoke: bool, download: bool = False
) -> tuple[nn.Module, dict]:
    """CLIP's image tower in eval mode on the CPU, and ``{"size", "mean", "std", "weights"}`` to preprocess for it."""
    open_clip = _open_clip()
    tag_cfg = _check_names(open_clip, model, pretrained, need_tag=False)
    path = None
    if not smoke:
        path = find_weights(weights_dir, model, pretrained)
        if path is None and download:
            path = fetch_weights(model, pretrained, weights_dir)
        if path is None:
            raise FileNotFoundError(missing_weights_message(weights_dir, model, pretrained))
        verify_weights(path, f"clip/{path.name}", fetch_commands(weights_dir, model, pretrained))
    with torch.random.fork_rng(devices=[]), _quiet_root_logger():
        torch.manual_seed(SMOKE_SEED)  # seeded random init: every torchrun shard builds the same smoke model
        clip = open_clip.create_model(
            model, pretrained=None, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            pretrained_image=False, pretrained_text=False,
        )  # fmt: skip
    if path is not None:
        load_clip_weights(clip, path)
    visual = clip.visual.eval().requires_grad_(False)
    size = visual.image_size if isinstance(visual.image_size, tuple | list) else (visual.image_size,) * 2
    info = {
        "size": tuple(int(s) for s in size),
        "mean": tuple(tag_cfg.get("mean", OPENAI_MEAN)),
        "std": tuple(tag_cfg.get("std", OPENAI_STD)),
        "weights": "RANDOM (smoke)" if smoke else f"clip/{path.name}",
    }
    return visual, info


class CLIPExtractor(Extractor):
    """``clip``: per video, the mean and temporal std of the L2-normalised CLIP embeddings of its frames."""

    family = "clip"
    dataset_crop = False  # CLIP's own framing (short side + centre crop) on every dataset

    def __init__(self, cfg: Any, device: torch.device | str) -> None:
        super().__init__(cfg, torch.device(device))
        self.model_name, self.pretrained = cfg.clip_model, cfg.clip_pretrained
        self.n_frames = int(cfg.clip_frames)
        if self.n_frames < 1:
            raise ConfigError(f"--clip_frames must be >= 1, got {self.n_frames}")
        self.smoke = bool(cfg.smoke_random_weights)
        self.dtype = compute_dtype(self.device, cfg.deep_dtype)
        visual, self.info = build_image_tower(
            self.model_name, self.pretrained, cfg.weights_dir, self.smoke, bool(getattr(cfg, "clip_download", False))
        )
        self.frame_spec = FrameSpec(self.n_frames, self.info["size"], "center")
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            visual = visual.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        self.model = visual.to(self.device)
        self._mean = torch.tensor(self.info["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.info["std"], device=self.device).view(1, 3, 1, 1)
        self.dim = int(getattr(visual, "output_dim", 0) or 0) or self._probe_dim()  # timm towers: one probe frame

    def __getstate__(self) -> dict:
        """Decoding workers get a copy that reads only ``frame_spec``: leave the model behind."""
        return {k: v for k, v in self.__dict__.items() if k not in ("model", "_mean", "_std")}

    @torch.inference_mode()
    def _probe_dim(self) -> int:
        return int(self._embed(np.zeros((1, *self.info["size"], 3), np.uint8)).shape[1])

    def settings(self) -> dict:
        return {
            "model": self.model_name,
            "pretrained": self.pretrained,
            "weights": self.info["weights"],
            "smoke": self.smoke,
            "frames": self.n_frames,
            "frame_rule": "n evenly spaced frames, i*(L-1)//n + (L-1)//(2n); mean and std of L2-normalised embeddings",
            "input_size": list(self.info["size"]),
            "crop": "center",
            "mean": list(self.info["mean"]),
            "std": list(self.info["std"]),
            "dtype": str(self.dtype).removeprefix("torch."),
            "dim": self.dim,
        }

    def _embed(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB (N, H, W, 3) -> (N, D) float32 L2-normalised embeddings, under autocast on CUDA."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)  # moved as uint8: 4x less traffic
        x = x.movedim(-1, 1).float().div_(255)  # (N, 3, H, W)
        x = ((x - self._mean) / self._std).contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            emb = self.model(x).float()
        return torch.nn.functional.normalize(emb, dim=1)

    @torch.inference_mode()
    def extract(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        size = tuple(self.frame_spec.size)
        for clip in clips:
            f = clip.frames
            if f.ndim != 4 or tuple(f.shape[1:]) != (*size, 3) or f.dtype != np.uint8 or len(f) < 1:
                raise ValueError(
                    f"clip: video {clip.id} has {f.dtype} frames of shape {f.shape}; expected (T, {size[0]}, "
                    f"{size[1]}, 3) uint8 RGB as decoded for {self.frame_spec}"
                )
        frames = np.concatenate([c.frames for c in clips])  # (sum T, H, W, 3): every frame of the batch at once
        emb = self._embed(frames)  # (sum T, D)
        out = []
        for part in torch.split(emb, [len(c.frames) for c in clips]):  # (T, D) per video
            mean, std = part.mean(dim=0), part.std(dim=0, unbiased=False)
            out.append(
                {"clip": mean.cpu().numpy().astype(np.float32), "clip_std": std.cpu().numpy().astype(np.float32)}
            )
        return out
