"""Run directories: one live process owns one, a dead owner's lock is stale, and a new run never takes another's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from config import ROOT, TrainConfig, parse_explicit
from core.rundir import RunDirBusy, owned

HOLD = """import sys
from core.rundir import owned
with owned(sys.argv[1]):
    print('held', flush=True)
    sys.stdin.read()
"""


def _holder(run_dir) -> subprocess.Popen:
    """Another process that owns ``run_dir`` until its stdin closes (it says 'held' once it owns it: no sleeping)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_live_owner_refuses_a_second_process_and_a_finished_one_does_not(tmp_path):
    run_dir = tmp_path / "runs" / "same"
    proc = _holder(run_dir)
    with pytest.raises(RunDirBusy) as err, owned(run_dir):
        pass
    assert f"{run_dir} is in use by pid {proc.pid} (-c {run_dir})" in str(err.value)
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    with owned(run_dir) as got:  # released: the next run takes it
        assert got == run_dir and (run_dir / ".lock").read_text().startswith(f"pid {os.getpid()} ")
        (run_dir / "config.yaml").write_text("{}\n")
    assert (run_dir / ".lock").read_text() == ""  # unlocked and empty once the run is over


def test_the_lock_of_a_killed_owner_is_stale(tmp_path):
    run_dir = tmp_path / "killed"
    proc = _holder(run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert f"pid {proc.pid} " in (run_dir / ".lock").read_text()  # the lock file stays behind...
    with owned(run_dir):  # ...but nobody holds it any more
        pass


def test_a_second_train_py_into_an_owned_directory_stops_before_loading_data(tmp_path, monkeypatch):
    from pipeline.run import training

    runs = tmp_path / "runs"
    proc = _holder(runs / "same")  # the first run has not written its config.yaml yet: the name still looks free
    monkeypatch.setattr(training, "load_records", lambda *a: pytest.fail("the lock is taken before data loads"))
    argv = ["--runs_dir", str(runs), "-n", "same", "--extra_features", "x", "--epochs", "1"]
    try:
        with pytest.raises(RunDirBusy, match=f"{runs / 'same'} is in use by pid {proc.pid} "):
            training.run_training(*parse_explicit(TrainConfig, argv, check=False))
        assert sorted(p.name for p in (runs / "same").iterdir()) == [".lock"]  # nothing of the second run
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_run_that_stops_before_writing_leaves_no_directory(tmp_path):
    with pytest.raises(FileNotFoundError), owned(tmp_path / "runs" / "r"):
        raise FileNotFoundError("the dataset is missing")
    assert not (tmp_path / "runs" / "r").exists()
    (tmp_path / "runs" / "kept").mkdir()
    with owned(tmp_path / "runs" / "kept"), owned(tmp_path / "runs" / "kept"):  # nested: one lock, shared
        pass
    assert (tmp_path / "runs" / "kept").is_dir()  # it existed before: not removed
