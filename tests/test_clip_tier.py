"""The clip tier: open_clip's RN50 image tower with seeded random weights (smoke) on tiny clips, weight files in both
published formats (OpenAI TorchScript archive, open_clip state dict), the refusal of missing weights, and
gen_features + similarity + train end to end through the extraction loop."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from config import ROOT, ConfigError, GenConfig, TrainConfig, parse, parse_explicit
from features.base import Clip
from features.clip import CLIP_WEIGHTS, CLIPExtractor, _open_clip, build_image_tower, weights_stem
from features.store import FeatureStore
from pipeline.run.training import run_training
from tiers import TIERS

_CACHE: dict[str, CLIPExtractor] = {}


def smoke_extractor() -> CLIPExtractor:
    """RN50 with seeded random weights, built once for the module."""
    if "rn50" not in _CACHE:
        _CACHE["rn50"] = CLIPExtractor(GenConfig(smoke_random_weights=True, clip_frames=2), "cpu")
    return _CACHE["rn50"]


def clips(n: int, t: int = 2, seed: int = 0, size: int = 224) -> list[Clip]:
    rng = np.random.default_rng(seed)
    return [Clip(f"v{i}", None, rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)) for i in range(n)]


def test_registered_with_its_options_and_store():
    tier = TIERS["clip"]
    assert tier.extractor is CLIPExtractor and tier.spaces() == ("clip",)
    cfg = parse(TrainConfig, ["--use_clip", "--clip_std", "--clip_model", "ViT-L-14", "--clip_frames", "4"])
    assert tier.sources(cfg, "clip") == [("clip_ViT-L-14_openai_f4", "clip"), ("clip_ViT-L-14_openai_f4", "clip_std")]
    assert TIERS["clip"].store(TrainConfig()) == "clip_RN50_openai_f8"  # defaults: RN50 / openai / 8 frames
    gen = parse(GenConfig, ["--features", "clip", "--clip_download"])
    assert gen.clip_download is True and not hasattr(TrainConfig(), "clip_download")  # extraction-only option


@pytest.mark.slow
def test_smoke_settings_and_output():
    ext = smoke_extractor()
    settings = ext.settings()
    assert ext.smoke and settings["smoke"] is True and settings["weights"] == "RANDOM (smoke)"
    assert settings["dim"] == 1024 and settings["input_size"] == [224, 224] and settings["frames"] == 2
    assert settings["dtype"] == "float32" and ext.frame_spec.crop == "center" and ext.frame_spec.n_frames == 2
    out = ext.extract(clips(2))
    assert set(out[0]) == {"clip", "clip_std"}
    for o in out:
        assert o["clip"].shape == o["clip_std"].shape == (1024,) and o["clip"].dtype == np.float32
        assert np.isfinite(o["clip"]).all() and 0 < np.linalg.norm(o["clip"]) <= 1 + 1e-5  # mean of unit vectors
        assert (o["clip_std"] > 0).any()


def test_mean_and_std_over_frames_and_batching():
    ext = smoke_extractor()
    batch = clips(2, seed=1)
    together = ext.extract(batch)
    alone = [ext.extract([c])[0] for c in batch]
    for a, b in zip(together, alone, strict=True):
        assert np.allclose(a["clip"], b["clip"], atol=1e-5) and np.allclose(a["clip_std"], b["clip_std"], atol=1e-5)
    frames = batch[0].frames
    per_frame = torch.stack([ext._embed(frames[i : i + 1])[0] for i in range(len(frames))])  # (T, D)
    assert np.allclose(together[0]["clip"], per_frame.mean(0).numpy(), atol=1e-5)
    assert np.allclose(together[0]["clip_std"], per_frame.std(0, unbiased=False).numpy(), atol=1e-5)
    still = Clip("still", None, np.repeat(frames[:1], 2, axis=0))
    assert np.abs(ext.extract([still])[0]["clip_std"]).max() < 1e-5  # no change between frames, no temporal std


def test_wrong_frame_size_is_an_error():
    with pytest.raises(ValueError, match=r"expected \(T, 224, 224, 3\) uint8"):
        smoke_extractor().extract(clips(1, size=64))


def test_missing_weights_are_refused_with_the_commands(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_image_tower("RN50", "openai", tmp_path, smoke=False)
    message = str(err.value)
    assert str(tmp_path / "clip" / "RN50_openai") in message
    assert f"bash weights/download.sh {tmp_path} clip_RN50_openai" in message
    assert "--clip_download" in message and "--smoke_random_weights" in message
    with pytest.raises(FileNotFoundError, match="--clip_download"):  # no download.sh entry: the hub command only
        build_image_tower("RN50", "yfcc15m", tmp_path, smoke=False)
    with pytest.raises(ConfigError, match="not an open_clip model"):
        build_image_tower("RN5000", "openai", tmp_path, smoke=True)
    with pytest.raises(ConfigError, match="not an open_clip tag of RN50; its tags: openai"):
        _fetch_unknown_tag(tmp_path)


def _fetch_unknown_tag(tmp_path: Path) -> None:
    from features.clip import fetch_weights

    fetch_weights("RN50", "no-such-tag", tmp_path)


def _random_clip(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _open_clip().create_model(
            "RN50", pretrained=None, force_quick_gelu=True, pretrained_image=False, pretrained_text=False
        )


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["state_dict", "torchscript"])
def test_weights_files_load_into_the_image_tower(tmp_path, layout, pin_weights):
    """An open_clip state dict (.bin) and an OpenAI-style TorchScript archive (.pt) both load, values exact."""
    model = _random_clip(seed=7).eval()
    folder = tmp_path / "clip"
    folder.mkdir()
    if layout == "state_dict":
        torch.save(model.state_dict(), folder / f"{weights_stem('RN50', 'openai')}.bin")
    else:
        torch.jit.script(model).save(str(folder / f"{weights_stem('RN50', 'openai')}.pt"))
        pin_weights("clip/RN50_openai.pt", folder / "RN50_openai.pt")  # random values: not OpenAI's digest
    visual, info = build_image_tower("RN50", "openai", tmp_path, smoke=False)
    expected = model.visual.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in visual.state_dict().items())
    assert info["weights"].startswith("clip/RN50_openai.") and info["size"] == (224, 224)


@pytest.mark.slow
def test_clip_download_saves_under_the_name_extraction_looks_for(tmp_path, monkeypatch):
    """--clip_download: open_clip's download (faked here: no network) lands in <weights_dir>/clip/<model>_<tag>."""
    open_clip = _open_clip()
    source = tmp_path / "hub" / "open_clip_pytorch_model.bin"
    source.parent.mkdir()
    model = _random_clip(seed=3)
    torch.save(model.state_dict(), source)
    asked = {}

    def fake_download(cfg: dict, cache_dir: str) -> str:
        asked.update(cfg=cfg, cache_dir=cache_dir)
        return str(source)

    monkeypatch.setattr(open_clip, "download_pretrained", fake_download)
    visual, info = build_image_tower("RN50", "openai", tmp_path / "w", smoke=False, download=True)
    assert asked["cfg"]["hf_hub"] == "timm/resnet50_clip.openai/" and info["weights"] == "clip/RN50_openai.bin"
    assert (tmp_path / "w" / "clip" / "RN50_openai.bin").is_file()
    assert not [p for p in (tmp_path / "w" / "clip").iterdir() if p.name.startswith(".")]  # no temporary left
    assert torch.equal(visual.conv1.weight, model.visual.conv1.weight)


@pytest.mark.slow
def test_misshapen_weights_name_the_key(tmp_path):
    model = _random_clip(seed=1)
    state = model.state_dict()
    state["visual.conv1.weight"] = state["visual.conv1.weight"][:, :, :2]
    (tmp_path / "clip").mkdir()
    torch.save(state, tmp_path / "clip" / "RN50_openai.bin")
    with pytest.raises(RuntimeError, match="visual.conv1.weight"):
        build_image_tower("RN50", "openai", tmp_path, smoke=False)


def test_download_script_and_readme_list_the_clip_weights():
    script = (ROOT / "weights" / "download.sh").read_text()
    readme = (ROOT / "weights" / "README.md").read_text()
    entries = {}
    for line in script.splitlines():
        if line.strip().startswith('"clip_') and line.count("|") == 3:
            name, rel, url, size = line.strip().strip('"').split("|")
            entries[name] = (rel, url, size)
    assert entries == {w.name: (w.file, w.url, "-") for w in CLIP_WEIGHTS.values()}  # "-": accepted by digest only
    # their sha256 are pinned in weights/SHA256SUMS (tests/test_weights.py), the URL's folder name
    assert all(w.file in readme and w.url in readme and w.name in readme for w in CLIP_WEIGHTS.values())


E2E_DRIVER = """
import json, sys
from config import GenConfig
from pipeline.generate import run
print(json.dumps([s.extracted for s in run(GenConfig(**json.loads(sys.argv[1])))]))
"""


@pytest.mark.slow
def test_end_to_end_through_the_orchestrator(tmp_path):
    """gen_features' loop over a tiny Memento10k with smoke weights, resume, similarity in the clip space, training."""
    from tests.fixtures_video import memento_layout

    data = tmp_path / "data"
    names = memento_layout(data / "Memento10k", n=17, n_frames=8)  # 11 train videos: similarity needs 10
    cfg = GenConfig(
        dataset="Memento10k", data_dir=str(data), features=["clip"], smoke_random_weights=True, clip_frames=1,
        workers=1, batch_size=4, device="cpu",
    )  # fmt: skip

    def gen_features(cfg: GenConfig) -> list[int]:
        args = json.dumps({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", E2E_DRIVER, args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert gen_features(cfg) == [len(names)]
    data_ = FeatureStore.at(data / "features", "Memento10k", "clip_RN50_openai_f1").read()
    assert len(data_.ids) == len(names) and not data_.failures and data_.dims == {"clip": 1024, "clip_std": 1024}
    assert data_.meta["smoke"] is True and data_.meta["settings"]["weights"] == "RANDOM (smoke)"
    assert data_.meta["settings"]["frames"] == 1 and np.isfinite(data_.features["clip"]).all()
    again = dataclasses.replace(cfg, features=["clip", "similarity"], similarity_features=["clip"])
    again.similarity_methods = ["cosine_mean"]
    assert gen_features(again) == [0]  # everything stored: nothing decoded again; similarity computed
    sim = FeatureStore.at(data / "features", "Memento10k", "similarity_clip_RN50_openai_f1").read()
    assert sim.meta["smoke"] is True and sim.dims == {"cosine_mean": 1}

    argv = ["--dataset", "Memento10k", "--data_dir", str(data), "--use_clip", "--clip_std", "--clip_frames", "1"]
    argv += ["--use_similarity", "--similarity_features", "clip", "--similarity_methods", "cosine_mean"]
    argv += ["--epochs", "2", "--hidden_channels", "8", "--seed", "0", "--runs_dir", str(tmp_path / "runs")]
    run_training(*parse_explicit(TrainConfig, [*argv, "-n", "c", "-s"], check=False))
    ckpt = torch.load(tmp_path / "runs" / "c" / "best.pt", weights_only=True)
    assert ckpt["dims"] == {"clip": 2048, "similarity": 1}  # mean + temporal std; one cosine_mean score
    assert ckpt["sources"]["clip_RN50_openai_f1"]["smoke"] is True and ckpt["tiers"]["clip"] == "clip"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reduced_precision_matches_fp32_on_gpu():
    ext = CLIPExtractor(GenConfig(smoke_random_weights=True, clip_frames=4), "cuda")
    assert ext.dtype in (torch.bfloat16, torch.float16) and ext.channels_last
    batch = clips(4, t=4, seed=2)
    low = np.stack([o["clip"] for o in ext.extract(batch)])
    reduced, ext.dtype = ext.dtype, torch.float32
    try:
        full = np.stack([o["clip"] for o in ext.extract(batch)])
    finally:
        ext.dtype = reduced
    cosine = (low * full).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(full, axis=1)
    assert (cosine > 0.99).all(), cosine
