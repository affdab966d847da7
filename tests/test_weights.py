"""Pinned sha256 digests of the official weight files (``weights/SHA256SUMS``): checked on load and by download.sh.

No network and no real weights: a tiny backbone registered for the test stands in for the official ones on load, and a
``curl`` on PATH that copies a local file stands in for the download.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from config import ROOT
from features.clip import CLIP_WEIGHTS
from model.backbones import BACKBONES, TRUST_ENV, Backbone, WeightsError, file_sha256, load_backbone, pinned_sha256

HRNET_SHA256 = "0bba1a5da1484b21a42f89e05459e434119c829d6aae64d1c6d3ae0c38d2b43c"  # open_model_zoo, and SR-DF's LFS oid
TINY = Backbone(
    build=lambda: nn.Linear(3, 2),
    family="test",
    file="tiny/model.pth",
    url="http://example.invalid/tiny/model.pth",
    feature_dim=2,
    n_params=8,
    min_bytes=32,
)


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registered tiny backbone and its weights file under ``tmp_path`` (not pinned yet)."""
    monkeypatch.setitem(BACKBONES, "tiny", TINY)
    path = tmp_path / TINY.file
    path.parent.mkdir()
    torch.save(_state(seed=0), path)
    return path


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(2, 3, generator=gen), "bias": torch.randn(2, generator=gen)}


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_pinned_file_loads_and_a_changed_byte_is_refused(tiny, pin_weights, tmp_path):
    pin_weights(TINY.file, tiny)
    expected = file_sha256(tiny)
    assert torch.equal(load_backbone("tiny", tmp_path).weight, _state(seed=0)["weight"])
    _flip_a_byte(tiny)
    with pytest.raises(WeightsError) as err:
        load_backbone("tiny", tmp_path)
    message = str(err.value)
    assert str(tiny) in message and expected in message and file_sha256(tiny) in message
    assert f"bash weights/download.sh {tmp_path}" in message and f"{TRUST_ENV}=1" in message


def test_trust_env_loads_a_different_file_with_a_warning(tiny, pin_weights, tmp_path, monkeypatch, capsys):
    pin_weights(TINY.file, tiny)
    torch.save(_state(seed=1), tiny)  # your own fine-tuned weights, in the official file's place
    with pytest.raises(WeightsError, match=TRUST_ENV):
        load_backbone("tiny", tmp_path)
    monkeypatch.setenv(TRUST_ENV, "1")
    assert torch.equal(load_backbone("tiny", tmp_path).weight, _state(seed=1)["weight"])
    warning = capsys.readouterr().out
    assert warning.startswith("warning: ") and file_sha256(tiny) in warning and f"{TRUST_ENV}=1" in warning


def test_a_pin_the_user_adds_with_sha256sum_is_checked(tiny, pin_weights, tmp_path):
    """The CSN files have no published digest: a user pins theirs with `sha256sum FILE >> SHA256SUMS`."""
    sums = pin_weights("other/file.pth", tiny)
    assert pinned_sha256(TINY.file) is None
    load_backbone("tiny", tmp_path)  # not pinned: loads unchecked, as the CSN files do by default
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum here")
    line = subprocess.run(["sha256sum", TINY.file], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    sums.write_text(sums.read_text() + line)
    assert pinned_sha256(TINY.file) == file_sha256(tiny)
    _flip_a_byte(tiny)
    with pytest.raises(WeightsError, match="pinned for tiny/model.pth"):
        load_backbone("tiny", tmp_path)


def test_a_malformed_pin_line_is_an_error_naming_it(pin_weights, tmp_path):
    sums = pin_weights("other/file.pth", ROOT / "weights" / "download.sh")
    sums.write_text(sums.read_text() + "abc tiny/model.pth\n")
    with pytest.raises(WeightsError, match=r"line 2: 'abc tiny/model.pth'"):
        pinned_sha256(TINY.file)


def test_the_pins_are_the_published_digests_and_live_only_in_sha256sums():
    assert pinned_sha256(BACKBONES["hrnetv2_w48"].file) == HRNET_SHA256
    # no digest is published for the VMZ CSN files (weights/README.md): they are not pinned, not invented
    assert [pinned_sha256(b.file) for b in BACKBONES.values() if b.family == "csn"] == [None, None]
    assert all(pinned_sha256(w.file) == w.url.split("/")[-2] for w in CLIP_WEIGHTS.values())  # OpenAI's folder name
    script = (ROOT / "weights" / "download.sh").read_text()
    assert not re.findall(r"(?<![0-9a-f/])[0-9a-f]{64}(?![0-9a-f/])", script)  # only inside the CLIP URLs


def test_a_pinned_clip_file_is_checked_on_load(pin_weights, tmp_path):
    from features.clip import build_image_tower

    pin_weights("clip/RN50_openai.pt", ROOT / "weights" / "download.sh")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "RN50_openai.pt").write_bytes(b"not the OpenAI archive")
    with pytest.raises(WeightsError, match=r"clip/RN50_openai.pt.*download.sh \S+ clip_RN50_openai"):
        build_image_tower("RN50", "openai", tmp_path, smoke=False)


# --------------------------------------------------------------------------- download.sh, offline

FAKE_CURL = """#!/bin/sh
# stands in for curl: logs the call and copies $FAKE_DOWNLOAD to the file after -o
while [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done
echo "$out" >> "$CURL_LOG"
cp "$FAKE_DOWNLOAD" "$out"
"""


def _download(tmp_path: Path, sums: str, serves: bytes, *names: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run a copy of weights/download.sh (beside ``sums`` as its SHA256SUMS) into ``tmp_path/dest``; curl serves
    ``serves``. Returns the run and the files curl was asked to write."""
    script_dir, bin_dir = tmp_path / "script", tmp_path / "bin"
    for d in (script_dir, bin_dir):
        d.mkdir(exist_ok=True)
    shutil.copy(ROOT / "weights" / "download.sh", script_dir / "download.sh")
    (script_dir / "SHA256SUMS").write_text(sums)
    (bin_dir / "curl").write_text(FAKE_CURL)
    (bin_dir / "curl").chmod(0o755)
    (tmp_path / "served").write_bytes(serves)
    log = tmp_path / "curl.log"
    log.unlink(missing_ok=True)
    env = os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_DOWNLOAD": str(tmp_path / "served"),
        "CURL_LOG": str(log),
    }
    command = ["bash", str(script_dir / "download.sh"), str(tmp_path / "dest"), *names]
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    return run, log.read_text().split() if log.exists() else []


def test_download_accepts_only_the_pinned_digest(tmp_path):
    rel = BACKBONES["hrnetv2_w48"].file
    out = tmp_path / "dest" / rel
    good, bad = b"the pinned weights", b"the pinned weights, altered"
    (tmp_path / "good").write_bytes(good)
    sums = f"{file_sha256(tmp_path / 'good')}  {rel}\n"

    run, fetched = _download(tmp_path, sums, good, "hrnet")  # far below the size floor: only the digest accepts it
    assert run.returncode == 0 and out.read_bytes() == good and fetched == [f"{out}.part"], run.stderr
    assert "sha256 ok" in run.stdout and not Path(f"{out}.part").exists()

    run, fetched = _download(tmp_path, sums, bad, "hrnet")  # present with the right digest: skipped
    assert run.returncode == 0 and fetched == [] and "present, sha256 ok" in run.stdout

    out.write_bytes(bad)  # present with another digest: fetched again; what comes differs too
    run, fetched = _download(tmp_path, sums, bad, "hrnet")
    assert run.returncode == 1 and fetched == [f"{out}.part"] and "replace" in run.stdout
    assert Path(f"{out}.part").read_bytes() == bad and out.read_bytes() == bad  # kept aside, nothing accepted
    assert file_sha256(out) in run.stderr and file_sha256(tmp_path / "good") in run.stderr

    run, _ = _download(tmp_path, sums, good, "hrnet")  # a good fetch replaces it
    assert run.returncode == 0 and out.read_bytes() == good


def test_download_of_an_unpinned_file_checks_its_size_and_says_how_to_pin_it(tmp_path):
    spec = BACKBONES["ip_csn_152"]
    out = tmp_path / "dest" / spec.file
    out.parent.mkdir(parents=True)
    with out.open("wb") as f:
        f.truncate(spec.min_bytes)  # sparse: as big as the tensors, no disk used
    run, fetched = _download(tmp_path, "", b"", "ip_csn_152")
    assert run.returncode == 0 and fetched == [] and "no pinned sha256" in run.stdout
    assert "no sha256 is published" in run.stdout and f"sha256sum {spec.file}) >>" in run.stdout

    run, fetched = _download(tmp_path, f"{'0' * 64}  {spec.file}\n", b"small", "ip_csn_152")  # pinned by the user
    assert run.returncode == 1 and fetched == [f"{out}.part"] and "0" * 64 in run.stderr

    run, fetched = _download(tmp_path, "", b"", "clip_RN50_openai")  # must be pinned: refused before any fetch
    assert run.returncode == 1 and fetched == [] and "pins no sha256 for clip/RN50_openai.pt" in run.stderr
