"""Video reading: the Memento sampler, resizing/cropping, the formats, and every kind of bad file."""

from __future__ import annotations

import numpy as np
import pytest

from features.base import FrameSpec
from features.video import VideoError, read_clip, sample_indices, video_stream_bytes
from tests.fixtures_video import moving_frames, write_audio_only, write_mp4v, write_x264

SPEC = FrameSpec(45, (64, 64), "squash")


def level_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame t is flat grey at level 2*t + 20: the decoded level tells which frame was sampled."""
    return np.stack([np.full((h, w, 3), 2 * t + 20, np.uint8) for t in range(n)])


def test_sample_indices_is_the_memento_formula():
    for length in (45, 90, 91, 168, 362):
        expected = [i * (length - 1) // 45 + (length - 1) // 90 for i in range(45)]
        assert sample_indices(length, 45).tolist() == expected
    assert sample_indices(90, 45)[[0, 1, -1]].tolist() == [0, 1, 87]


@pytest.mark.parametrize("writer", ["x264", "mp4v", "webm"])
def test_reads_the_sampled_frames(tmp_path, writer):
    frames = level_frames(90)
    if writer == "x264":
        path = write_x264(tmp_path / "a.mp4", frames)
    elif writer == "mp4v":
        path = write_mp4v(tmp_path / "a.mp4", frames)
    else:
        path = write_x264(tmp_path / "a.webm", frames, codec="libvpx")
    clip = read_clip(path, SPEC)
    assert clip.shape == (45, 64, 64, 3) and clip.dtype == np.uint8
    levels = clip.reshape(45, -1).mean(axis=1)
    expected = 2 * sample_indices(90, 45) + 20
    # up to a codec's constant level offset; neighbouring frames differ by 2 levels
    assert np.abs((levels - levels.mean()) - (expected - expected.mean())).max() < 1.0


def test_backends_agree_and_first_only(tmp_path):
    path = write_x264(tmp_path / "m.mp4", moving_frames(30, 48, 64))
    a = read_clip(path, SPEC, backend="cv2")
    b = read_clip(path, SPEC, backend="av")
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0
    first = read_clip(path, SPEC, first_only=True)
    assert first.shape == (1, 64, 64, 3) and np.array_equal(first[0], a[0])


def test_centre_crop_drops_the_sides(tmp_path):
    frames = np.zeros((10, 40, 120, 3), np.uint8)
    frames[:, :, :30] = 250  # a bright band on the left third (outside the centre square)
    frames[:, :, 40:80] = 100
    path = write_mp4v(tmp_path / "wide.mp4", frames)
    centre = read_clip(path, FrameSpec(45, (32, 32), "center"))
    squash = read_clip(path, FrameSpec(45, (32, 32), "squash"))
    assert abs(centre.mean() - 100) < 6  # only the middle band
    assert squash[:, :, :6].mean() > 200  # squash keeps the left band


def test_npy_arrays(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (45, 256, 256, 3), dtype=np.uint8)
    np.save(tmp_path / "v.npy", arr)
    assert np.array_equal(read_clip(tmp_path / "v.npy", FrameSpec()), arr)
    small = read_clip(tmp_path / "v.npy", SPEC)
    assert small.shape == (45, 64, 64, 3)
    np.save(tmp_path / "bad.npy", arr[..., 0])
    with pytest.raises(VideoError, match="uint8 \\(T, H, W, 3\\)"):
        read_clip(tmp_path / "bad.npy", SPEC)


def test_odd_sizes_decode(tmp_path):
    path = write_mp4v(tmp_path / "odd.mp4", moving_frames(8, 97, 129))
    assert read_clip(path, SPEC).shape == (45, 64, 64, 3)


def _bad_files(tmp_path):
    good = write_x264(tmp_path / "good.mp4", moving_frames(60, 48, 64), faststart=True).read_bytes()
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 500)
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) * 2 // 5])
    (tmp_path / "empty.mp4").write_bytes(b"")
    write_audio_only(tmp_path / "audio.mp4")
    write_mp4v(tmp_path / "one.mp4", moving_frames(1, 48, 64))
    write_mp4v(tmp_path / "tiny.mp4", moving_frames(5, 4, 4))
    return {
        "corrupt.mp4": "cannot open",
        "truncated.mp4": "truncated|cannot open",
        "empty.mp4": "zero-length",
        "audio.mp4": "no video stream",
        "one.mp4": "1 decodable frame",
        "tiny.mp4": "too small",
        "missing.mp4": "no such file",
    }


def test_bad_files_raise_video_error_with_path_and_reason(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(VideoError, match=reason) as err:
            read_clip(tmp_path / name, SPEC)
        assert str(tmp_path / name) in str(err.value)


def test_video_stream_bytes_excludes_audio_and_container(tmp_path):
    frames = moving_frames(20, 48, 64)
    plain = write_x264(tmp_path / "v.mp4", frames)
    with_audio = write_x264(tmp_path / "va.mp4", frames, audio=True)
    n = video_stream_bytes(plain)
    assert n == video_stream_bytes(with_audio)
    assert 0 < n < plain.stat().st_size < with_audio.stat().st_size
    with pytest.raises(VideoError, match="no video stream"):
        video_stream_bytes(write_audio_only(tmp_path / "a.mp4"))
