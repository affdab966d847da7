"""What real data and real machines do to a run: killed writes, bad files, bad values, hostile names.

Each test reproduces one defect found by fault injection and failed before its fix.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from config import ConfigError, GenConfig, TrainConfig, parse, parse_explicit
from features.store import FeatureStore
from pipeline.run.checkpoint import load_checkpoint, save_checkpoint
from pipeline.run.training import run_training
from tests.test_train import _import, _train


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scheduler_gamma", "-1"], r"--scheduler_gamma -1.0 \(in \(0, 1\]\)"),
        (["--scheduler_step_size", "0"], r"--scheduler_step_size 0 \(>= 1\)"),
        (["--lr", "-0.1"], "--lr -0.1"),
        (["--lr", "nan"], "--lr nan"),
        (["--weight_decay", "-1"], "--weight_decay -1.0"),
        (["--momentum", "-0.5"], "--momentum -0.5"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--seed", str(2**64)], "--seed"),
        (["-n", "../x"], "a plain name"),
        (["-n", "/tmp/x"], "a plain name"),
    ],
)
def test_bad_values_are_refused_at_parse_time(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(TrainConfig, ["--use_raw", *argv])


def test_empty_raw_feature_list_from_yaml_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("use_raw: true\nraw_features: []\n")
    with pytest.raises(ConfigError, match="--raw_features"):
        parse(TrainConfig, ["--config", str(tmp_path / "c.yaml")])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated", "foreign"])
def test_unreadable_checkpoints_are_one_clear_error(tmp_path, content):
    path = tmp_path / "x.pt"
    if content == "truncated":
        save_checkpoint({"format": 1, "model": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif content == "foreign":
        torch.save({"format": 1, "state_dict": {}}, path)  # loads, but is someone else's file
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="is not an m3s checkpoint") as err:
        load_checkpoint(path)
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)


def test_resume_repairs_a_stale_best_checkpoint(memento, tmp_path):
    """Killed between writing last.pt and best.pt: after resuming, best.pt must hold the summary's best epoch."""
    _import(memento, tmp_path)
    first = _train(memento, tmp_path, "-n", "r", "-s", "--epochs", "3")
    run = tmp_path / "runs" / "r"
    stale = load_checkpoint(run / "last.pt") | {"epoch": -5}
    save_checkpoint(stale, run / "best.pt")  # what the kill left: an older best
    result = _train(memento, tmp_path, "--checkpoint_local", str(run / "last.pt"), "-s", "--epochs", "3")
    assert result["best"]["epoch"] == first["best"]["epoch"]
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == result["best"]["epoch"]
    assert all(torch.equal(best["model"][k], best["best_model"][k]) for k in best["model"])
    with pytest.raises(ConfigError, match="holds no optimiser state"):
        _train(memento, tmp_path, "--checkpoint_local", str(run / "best.pt"), "--epochs", "4")


@pytest.mark.parametrize(("flag", "value"), [("--hidden_channels", ["16", "4"]), ("--use_temporal_std", [])])
def test_resume_with_another_model_is_refused(memento, tmp_path, flag, value):
    _import(memento, tmp_path)
    _train(memento, tmp_path, "-n", "r", "-s", "--epochs", "2")
    with pytest.raises(ConfigError, match=f"{flag} .* differs from the checkpoint's"):
        _train(memento, tmp_path, "--checkpoint_local", str(tmp_path / "runs/r/last.pt"), flag, *value)


def test_resume_survives_a_cut_metrics_line_and_kill_leftovers(memento, tmp_path):
    _import(memento, tmp_path)
    _train(memento, tmp_path, "-n", "r", "-s", "--epochs", "2")
    run = tmp_path / "runs" / "r"
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "lr": 0.0')  # killed mid-line
    leftover = run / ".last.pt.999999999-abcd.tmp"  # killed inside torch.save (no such pid)
    leftover.write_bytes(b"half")
    _train(memento, tmp_path, "--checkpoint_local", str(run / "last.pt"), "-s", "--epochs", "3")
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2] and not leftover.exists()


def test_a_wandb_artifact_cannot_choose_where_the_run_writes(memento, tmp_path, monkeypatch):
    import wandb

    _import(memento, tmp_path)
    _train(memento, tmp_path, "-n", "src", "-s", "--epochs", "2")
    crafted = load_checkpoint(tmp_path / "runs/src/last.pt")
    crafted["config"] = crafted["config"] | {"runs_dir": str(tmp_path / "elsewhere"), "name": "../../escape"}
    folder = tmp_path / "artifact"
    folder.mkdir()
    save_checkpoint(crafted, folder / "checkpoint.pt")

    class FakeArtifact:
        def download(self):
            return str(folder)

    class FakeApi:
        def artifact(self, name, type=None):
            return FakeArtifact()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.delenv("WANDB_MODE")
    argv = ["--checkpoint_run_id", "abc", "--epochs", "3", "--runs_dir", str(tmp_path / "runs2")]
    with pytest.raises(ConfigError, match="a plain name"):
        run_training(*parse_explicit(TrainConfig, argv, check=False))
    result = run_training(*parse_explicit(TrainConfig, [*argv, "-n", "mine"], check=False))
    assert result["run_dir"] == str(tmp_path / "runs2" / "mine") and not (tmp_path / "elsewhere").exists()


def test_similarity_store_records_the_failures_of_its_space(memento, tmp_path, capsys):
    """Videos whose deep features failed are failures of the similarity store too, so training leaves them out: a
    failed train video is not trained on, a failed val video gets no prediction."""
    import csv

    from tests.conftest import signal_features

    ids, x = signal_features(memento, dim=12)
    failed = {ids[0]: "decoder crashed", ids[60]: "no frames"}  # the first train and the first val video
    assert "train-" in ids[0] and "val-" in ids[60]
    keep = [i for i, v in enumerate(ids) if v not in failed]
    store = FeatureStore.at(memento / "features", "Memento10k", "hrnet_f1")
    meta = {"family": "hrnet", "dataset": "Memento10k", "settings": {}, "smoke": False}
    store.append([ids[i] for i in keep], {"hrnet": x[keep]}, meta, failures=failed)
    store.compact()
    gen = GenConfig(data_dir=str(memento), dataset="Memento10k", similarity_features=["hrnet"],
                    similarity_methods=["cosine_mean"])  # fmt: skip
    from tiers import TIERS

    TIERS["similarity"].compute(gen)
    sim = FeatureStore.at(memento / "features", "Memento10k", "similarity_hrnet_f1").read()
    assert sim.failures == failed and not set(failed) & set(sim.ids)
    argv = ["--data_dir", str(memento), "--use_similarity", "--similarity_features", "hrnet", "--similarity_methods",
            "cosine_mean", "--epochs", "1", "--runs_dir", str(tmp_path / "runs"), "--seed", "0", "-n", "r"]  # fmt: skip
    capsys.readouterr()
    assert run_training(*parse_explicit(TrainConfig, argv, check=False))["last"]["epoch"] == 0
    assert "Memento10k: {'train': 59, 'val': 19} videos" in capsys.readouterr().out
    with (tmp_path / "runs" / "r" / "predictions_val.csv").open() as f:
        predicted = [row["id"] for row in csv.DictReader(f)]
    assert predicted == ids[61:80]


def test_files_differing_only_in_suffix_are_refused(tmp_path):
    from dataset import DATASETS

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "a.avi").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"a\.avi.*a\.mp4|a\.mp4.*a\.avi"):
        DATASETS["folder"].index(tmp_path)


@pytest.mark.parametrize("row", ["v1,1.0", "v1,1.0,2.0,3.0"])
def test_csv_import_with_a_short_or_long_row(memento, tmp_path, row):
    from pipeline.generate import run_import

    (tmp_path / "f.csv").write_text(f"id,a,b\n{row}\nv2,1.0,2.0\n")
    argv = ["--dataset", "Memento10k", "--data_dir", str(memento), "--import", str(tmp_path / "f.csv"), "--name", "f"]
    with pytest.raises(ConfigError, match="line 2 has 2 fields|line 2 has 4 fields"):
        run_import(parse(GenConfig, argv))


@pytest.mark.parametrize("kind", ["empty_npy", "empty_npz", "empty_h5", "no_columns", "complex"])
def test_empty_or_odd_imports_are_clear_errors(memento, tmp_path, kind):
    import h5py

    from pipeline.generate import run_import
    from tests.conftest import signal_features

    ids, x = signal_features(memento)
    path, extra = tmp_path / "f.npz", []
    if kind == "empty_npy":
        path = tmp_path / "f.npy"
        np.save(path, np.zeros((0, 3)))
        (tmp_path / "ids.txt").write_text("")
        extra = ["--ids", str(tmp_path / "ids.txt")]
    elif kind == "empty_npz":
        np.savez(path, ids=np.array([], dtype=str), emb=np.zeros((0, 3)))
    elif kind == "empty_h5":
        path = tmp_path / "f.h5"
        h5py.File(path, "w").close()
    elif kind == "no_columns":
        np.savez(path, ids=np.array(ids), emb=np.zeros((len(ids), 0)))
    else:
        np.savez(path, ids=np.array(ids), emb=x.astype(np.complex64))
    argv = ["--dataset", "Memento10k", "--data_dir", str(memento), "--import", str(path), "--name", "f", *extra]
    expected = {"empty_npy": "no rows", "empty_npz": "no rows", "empty_h5": "no id column",
                "no_columns": r"expected \(\d+, D >= 1\)", "complex": "complex64 values"}  # fmt: skip
    with pytest.raises(ConfigError, match=expected[kind]):
        run_import(parse(GenConfig, argv))


def test_hdf5_external_storage_is_refused(memento, tmp_path):
    """An .h5 whose dataset points at another local file (/etc/passwd was imported) is refused."""
    import h5py

    from pipeline.generate import run_import
    from tests.conftest import signal_features

    ids, _ = signal_features(memento)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(len(ids) * 2, dtype=np.float32).tobytes())
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["ids"] = np.array(ids, dtype=object).astype("S")
        f.create_dataset("emb", shape=(len(ids), 2), dtype=np.float32, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    argv = ["--dataset", "Memento10k", "--data_dir", str(memento), "--import", str(tmp_path / "f.h5"), "--name", "f"]
    with pytest.raises(ConfigError, match="external"):
        run_import(parse(GenConfig, argv))


def test_videomem_split_falls_back_to_a_writable_place(tmp_path, monkeypatch, capsys):
    """Read-only dataset storage without the official pickle: the seeded split goes elsewhere, and it says where."""
    import core.io
    import dataset
    from tests.conftest import REALDATA

    if not (REALDATA / "videomem").is_dir():
        pytest.skip(f"{REALDATA} is absent")
    root = tmp_path / "data" / "VideoMem"
    root.mkdir(parents=True)
    shutil.copy(REALDATA / "videomem" / "ground-truth_dev-set.csv", root)
    real_write = core.io.write_text

    def read_only(path, text):
        if root in Path(path).parents:
            raise OSError(30, "Read-only file system", str(path))
        return real_write(path, text)

    monkeypatch.setattr(dataset, "write_text", read_only)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    paths = type("Paths", (), {"resolved_data_dir": lambda self: tmp_path / "data"})()
    records = dataset.load_records("VideoMem", paths)
    assert {r.split for r in records} == {"train", "val"}
    assert "read-only" in capsys.readouterr().out.lower()
    again = dataset.load_records("VideoMem", paths)
    assert [r.split for r in again] == [r.split for r in records]


def test_a_file_name_that_is_not_utf8_is_decoded(tmp_path):
    """cv2 segfaulted on ``caf\\xe9.mp4`` inside a worker: every rerun of the extraction stopped at the same place."""
    import os
    import subprocess
    import sys

    from config import ROOT
    from tests.fixtures_video import moving_frames, write_x264

    good = tmp_path / "ok.mp4"
    write_x264(good, moving_frames(12, 48, 64))
    latin1 = os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp4")
    os.link(good, latin1)
    code = (
        "import os, sys; from pathlib import Path; from features.base import FrameSpec; "
        "from features.video import read_clip, video_stream_bytes; "
        f"p = Path(os.fsdecode({latin1!r})); "
        "print(read_clip(p, FrameSpec(4, (32, 32))).shape, video_stream_bytes(p) > 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip() == "(4, 32, 32, 3) True"


def test_store_ids_round_trip_a_file_name_that_is_not_utf8(tmp_path):
    """``caf\\xe9.mp4`` killed extraction when its id was written to the part file (UnicodeEncodeError): its id keeps
    the file's own bytes in the store, as a row and as a failure, and valid UTF-8 ids are stored as before."""
    import os

    import h5py

    from features.store import FeatureStore

    latin1, bad = os.fsdecode(b"caf\xe9"), os.fsdecode(b"\xff\xfe")
    store = FeatureStore.at(tmp_path, "folder", "raw")
    meta = {"family": "raw", "dataset": "folder", "settings": {}}
    store.append([latin1, "caf\u00e9"], {"x": np.array([[1.0], [2.0]])}, meta, failures={bad: "truncated"})
    assert store.done_ids() == {latin1, "caf\u00e9", bad}  # a rerun skips them: nothing is redone or lost
    data = store.compact()
    assert data.ids == sorted([latin1, "caf\u00e9"]) and data.failures == {bad: "truncated"}
    with h5py.File(store.path) as f:
        assert sorted(f["ids"][()]) == [b"caf\xc3\xa9", b"caf\xe9"]  # the Latin-1 byte as it is; UTF-8 as UTF-8
    again = FeatureStore(store.path).read()
    assert again.ids == data.ids and again.failures == data.failures
    np.testing.assert_array_equal(again.features["x"][again.ids.index(latin1)], [1.0])


SLOW_TIER = """
import os
import time

from features.base import Extractor, FrameSpec
from tiers.base import Tier


class Slow(Extractor):
    family = "slow"
    frame_spec = FrameSpec(2, (16, 16), "squash")
    cpu_extract = True

    def extract(self, clips):
        fd = os.open(os.environ["M3S_READY"], os.O_WRONLY)  # the test's FIFO: this worker is up and extracting
        os.write(fd, f"{os.getpid()}\\n".encode())
        os.close(fd)
        time.sleep(120)


class SlowTier(Tier):
    name = "slow"
    extractor = Slow


TIER = SlowTier()
"""


def _marked(mark: str) -> set[int]:
    """The processes whose environment holds ``M3S_MARK=<mark>``."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"M3S_MARK={mark}".encode() in (entry / "environ").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def _lines(fd: int, n: int, seconds: float) -> list[bytes]:
    """Up to ``n`` lines read from ``fd``, waiting at most ``seconds`` in all (select, no polling)."""

    said, deadline = b"", time.monotonic() + seconds
    while said.count(b"\n") < n and select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
        said += os.read(fd, 64)
    return said.split()


def _outliving(pidfds: dict[int, int], seconds: float) -> set[int]:
    """The pids of ``{pidfd: pid}`` still running after ``seconds`` (a pidfd turns readable when its process ends)."""

    left, deadline = dict(pidfds), time.monotonic() + seconds
    while left and (ended := select.select(list(left), [], [], max(deadline - time.monotonic(), 0))[0]):
        for fd in ended:
            del left[fd]
    return set(left.values())


def test_killing_the_extraction_takes_its_workers_with_it(tmp_path):
    """Forkserver workers (~300 MB each) were seen alive 7 minutes after gen_features.py was killed. No sleeps: the
    workers say they are up through a FIFO, and each process's end is seen through its pidfd."""
    import signal
    import subprocess
    import sys
    import uuid

    from config import ROOT
    from tests.fixtures_video import memento_layout

    memento_layout(tmp_path / "data" / "Memento10k", n=4, n_frames=6)
    (tmp_path / "slow_tier.py").write_text(SLOW_TIER)
    ready = tmp_path / "ready"
    os.mkfifo(ready)
    ready_fd = os.open(ready, os.O_RDWR)  # read and write: the workers' opens never block, reads never see an EOF
    mark = uuid.uuid4().hex
    env = os.environ | {"M3S_TIERS": "slow_tier", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "M3S_MARK": mark,
                        "M3S_READY": str(ready)}  # fmt: skip
    argv = ["gen_features.py", "--dataset", "Memento10k", "--data_dir", str(tmp_path / "data"), "--features", "slow"]
    main = subprocess.Popen([sys.executable, *argv, "--workers", "2", "--batch_size", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    workers = {int(pid) for pid in _lines(ready_fd, 2, 60)}
    os.close(ready_fd)
    procs = _marked(mark) - {main.pid}  # the workers, the forkserver and whatever else the extraction started
    assert len(workers) == 2 and workers <= procs, f"the workers never started ({workers}, {procs})"
    pidfds = {}
    for pid in procs:
        try:
            pidfds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    main.send_signal(signal.SIGKILL)
    main.wait()
    left = _outliving(pidfds, 15)
    for fd in pidfds:
        os.close(fd)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} processes ({sorted(left)}) outlived the killed extraction"


def test_an_unwritable_features_dir_fails_before_any_work(memento, tmp_path, monkeypatch):
    from core.io import M3SError
    from pipeline import generate as extraction

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the features folder should be")
    monkeypatch.setattr(extraction, "load_records", lambda *a: pytest.fail("read the dataset before checking"))
    gen = GenConfig(data_dir=str(memento), features_dir=str(blocked), dataset="Memento10k")
    with pytest.raises(M3SError, match=f"cannot write to {blocked}"):
        extraction.run(gen)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB file system (tmpfs; needs the right to mount, else the test is skipped)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_one_clear_error_and_keeps_what_was_written(full_disk):
    from core.io import M3SError, StoreError

    store = FeatureStore.at(full_disk, "demo", "raw")
    meta = {"family": "raw", "settings": {}, "smoke": False}
    store.append(["v0"], {"a": np.ones((1, 4))}, meta)
    with pytest.raises(StoreError, match=f"no space left on {store.parts_dir}"):
        store.append([f"v{i}" for i in range(1, 20000)], {"a": np.random.rand(19999, 4)}, meta)
    assert store.read().ids == ["v0"] and not list(store.parts_dir.glob(".*.tmp"))
    with pytest.raises(M3SError, match=f"no space left on {full_disk}"):
        save_checkpoint({"w": torch.rand(200_000)}, full_disk / "last.pt")
    assert not (full_disk / "last.pt").exists() and not list(full_disk.glob(".*.tmp"))


def test_a_store_with_external_storage_is_refused(tmp_path):
    import h5py

    from core.io import StoreError

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append(["v1", "v2"], {"a": np.ones((2, 4))}, {"family": "raw", "settings": {}, "smoke": False})
    store.compact()
    with h5py.File(store.path, "a") as f:
        del f["features/a"]
        f.create_dataset("features/a", shape=(2, 4), dtype=np.float32, external=[(str(secret), 0, 32)])
    with pytest.raises(StoreError, match="keep their data in other files"):
        store.read()
