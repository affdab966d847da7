"""Fixture videos written by the tests themselves: PyAV libx264 / cv2 mp4v files and a tiny Memento10k layout."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np


def moving_frames(n: int = 12, h: int = 48, w: int = 64, seed: int = 0, speed: int = 2) -> np.ndarray:
    """RGB uint8 (n, h, w, 3): a textured background with a bright square moving ``speed`` px a frame."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 1.5)
    frames = []
    for t in range(n):
        f = np.roll(base, t * speed, axis=1).copy()
        x = (4 + t * speed) % max(w - 12, 1)
        f[h // 3 : h // 3 + 10, x : x + 10] = (250, 240, 30)
        frames.append(f)
    return np.stack(frames)


def write_x264(
    path: Path, frames: np.ndarray, fps: int = 30, audio: bool = False, faststart: bool = False, codec: str = "libx264"
) -> Path:
    """H.264 mp4 (PyAV), optionally with an AAC audio stream; ``codec="libvpx"`` with a .webm path gives VP8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "23", "preset": "ultrafast", "threads": "1"}
        astream = out.add_stream("aac", rate=16000) if audio else None
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: stream.height, : stream.width]), "rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if astream is not None:
            _write_audio(out, astream, seconds=len(frames) / fps)
    return path


def _write_audio(out: av.container.OutputContainer, astream: av.stream.Stream, seconds: float) -> None:
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, len(samples), 1024):
        chunk = samples[start : start + 1024]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        out.mux(astream.encode(frame))
    out.mux(astream.encode())


def write_audio_only(path: Path, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        _write_audio(out, out.add_stream("aac", rate=16000), seconds)
    return path


def write_mp4v(path: Path, frames: np.ndarray, fps: int = 30) -> Path:
    """MPEG-4 part 2 mp4 (cv2 writer; any frame size, odd ones included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def memento_layout(root: Path, n: int, n_frames: int = 10, h: int = 40, w: int = 56, bad: dict | None = None) -> list:
    """A Memento10k folder (official JSON keys, ``videos/*.mp4``): ``n`` clips split 60/20/20, plus ``bad``
    ``{filename: bytes}`` files listed in train. Returns the filenames."""
    names = []
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for i in range(n):
        name = f"action{i % 3}_clip{i:03d}.mp4"
        write_mp4v(root / "videos" / name, moving_frames(n_frames, h, w, seed=i, speed=1 + i % 4))
        split = "train" if i % 5 < 3 else ("val" if i % 5 == 3 else "test")
        splits[split].append(name)
        names.append(name)
    for name, content in (bad or {}).items():
        (root / "videos" / name).write_bytes(content)
        splits["train"].append(name)
        names.append(name)
    for split, files in splits.items():
        records = []
        for k, name in enumerate(sorted(files)):
            action = name.split("_")[0]
            rec = {
                "filename": name,
                "url": f"https://example.org/actions3/{action}/{name.split('_', 1)[1]}",
                "mem_score": 0.5 + 0.4 * ((k * 7) % 10) / 10,
                "alpha": -0.001,
                "audio_description": "a test clip",
                "captions": [f"caption {j}" for j in range(5)],
                "action_labels": [action],
            }
            if split == "test":
                del rec["mem_score"]
            records.append(rec)
        (root / f"memento_{split}_data.json").write_text(json.dumps(records))
    return names
