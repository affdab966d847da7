"""The extraction loop: failures recorded and skipped, resume after a real kill (byte-identical store), torchrun
sharding over 2 CPU ranks (byte-identical too), the dataset crop rule, and a clear error for a missing dataset."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gen_features
from config import ROOT, GenConfig
from features.base import Clip, Extractor, FrameSpec
from features.extract import extract_family
from features.store import FeatureStore
from pipeline.generate import run
from tests.fixtures_video import memento_layout

BAD = {"broken_x.mp4": b"\x00not a video" * 100, "empty_y.mp4": b""}
N_GOOD = 20  # 12 train (+2 bad), 4 val, 4 test


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    memento_layout(data / "Memento10k", N_GOOD, n_frames=8, bad=BAD)
    return data


def gen_cfg(data: Path, features: Path, **kw) -> GenConfig:
    return GenConfig(data_dir=str(data), features_dir=str(features), dataset="Memento10k", workers=1, **kw)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> tuple[Path, list]:
    """An uninterrupted in-process extraction: the store every other way of running must reproduce."""
    features = tmp_path_factory.mktemp("ref")
    summaries = run(gen_cfg(corpus, features, batch_size=4))
    return features / "Memento10k" / "raw.h5", summaries


def test_run_stores_good_videos_and_records_failures(reference):
    path, (summary,) = reference
    data = FeatureStore(path).read()
    assert len(data.ids) == N_GOOD and summary.extracted == N_GOOD
    assert set(data.failures) == {"broken_x", "empty_y"}
    assert "zero-length" in data.failures["empty_y"] and "broken_x.mp4" in data.failures["broken_x"]
    assert data.dims["hog"] == 10 and data.dims["hog_std"] == 10 and data.dims["size_orig"] == 1
    assert data.meta["family"] == "raw" and data.meta["dataset"] == "Memento10k" and data.meta["smoke"] is False
    pca = data.transforms["hog_pca"]
    assert pca.arrays["components"].shape == (10, 34596) and pca.info["n_used"] == 12
    assert pca.info["n_train_ids"] == 14  # the two unreadable train videos are skipped, and counted
    assert np.isfinite(data.features["hog"]).all() and (data.features["size_orig"] > 0).all()
    assert not path.with_suffix(".parts").exists()  # compacted


def test_the_hog_pca_is_fitted_on_the_train_videos_alone(corpus, reference):
    """Its mean is the mean HOG of the first sampled frame of the 12 readable train videos, computed here (the 4 val
    and 4 test videos would move it)."""
    from features.hog import hog_descriptors
    from features.raw import RawExtractor
    from features.video import read_clip

    path, _ = reference
    pca = FeatureStore(path).read().transforms["hog_pca"].arrays
    videos = corpus / "Memento10k" / "videos"
    names = {i: f"action{i % 3}_clip{i:03d}.mp4" for i in range(N_GOOD)}
    first = {i: hog_descriptors(read_clip(videos / n, RawExtractor.frame_spec)[:1])[0] for i, n in names.items()}
    train = [first[i] for i in range(N_GOOD) if i % 5 < 3]  # memento_layout's split rule
    assert len(train) == 12
    np.testing.assert_allclose(pca["mean"], np.mean(train, axis=0, dtype=np.float64), rtol=1e-6, atol=1e-9)
    everything = np.mean(list(first.values()), axis=0, dtype=np.float64)
    assert np.abs(pca["mean"] - everything).max() > 1e-3  # the test can tell


def test_second_run_skips_everything_and_retry_failed_retries(reference, corpus, tmp_path):
    path, _ = reference
    features = tmp_path / "f"
    (features / "Memento10k").mkdir(parents=True)
    (features / "Memento10k" / "raw.h5").write_bytes(path.read_bytes())
    (again,) = run(gen_cfg(corpus, features))
    assert again.extracted == 0 and again.skipped == N_GOOD + 2 and not again.failed
    (retry,) = run(gen_cfg(corpus, features, retry_failed=True))
    assert retry.extracted == 0 and retry.skipped == N_GOOD and set(retry.failed) == {"broken_x", "empty_y"}
    assert (features / "Memento10k" / "raw.h5").read_bytes() == path.read_bytes()


def _cli(corpus: Path, features: Path, *extra: str) -> list[str]:
    return ["gen_features.py", "--dataset", "Memento10k", "--data_dir", str(corpus), "--features_dir", str(features),
            "--features", "raw", "--workers", "1", *extra]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


STOP_AFTER_PARTS = """
import os, runpy, sys, threading
from features.store import FeatureStore

append, written = FeatureStore.append, []


def append_then_stop(self, *args, **kwargs):
    append(self, *args, **kwargs)
    written.append(1)
    if len(written) == 3:  # say so on the test's FIFO, then wait to be killed
        fd = os.open(os.environ["M3S_PARTS_FIFO"], os.O_WRONLY)
        os.write(fd, b"3 parts\\n")
        os.close(fd)
        threading.Event().wait()


FeatureStore.append = append_then_stop
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_run_resumes_to_identical_bytes(reference, corpus, tmp_path):
    """Killed right after its third part is written (the run says so on a FIFO and waits: no polling), then
    resumed with another batch size."""
    ref_path, _ = reference
    features = tmp_path / "f"
    parts = features / "Memento10k" / "raw.parts"
    (tmp_path / "stop_after_parts.py").write_text(STOP_AFTER_PARTS)
    fifo = tmp_path / "parts"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # read and write: the run's open never blocks
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "stop_after_parts.py"), *_cli(corpus, features, "--batch_size", "1")],
        cwd=ROOT, env=_env() | {"M3S_PARTS_FIFO": str(fifo)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    ready = select.select([fd], [], [], 120)[0]
    said = os.read(fd, 64) if ready else b""
    os.close(fd)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert said == b"3 parts\n", err[-2000:]
    n_parts = len(list(parts.glob("*.h5")))
    assert n_parts == 3  # killed mid-way, some work saved
    out = subprocess.run(
        [sys.executable, *_cli(corpus, features, "--batch_size", "3")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{n_parts} already done" in out.stdout
    assert (features / "Memento10k" / "raw.h5").read_bytes() == ref_path.read_bytes()


@pytest.mark.slow
def test_torchrun_two_ranks_gives_identical_bytes(reference, corpus, tmp_path):
    ref_path, _ = reference
    features = tmp_path / "f"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_cli(corpus, features, "--batch_size", "2")]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"raw: {N_GOOD} extracted, 0 already done, 2 failed" in out.stdout  # totals gathered over both ranks
    assert (features / "Memento10k" / "raw.h5").read_bytes() == ref_path.read_bytes()


class _CropProbe(Extractor):
    family = "probe"
    frame_spec = FrameSpec(4, (32, 32), "squash")

    def extract(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        return [{"shape": np.array(c.frames.shape, np.float32)} for c in clips]


def test_extract_family_with_a_gpu_style_extractor(corpus, tmp_path):
    from dataset import load_records

    cfg = gen_cfg(corpus, tmp_path)
    records = load_records("Memento10k", cfg)
    from features.extract import Dist

    summary = extract_family(_CropProbe(cfg, "cpu"), "probe", records, cfg, Dist())
    data = FeatureStore.at(tmp_path, "Memento10k", "probe").read()
    assert summary.extracted == N_GOOD and set(data.failures) == {"broken_x", "empty_y"}
    assert (data.features["shape"] == [4, 32, 32, 3]).all()


def test_missing_dataset_file_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gen_features.py", "--dataset", "Memento10k", "--data_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as err:
        gen_features.main_guard(gen_features.main)
    assert err.value.code == 2
    assert str(tmp_path / "Memento10k" / "memento_train_data.json") in capsys.readouterr().err
