"""The hrnet and csn extractors: frame choice, normalisation, batching, settings, no silent random weights.

Backbones run with seeded random weights (``smoke_random_weights``) on tiny clips (9 frames of 64x64) so the whole
file stays fast on a CPU; a GPU-only test checks autocast features against fp32.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from config import ROOT, GenConfig
from features.base import Clip, FrameSpec
from features.deep import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINETICS_MEAN,
    KINETICS_STD,
    CSNExtractor,
    DeepExtractor,
    HRNetExtractor,
    compute_dtype,
    hrnet_frame_indices,
)
from model import csn, hrnet
from model.backbones import BACKBONES, weights_path
from tiers import TIERS

TINY = FrameSpec(9, (64, 64), "squash")
# (family, config overrides, store name, feature dim)
VARIANTS = [
    ("hrnet", {"hrnet_frames": 1}, "hrnet_f1", 720),
    ("hrnet", {"hrnet_frames": 5}, "hrnet_f5", 720),
    ("csn", {"csn_arch": "ip_csn_152"}, "ip_csn_152", 2048),
    ("csn", {"csn_arch": "ir_csn_152"}, "ir_csn_152", 2048),
]
_CACHE: dict[str, DeepExtractor] = {}


def extractor(
    family: str, overrides: dict, spec: FrameSpec = TINY, device: str = "cpu", weights_dir: str = ""
) -> DeepExtractor:
    """An extractor decoding ``spec``, built once per variant for the module: random weights unless ``weights_dir``."""
    key = f"{family}-{sorted(overrides.items())}-{device}-{weights_dir}"
    if key not in _CACHE:
        cfg = GenConfig(smoke_random_weights=not weights_dir, weights_dir=weights_dir or "/nonexistent", **overrides)
        ext = TIERS[family].extractor(cfg, device)
        ext.frame_spec = spec  # tiny clips for speed; the class default is 45 x 256x256
        _CACHE[key] = ext
    return _CACHE[key]


def clips(n: int, t: int = 9, size: int = 64, seed: int = 0) -> list[Clip]:
    rng = np.random.default_rng(seed)
    return [Clip(f"v{i}", None, rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)) for i in range(n)]


def test_registered_with_the_contract():
    assert TIERS["hrnet"].extractor is HRNetExtractor and TIERS["csn"].extractor is CSNExtractor
    for cls in (HRNetExtractor, CSNExtractor):
        assert cls.frame_spec == FrameSpec(45, (256, 256), "squash")


@pytest.mark.parametrize(
    ("t", "k", "expected"),
    [
        (45, 1, [0]),
        (45, 5, [0, 9, 18, 27, 36]),
        (45, 9, [0, 5, 10, 15, 20, 25, 30, 35, 40]),
        (9, 5, [0, 1, 2, 3, 4]),
        (3, 5, [0, 1, 2, 2, 2]),
    ],
)
def test_hrnet_frame_indices(t, k, expected):
    assert hrnet_frame_indices(t, k) == expected


@pytest.mark.parametrize(("family", "overrides", "store", "dim"), VARIANTS)
def test_store_name_settings_and_output(family, overrides, store, dim):
    ext = extractor(family, overrides)
    assert TIERS[family].store(GenConfig(**overrides)) == store
    settings = ext.settings()
    assert ext.smoke is True and settings["smoke"] is True and settings["weights"] == "RANDOM (smoke)"
    assert settings["dtype"] == "float32" and settings["input_size"] == [64, 64] and settings["dim"] == dim
    assert settings["arch"] == (store if family == "csn" else "hrnetv2_w48")
    out = ext.extract(clips(2))
    assert len(out) == 2 and all(set(o) == {family} for o in out)
    for o in out:
        assert o[family].shape == (dim,) and o[family].dtype == np.float32 and np.isfinite(o[family]).all()
    assert not np.allclose(out[0][family], out[1][family])  # different clips, different vectors


@pytest.mark.parametrize(("family", "overrides", "store", "dim"), VARIANTS[1:3])
def test_batch_equals_one_by_one(family, overrides, store, dim):
    ext = extractor(family, overrides)
    batch = clips(3, seed=1)
    together = ext.extract(batch)
    for clip, row in zip(batch, together, strict=True):
        np.testing.assert_allclose(ext.extract([clip])[0][family], row[family], rtol=1e-4, atol=1e-5)


def _normalised(frames: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    x = torch.from_numpy(frames).float() / 255  # (..., H, W, 3)
    return ((x - torch.tensor(mean)) / torch.tensor(std)).movedim(-1, -3 if frames.ndim == 4 else 1)


@pytest.mark.slow
def test_hrnet_averages_the_chosen_frames_imagenet_normalised():
    ext = extractor("hrnet", {"hrnet_frames": 5})
    clip = clips(1, seed=2)[0]
    with torch.inference_mode():
        per_frame = ext.model.features(_normalised(clip.frames[[0, 1, 2, 3, 4]], IMAGENET_MEAN, IMAGENET_STD))
    np.testing.assert_allclose(ext.extract([clip])[0]["hrnet"], per_frame.mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_csn_uses_the_whole_clip_kinetics_normalised():
    ext = extractor("csn", {"csn_arch": "ir_csn_152"})
    clip = clips(1, seed=3)[0]
    x = _normalised(clip.frames[None], KINETICS_MEAN, KINETICS_STD)  # (1, 3, T, H, W)
    assert x.shape == (1, 3, 9, 64, 64)
    with torch.inference_mode():
        expected = ext.model.features(x)[0].numpy()
    np.testing.assert_allclose(ext.extract([clip])[0]["csn"], expected, rtol=1e-4, atol=1e-5)


def test_csn_batches_clips_of_different_lengths():
    ext = extractor("csn", {"csn_arch": "ir_csn_152"})
    mixed = clips(2, t=9, seed=4) + clips(1, t=5, seed=5)
    out = ext.extract(mixed)
    np.testing.assert_allclose(out[2]["csn"], ext.extract(mixed[2:])[0]["csn"], rtol=1e-4, atol=1e-5)


def test_wrong_frame_size_or_dtype_is_an_error():
    ext = extractor("hrnet", {"hrnet_frames": 1})
    with pytest.raises(ValueError, match=r"expected \(T, 64, 64, 3\)"):
        ext.extract(clips(1, size=32))
    floats = clips(1)[0]
    floats.frames = floats.frames / 255.0
    with pytest.raises(ValueError, match="float64 frames"):
        ext.extract([floats])


@pytest.mark.parametrize("family", ["hrnet", "csn"])
def test_no_silent_random_weights(family, tmp_path):
    with pytest.raises(FileNotFoundError, match="download.sh"):
        TIERS[family].extractor(GenConfig(weights_dir=str(tmp_path)), "cpu")


def test_bad_variant_is_refused():
    with pytest.raises(ValueError, match="hrnet_frames"):
        HRNetExtractor(GenConfig(smoke_random_weights=True, hrnet_frames=3), "cpu")


def test_pickled_extractor_leaves_the_backbone_behind():
    """Decoding workers (spawn / forkserver) get a pickled extractor: it must not carry the model's tensors."""
    ext = extractor("csn", {"csn_arch": "ir_csn_152"})
    blob = pickle.dumps(ext)
    copy = pickle.loads(blob)
    assert len(blob) < 100_000 and not hasattr(copy, "model") and hasattr(ext, "model")
    assert copy.frame_spec == ext.frame_spec and copy.settings() == ext.settings()


def test_cpu_runs_fp32():
    assert compute_dtype(torch.device("cpu"), "bf16") is torch.float32


def _calibrate_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Make a random-weight network behave like a trained one before comparing precisions: BN statistics from one
    cumulative train-mode pass, then each residual branch's last BN scale halved. (With unit-variance branches, 50
    random blocks are chaotic: bf16 rounding alone decorrelates the output, cosine ~0.86 on CPU bf16 for ip-CSN;
    halved, bf16 gives > 0.9999 while flipping the depthwise kernels in time gives 0.97.)
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model.features(x)
        for m in model.modules():
            if isinstance(m, csn.Bottleneck):
                m.conv3[1].weight.mul_(0.5)
            elif isinstance(m, hrnet.BasicBlock | hrnet.Bottleneck):
                (m.bn2 if isinstance(m, hrnet.BasicBlock) else m.bn3).weight.mul_(0.5)
    model.eval()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("family", "overrides"), [("hrnet", {"hrnet_frames": 5}), ("csn", {"csn_arch": "ip_csn_152"})])
def test_reduced_precision_matches_fp32_on_gpu(family, overrides):
    """Some cuDNN versions return wrong bf16 3-D convolutions: autocast features must stay close to fp32.

    Uses the real weights when ``weights/`` holds them, else calibrated random weights.
    """
    spec = FrameSpec(16, (128, 128), "squash")
    arch = HRNetExtractor.arch if family == "hrnet" else overrides["csn_arch"]
    real = weights_path(arch, ROOT / "weights").is_file()
    ext = extractor(family, overrides, spec, device="cuda", weights_dir=str(ROOT / "weights") if real else "")
    assert ext.dtype in (torch.bfloat16, torch.float16)
    batch = clips(4, t=16, size=128, seed=6)
    if not real:
        x = _normalised(np.stack([c.frames for c in batch]), ext.mean, ext.std).cuda()  # (B, 3, T, H, W)
        _calibrate_bn(ext.model, x if family == "csn" else x.transpose(1, 2).flatten(0, 1))  # (B*T, 3, H, W)
    low = torch.from_numpy(np.stack([o[family] for o in ext.extract(batch)]))
    reduced, ext.dtype = ext.dtype, torch.float32
    try:
        full = torch.from_numpy(np.stack([o[family] for o in ext.extract(batch)]))
    finally:
        ext.dtype = reduced
    cosine = torch.nn.functional.cosine_similarity(low, full, dim=1)
    assert (cosine > 0.99).all(), f"{family} {reduced} vs fp32 cosine {cosine.tolist()}"


def test_backbone_dims_match_extractors():
    assert BACKBONES[HRNetExtractor.arch].feature_dim == 720
    assert {BACKBONES[a].feature_dim for a in ("ip_csn_152", "ir_csn_152")} == {2048}


# Runs the orchestrator in a fresh interpreter, under a timeout: its decoding workers are other processes, and a
# worker forked from a process that has used OpenCV's thread pool (writing the fixture videos) hangs for ever.
E2E_DRIVER = """
import json, sys
from config import GenConfig
from features.base import FrameSpec
from features.deep import CSNExtractor, HRNetExtractor
from pipeline.generate import run
for cls in (HRNetExtractor, CSNExtractor):  # tiny decode: 6 frames of 64x64 instead of 45 x 256x256
    cls.frame_spec = FrameSpec(6, (64, 64), "squash")
print(json.dumps([s.extracted for s in run(GenConfig(**json.loads(sys.argv[1])))]))
"""


@pytest.mark.slow
def test_end_to_end_through_the_orchestrator(tmp_path):
    """gen_features' loop (features/extract.py) over a tiny Memento10k: both deep families, smoke weights, resume."""
    from features.store import FeatureStore
    from tests.fixtures_video import memento_layout

    names = memento_layout(tmp_path / "data" / "Memento10k", n=5, n_frames=12)
    cfg = GenConfig(
        dataset="Memento10k",
        data_dir=str(tmp_path / "data"),
        features=["hrnet", "csn"],
        smoke_random_weights=True,
        hrnet_frames=5,
        csn_arch="ir_csn_152",
        workers=1,
        batch_size=2,
        device="cpu",
    )

    def gen_features() -> list[int]:
        args = json.dumps({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", E2E_DRIVER, args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert gen_features() == [len(names), len(names)]
    stores = {
        "hrnet": FeatureStore.at(cfg.resolved_features_dir(), "Memento10k", "hrnet_f5").read(),
        "csn": FeatureStore.at(cfg.resolved_features_dir(), "Memento10k", "ir_csn_152").read(),
    }
    for family, data in stores.items():
        assert len(data.ids) == len(names) and not data.failures
        assert data.dims == {family: 720 if family == "hrnet" else 2048}
        assert data.meta["smoke"] is True and data.meta["settings"]["weights"] == "RANDOM (smoke)"
        assert np.isfinite(data.features[family]).all()
    assert stores["hrnet"].meta["settings"]["frames"] == 5
    assert stores["csn"].meta["settings"]["arch"] == "ir_csn_152"
    assert gen_features() == [0, 0]  # a second run finds everything stored and computes nothing
