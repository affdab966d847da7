"""The resmem tier: m3s's ResMem network against the ``resmem`` package's own forward pass and preprocessing, the
weights' pin and load, the per-video summary, images, and zero-shot scoring (``evaluate.py --pretrained resmem``).

The tests that need the real weights skip without the opt-in ``resmem`` package (``bash envs/setup.sh --with
resmem``; CI installs it). Real ResNet-152 costs about 0.1 s a frame on our quiet 2-core CPU (up to 2 s under
load): one extractor is built for the module, and every test scores a handful of frames.
"""

from __future__ import annotations

import csv
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config import ROOT, ConfigError, EvalConfig, GenConfig, TrainConfig, parse
from features import resmem as fr
from features.base import Clip
from features.video import read_clip
from model import backbones
from model.resmem import ResMem
from tests.fixtures_real import copy_real_videos, require_real_videos
from tiers import TIERS

PINNED = "8e4b8ab0ac338909add68a674e9bd4c1602350731abe7f97bc060dc159706a53"


def _installed() -> bool:
    try:
        fr.weights_file()
        return True
    except fr.ResMemMissing:
        return False


needs_resmem = pytest.mark.skipif(
    not _installed(),
    reason=f"resmem=={fr.VERSION} is not installed: its wheel ships the ResMem weights (opt-in: bash envs/setup.sh "
    "--with resmem; ResMem Non-commercial License)",
)
_CACHE: dict[str, fr.ResMemExtractor] = {}


def extractor() -> fr.ResMemExtractor:
    """The real-weights extractor, built once for the module (2 frames per video)."""
    if "real" not in _CACHE:
        _CACHE["real"] = fr.ResMemExtractor(GenConfig(resmem_frames=2), "cpu")
    return _CACHE["real"]


def real_frames(n: int = 2) -> dict[str, np.ndarray]:
    """``n`` sampled frames of each real video, decoded as the tier decodes them (uint8 (n, 256, 256, 3))."""
    spec = fr.FrameSpec(n, (fr.RESIZE, fr.RESIZE), "squash", "pil-bilinear")
    return {Path(p).stem: read_clip(p, spec) for p in require_real_videos().values()}


# --------------------------------------------------------------------------- without the package


def test_registered_with_its_options_stores_and_space():
    tier = TIERS["resmem"]
    assert tier.extractor is fr.ResMemExtractor and tier.spaces() == ("resmem",)
    cfg = parse(TrainConfig, ["--use_resmem", "--resmem_frames", "4"])
    assert tier.sources(cfg, "resmem") == [("resmem_f4", "resmem"), ("resmem_f4", "resmem_profile")]
    cfg = parse(TrainConfig, ["--use_resmem", "--resmem_resnet"])
    assert tier.sources(cfg, "resmem")[-1] == ("resmem_f8", "resmem_resnet")
    assert tier.space(cfg, "resmem")[:2] == ("resmem_f8", "resmem_resnet") and cfg.normalize_resmem
    assert "Non-commercial" in tier.help and "--with resmem" in tier.help  # the licence in --help


def test_licence_and_install_command_are_in_help():
    for script in ("train.py", "gen_features.py", "evaluate.py"):
        out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
        assert "Non-commercial License" in " ".join(out.stdout.split()), script


def test_a_missing_package_is_one_line_naming_the_install_and_the_licence(monkeypatch):
    def absent(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(fr.importlib.metadata, "distribution", absent)
    with pytest.raises(fr.ResMemMissing) as err:
        fr.ResMemExtractor(GenConfig(resmem_frames=2), "cpu")
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, ConfigError)
    assert "bash envs/setup.sh --with resmem" in message and "pip install --no-deps resmem==1.1.6" in message
    assert "ResMem Non-commercial License (University of Chicago)" in message


def test_summary_and_profile():
    scores = np.array([0.2, 0.8, 0.5], np.float32)
    pooled = np.arange(6, dtype=np.float32).reshape(3, 2)
    row = fr.summarise(scores, pooled)
    np.testing.assert_allclose(row["resmem"], [0.5, 0.8, np.std([0.2, 0.8, 0.5])], rtol=1e-6)
    # 8 evenly spaced positions over frames 0..2: 0, 2/7, ..., 2
    np.testing.assert_allclose(row["resmem_profile"], np.interp(np.linspace(0, 2, 8), [0, 1, 2], scores), rtol=1e-6)
    assert row["resmem_profile"][0] == pytest.approx(0.2) and row["resmem_profile"][-1] == pytest.approx(0.5)
    np.testing.assert_allclose(row["resmem_resnet"], [2.0, 3.0])
    one = fr.summarise(np.array([0.7], np.float32), pooled[:1])  # an image: one frame
    assert one["resmem"].tolist() == pytest.approx([0.7, 0.7, 0.0]) and np.all(one["resmem_profile"] == np.float32(0.7))
    assert all(v.dtype == np.float32 for v in row.values())


def test_module_shapes_and_eval_mode_dropout():
    torch.manual_seed(0)
    model = ResMem().eval()
    assert sum(p.numel() for p in model.parameters()) == 131_688_809
    assert sum(v.numel() for v in model.state_dict().values()) == 131_840_388  # the package file's values
    x = torch.rand(2, 3, 227, 227)
    with torch.inference_mode():
        score, pooled = model.features_and_score(x)
        again = model(x)
        model.train()
        dropped = model(x)
    assert score.shape == (2,) and pooled.shape == (2, 2048) and torch.equal(score, again)
    assert not torch.allclose(score, dropped)  # dropout is active in train mode only


def test_config_refusals_of_pretrained():
    with pytest.raises(ConfigError, match="not both"):
        parse(EvalConfig, ["--pretrained", "resmem", "--videos", "d", "--checkpoint", "x.pt"])
    with pytest.raises(ConfigError, match="--videos DIR_OR_LIST"):
        parse(EvalConfig, ["--pretrained", "resmem"])
    assert parse(EvalConfig, ["--pretrained", "resmem", "--videos", "d"]).resmem_frames == 8
    with pytest.raises(ConfigError, match="without a trained model, --pretrained resmem gives zero-shot scores"):
        parse(EvalConfig, ["--videos", "d"])  # a researcher with videos and no checkpoint is pointed to it


# --------------------------------------------------------------------------- with the package's weights


def _package_model():
    """The package's own ResMem, built with a shim for its ``resnet152(pretrained=...)`` call (gone from
    torchvision): a plain ``resnet152(weights=None)``, whose values the package's state dict then replaces."""
    from features.tv_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import resmem
    import torchvision

    resmem.resnet152 = lambda pretrained=False: torchvision.models.resnet152(weights=None)
    return resmem, resmem.ResMem(pretrained=True).eval()


@needs_resmem
def test_forward_equals_the_package_on_the_same_input():
    package, theirs = _package_model()
    ours = extractor().model
    frames = real_frames(1)
    x = torch.rand(2, 3, 227, 227, generator=torch.Generator().manual_seed(0))
    crops = np.stack([f[0, fr.CROP_TOP : fr.CROP_TOP + 227, fr.CROP_TOP : fr.CROP_TOP + 227] for f in frames.values()])
    x = torch.cat([x, torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255])  # 2 random + 3 real frames
    with torch.inference_mode():
        expected = theirs(x).squeeze(1)
        got, pooled = ours.features_and_score(x)
    assert (got - expected).abs().max().item() <= 1e-5 and pooled.shape == (5, 2048)
    assert ((got > 0) & (got < 1)).all()


@needs_resmem
def test_preprocessing_equals_the_package_transformer(tmp_path):
    """A real frame saved as an image: the tier's decoded, cropped input is the package's ``transformer`` output."""
    from PIL import Image

    package, _ = _package_model()
    bunny = require_real_videos()["bigbuckbunny.mp4"]  # 1280x720: resized 5x down, the case where filters differ
    cap = cv2.VideoCapture(str(bunny))
    ok, bgr = cap.read()
    cap.release()
    image = tmp_path / "bunny.png"
    cv2.imwrite(str(image), bgr)
    theirs = package.transformer(Image.open(image).convert("RGB"))  # (3, 227, 227)
    frames = read_clip(image, extractor().frame_spec, images=True)  # (1, 256, 256, 3)
    crop = frames[0, fr.CROP_TOP : fr.CROP_TOP + 227, fr.CROP_TOP : fr.CROP_TOP + 227]
    assert torch.equal(torch.from_numpy(crop).permute(2, 0, 1).float() / 255, theirs)
    with torch.inference_mode():
        assert extractor().score_frames(frames)[0][0] == pytest.approx(extractor().model(theirs[None]).item(), abs=1e-6)


@needs_resmem
def test_weights_are_pinned_hashed_and_loaded_weights_only(monkeypatch, tmp_path):
    assert backbones.pinned_sha256(fr.WEIGHTS_REL) == PINNED == fr.weights_digest()
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(fr.torch, "load", spy)
    fr.load_resmem()
    assert loads and all(k.get("weights_only") is True for k in loads)
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  {fr.WEIGHTS_REL}\n")  # another pin: the installed file is refused
    monkeypatch.setattr(backbones, "SHA256SUMS", sums)
    monkeypatch.delenv(backbones.TRUST_ENV, raising=False)
    with pytest.raises(backbones.WeightsError, match="not the 0000"):
        fr.load_resmem()


@needs_resmem
def test_extract_summarises_the_frame_scores_and_batches_alike():
    ext = extractor()
    clips = [Clip(k, None, v) for k, v in real_frames(2).items()]
    together = ext.extract(clips)  # 3 videos x 2 frames in one pass
    scores, pooled = ext.score_frames(np.concatenate([c.frames for c in clips]))  # (6,), (6, 2048)
    alone = ext.extract(clips[:1])[0]
    for name in alone:
        np.testing.assert_allclose(together[0][name], alone[name], atol=1e-5)
    for k, row in enumerate(together):
        s, p = scores[2 * k : 2 * k + 2], pooled[2 * k : 2 * k + 2]
        assert [row[n].shape for n in ("resmem", "resmem_profile", "resmem_resnet")] == [(3,), (8,), (2048,)]
        assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in row.values())
        np.testing.assert_allclose(row["resmem"], [s.mean(), s.max(), s.std()], atol=1e-5)
        assert 0 < row["resmem"][0] <= row["resmem"][1] < 1 and row["resmem"][2] >= 0
        np.testing.assert_allclose(row["resmem_profile"][[0, -1]], s, atol=1e-5)
        np.testing.assert_allclose(row["resmem_resnet"], p.mean(axis=0), atol=1e-4)
    with pytest.raises(ValueError, match=r"expected \(T, 256, 256, 3\) uint8"):
        ext.extract([Clip("small", None, np.zeros((2, 64, 64, 3), np.uint8))])


@needs_resmem
def test_zero_shot_scores_videos_and_images_and_reports_failures(tmp_path):
    folder = tmp_path / "mine"
    videos = copy_real_videos(folder)
    cap = cv2.VideoCapture(str(videos[0]))
    ok, bgr = cap.read()
    cap.release()
    cv2.imwrite(str(folder / "lamem_style.jpg"), bgr)
    (folder / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "scores.csv"
    cmd = [sys.executable, "evaluate.py", "--videos", str(folder), "--pretrained", "resmem", "--out", str(out)]
    run = subprocess.run(cmd + ["--resmem_frames", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    text = " ".join(run.stdout.split())
    assert "scored 4 of 5 files with ResMem" in text
    assert "mean ResMem image memorability (0-1) of 1 evenly spaced frames" in text
    assert "not a video model trained on human video memorability scores" in text and "Non-commercial" in text
    assert "failed broken:" in text and "cannot open" in text
    with out.open(newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["bigbuckbunny", "bikes", "broken", "carphone_pristine", "lamem_style"]
    assert rows["broken"]["prediction"] == "" and "cannot open" in rows["broken"]["error"]
    image = rows["lamem_style"]
    assert image["frames"] == "1" and image["prediction"] == image["resmem_max"] and float(image["resmem_std"]) == 0
    # the first frame of bigbuckbunny, as an image: the package's score of that frame (one frame, sampled: not
    # the first) lies in (0, 1); each video's single sampled frame gives mean = max
    for vid in ("bigbuckbunny", "bikes", "carphone_pristine"):
        r = rows[vid]
        assert 0 < float(r["prediction"]) < 1 and r["prediction"] == r["resmem_max"] and r["frames"] == "1"


def test_the_opt_in_pins_are_the_ones_the_code_names():
    pins = (ROOT / "envs" / "requirements-resmem.txt").read_text().split()
    assert f"resmem=={fr.VERSION}" in pins and "scikit-video==1.1.11" in pins
    assert "--with resmem" in (ROOT / ".ci" / "run").read_text()  # CI runs the tests that need them


@pytest.mark.gpu
@needs_resmem
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_channels_last_matches_fp32_on_gpu():
    """The issue's bar: on a GPU, bf16 autocast + channels-last features match fp32's (cosine > 0.999)."""
    ext = fr.ResMemExtractor(GenConfig(resmem_frames=2, deep_dtype="bf16"), "cuda")
    assert ext.dtype == torch.bfloat16 and ext.channels_last
    frames = np.concatenate(list(real_frames(2).values()))  # (6, 256, 256, 3)
    s_low, p_low = ext.score_frames(frames)
    ext.dtype = torch.float32
    s_full, p_full = ext.score_frames(frames)
    cosine = (p_low * p_full).sum(1) / np.linalg.norm(p_low, axis=1) / np.linalg.norm(p_full, axis=1)
    assert (cosine > 0.999).all(), (cosine, np.abs(s_low - s_full).max())
