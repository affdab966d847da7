"""The six raw features, each against an independent computation (scikit-image, scikit-learn, per-frame loops)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.feature import hog as skimage_hog
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from features.base import Clip
from features.blur import blur_log_power, resize_frames
from features.raw import (
    BLUR_FLOOR,
    RAW_FEATURES,
    HogPCA,
    RawExtractor,
    hog_descriptors,
    stored_dims,
)
from features.video import VideoError
from tests.fixtures_video import moving_frames, write_x264


def natural_frames(n: int = 4, size: int = 256, seed: int = 0) -> np.ndarray:
    """Smooth colour texture with sharp-edged shapes: flat areas, edges in every direction, ties between channels."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        f = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 3)
        cv2.circle(f, tuple(int(v) for v in rng.integers(40, size - 40, 2)), 30, (255, 255, 255), -1)
        cv2.rectangle(f, (10, 10), (90, 60), (0, 0, 255), -1)
        f[150:170, :] = 128  # equal channels: ties in the channel choice
        frames.append(f)
    return np.stack(frames)


def test_hog_matches_scikit_image():
    # 5 frames: two chunks of HOG_CHUNK (one partial), so the rows where stacked frames meet are exercised;
    # the last is noise (large gradients of every sign, every bin)
    noise = np.random.default_rng(4).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    frames = np.concatenate([natural_frames(4), noise])
    ours = hog_descriptors(frames)
    assert ours.shape == (5, 31 * 31 * 36) == (5, 34596)
    for i, f in enumerate(frames):
        ref = skimage_hog(f, 9, (8, 8), (2, 2), "L2-Hys", channel_axis=-1)
        np.testing.assert_allclose(ours[i], ref, atol=2e-6)


def test_hog_matches_scikit_image_on_odd_sizes():
    f = np.random.default_rng(1).integers(0, 256, (1, 61, 83, 3), dtype=np.uint8)
    ref = skimage_hog(f[0], 9, (8, 8), (2, 2), "L2-Hys", channel_axis=-1)
    np.testing.assert_allclose(hog_descriptors(f)[0], ref, atol=2e-6)


def test_pca_matches_scikit_learn_whitened():
    x = np.random.default_rng(0).normal(size=(40, 300)) @ np.diag(np.linspace(3, 0.1, 300))
    ours = HogPCA.fit(x.astype(np.float32), 10)
    ref = PCA(10, whiten=True, svd_solver="full").fit(x)
    z, zr = ours.transform(x), ref.transform(x)
    signs = np.sign((z * zr).sum(axis=0))
    np.testing.assert_allclose(z, zr * signs, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1.0, atol=1e-6)  # whitened on the fit set
    with pytest.raises(ValueError, match="more than 10"):
        HogPCA.fit(x[:10], 10)


def test_pca_fit_and_projection_do_not_depend_on_the_blas_thread_count():
    # 300 videos: the size from which OpenBLAS's Gram product rounds differently on 1 and 2 threads (1e-17), which
    # made a resumed extraction in a one-thread child differ from the in-process store
    x = np.random.default_rng(4).random((300, 2000), dtype=np.float32)
    out = {}
    for threads in (1, 2, 4):
        with threadpool_limits(threads):
            pca = HogPCA.fit(x, 10)
            out[threads] = pca.components.tobytes() + pca.scale.tobytes() + pca.transform(x[:40]).tobytes()
    assert out[2] == out[1] and out[4] == out[1]


def test_brightness_and_contrast_against_opencv_per_frame():
    frames = natural_frames(3)
    clip = Clip("a", None, frames)
    b = RAW_FEATURES["brightness"].fn(clip, {})
    c = RAW_FEATURES["contrast"].fn(clip, {})
    for i, f in enumerate(frames):
        assert b[i, 0] == pytest.approx(cv2.cvtColor(f, cv2.COLOR_RGB2HSV_FULL)[..., 2].mean(), abs=1e-9)
        assert c[i, 0] == pytest.approx(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).std(), abs=1e-9)


def reference_blur(frame: np.ndarray, size: int = 60) -> float:
    """The pyimagesearch FFT blur detector, per frame, float64 numpy FFT (the reference code's way)."""
    h, w = frame.shape[:2]
    resized = cv2.resize(frame, (500, int(h * 500 / w)), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)
    (hh, ww) = grey.shape
    cx, cy = int(ww / 2.0), int(hh / 2.0)
    shifted = np.fft.fftshift(np.fft.fft2(grey))
    shifted[cy - size : cy + size, cx - size : cx + size] = 0
    recon = np.fft.ifft2(np.fft.ifftshift(shifted))
    return float(np.mean(20 * np.log(np.maximum(np.abs(recon), BLUR_FLOOR))))


def test_blurriness_against_the_reference_fft_detector():
    frames = natural_frames(2)
    ours = RAW_FEATURES["blurriness"].fn(Clip("a", None, frames), {})[:, 0]
    ref = [reference_blur(f) for f in frames]
    np.testing.assert_allclose(ours, ref, rtol=2e-5)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 4) for f in frames])
    assert (RAW_FEATURES["blurriness"].fn(Clip("b", None, blurred), {})[:, 0] < ours - 5).all()


@pytest.mark.parametrize("shape", [(192, 256), (257, 256), (255, 256), (256, 250), (40, 200)])
def test_blurriness_against_the_reference_on_other_shapes(shape):
    """Heights 375, 501 (odd), 498 at width 500; a frame whose resized height (100) is below the 120 square."""
    h, w = shape
    frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in natural_frames(2, seed=5)])
    frames = np.concatenate([frames, np.full((1, h, w, 3), 90, np.uint8)])  # a flat frame: every |x| floored
    ours = RAW_FEATURES["blurriness"].fn(Clip("a", None, frames), {})[:, 0]
    if int(h * 500 / w) > 120:
        np.testing.assert_allclose(ours, [reference_blur(f) for f in frames], rtol=2e-5)
    assert ours[-1] == pytest.approx(20 * np.log(BLUR_FLOOR), rel=1e-6)


def _at_every_offset(frames: np.ndarray, fn) -> list[np.ndarray]:
    """``fn`` of ``frames`` copied at every byte offset mod 16, each after another allocation history (which moves
    the kernels' temporaries)."""
    results, held = [], []
    for offset in range(16):
        held.append(np.ones(4112 * offset + 8, np.uint8))  # moves where the heap hands out the next blocks
        buf = np.empty(frames.nbytes + 16, np.uint8)
        moved = buf[offset : offset + frames.nbytes].reshape(frames.shape)
        moved[:] = frames
        results.append(np.asarray(fn(moved)))
    return results


@pytest.mark.parametrize("feature", ["blurriness", "meanOF", "brightness", "contrast"])
def test_raw_features_do_not_depend_on_where_the_frames_lie_in_memory(feature):
    """Byte-identical features on a resumed run or another rank: the same frames anywhere in memory give the same
    bits (OpenCV's IPP kernels of cv2.magnitude / cv2.sumElems did not: blurriness and meanOF moved by an ulp)."""
    if feature == "blurriness":
        rgb = np.stack([cv2.resize(f, (500, 256), interpolation=cv2.INTER_AREA) for f in natural_frames(4)])
        grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb])  # (4, 256, 500)
        results = _at_every_offset(grey, blur_log_power)
    else:  # 6 frames of 256 x 256: cv2.magnitude of their flow gave 4 results (500 x 256 happened to give 1)
        results = _at_every_offset(natural_frames(6), lambda f: RAW_FEATURES[feature].fn(Clip("v", None, f), {}))
    for r in results[1:]:
        assert np.array_equal(r, results[0])
        assert np.array_equal(r.astype(np.float32), results[0].astype(np.float32))


def test_blur_resize_of_the_stacked_clip_is_the_per_frame_resize():
    frames = np.random.default_rng(2).integers(0, 256, (45, 256, 256, 3), dtype=np.uint8)
    per_frame = np.stack([cv2.resize(f, (500, 500), interpolation=cv2.INTER_AREA) for f in frames])
    np.testing.assert_array_equal(resize_frames(frames, 500, 500), per_frame)


def translating(n: int, step: int, size: int = 256) -> np.ndarray:
    big = natural_frames(1, size + n * step + 8, seed=3)[0]
    return np.stack([big[:size, t * step : t * step + size] for t in range(n)])


def test_mean_optical_flow_measures_motion_in_frame_pixels():
    moving = RAW_FEATURES["meanOF"].fn(Clip("m", None, translating(6, 6)), {})
    still = RAW_FEATURES["meanOF"].fn(Clip("s", None, translating(6, 0)), {})
    assert moving.shape == (1,) and moving[0] == pytest.approx(6.0, rel=0.2)
    assert still[0] < 0.05


def test_size_orig_is_the_video_stream_and_npy_uses_the_original(tmp_path):
    path = write_x264(tmp_path / "videos" / "a_b.mp4", moving_frames(10, 48, 64), audio=True)
    import av

    with av.open(str(path)) as c:
        expected = sum(p.size for p in c.demux(c.streams.video[0]))
    clip = Clip("a_b", path, np.zeros((2, 8, 8, 3), np.uint8))
    assert RAW_FEATURES["size_orig"].fn(clip, {})[0] == expected
    npy = tmp_path / "videos_npy" / "a_b.npy"
    npy.parent.mkdir()
    np.save(npy, np.zeros((45, 8, 8, 3), np.uint8))
    assert RAW_FEATURES["size_orig"].fn(Clip("a_b", npy, clip.frames), {})[0] == expected
    lonely = tmp_path / "videos_npy" / "c_d.npy"
    np.save(lonely, np.zeros((45, 8, 8, 3), np.uint8))
    with pytest.raises(VideoError, match="original compressed video"):
        RAW_FEATURES["size_orig"].fn(Clip("c_d", lonely, clip.frames), {})


@pytest.mark.parametrize("name", sorted(RAW_FEATURES))
def test_every_registered_feature_has_its_declared_shape(name, tmp_path):
    feat = RAW_FEATURES[name]
    frames = translating(5, 2)
    path = write_x264(tmp_path / "v.mp4", frames[:, :64, :64])
    pca = HogPCA(np.zeros(34596), np.eye(10, 34596), np.ones(10))
    out = feat.fn(Clip("v", path, frames), {"hog_pca": pca})
    assert out.shape == ((5, feat.dim) if feat.per_frame else (feat.dim,))
    assert np.isfinite(out).all()


def test_hog_feature_is_the_whitened_projection_of_each_frame():
    frames = translating(5, 2)
    rng = np.random.default_rng(0)
    pca = HogPCA(rng.random(34596), rng.normal(size=(10, 34596)), rng.random(10) + 0.5)
    per_frame = RAW_FEATURES["hog"].fn(Clip("v", None, frames), {"hog_pca": pca})
    desc = hog_descriptors(frames).astype(np.float64)
    np.testing.assert_allclose(per_frame, (desc - pca.mean) @ pca.components.T / pca.scale, rtol=1e-6, atol=1e-9)
    assert stored_dims() == {
        "hog": 10, "hog_std": 10, "brightness": 1, "brightness_std": 1, "contrast": 1, "contrast_std": 1,
        "blurriness": 1, "blurriness_std": 1, "meanOF": 1, "size_orig": 1,
    }  # fmt: skip


def test_extract_summarises_mean_and_std(tmp_path):
    frames = translating(4, 3)
    path = write_x264(tmp_path / "v.mp4", frames[:, :64, :64])
    ext = RawExtractor.__new__(RawExtractor)
    ext.hog_pca = HogPCA(np.zeros(34596), np.eye(10, 34596), np.ones(10))
    (out,) = ext.extract([Clip("v", path, frames)])
    assert {k: v.shape[0] for k, v in out.items()} == stored_dims()
    assert {v.dtype for v in out.values()} == {np.dtype(np.float32)}
    b = RAW_FEATURES["brightness"].fn(Clip("v", path, frames), {})[:, 0]
    assert out["brightness"][0] == pytest.approx(b.mean(), rel=1e-6)
    assert out["brightness_std"][0] == pytest.approx(b.std(), rel=1e-5, abs=1e-6)
    ext.hog_pca = None
    with pytest.raises(RuntimeError, match="PCA"):
        ext.extract([Clip("v", path, frames)])


def test_mean_optical_flow_is_the_farneback_average_of_area_downscaled_frames():
    """The definition written out: INTER_AREA to 80x80, Farneback per pair, scaled to frame pixels, float64 means."""
    frames = natural_frames(4, seed=1)
    frames[1:] = np.roll(frames[0], (2, 5), axis=(0, 1))[None]  # one real motion, then two still pairs
    got = RAW_FEATURES["meanOF"].fn(Clip("v", None, frames), {})
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    small = [cv2.resize(g, (80, 80), interpolation=cv2.INTER_AREA) for g in grey]
    mags = []
    for a, b in zip(small[:-1], small[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 1, 5, 1.2, 0) * np.float32(256 / 80)
        mags.append(cv2.magnitude(flow[..., 0], flow[..., 1]).astype(np.float64).mean())  # float32 flow, float64 mean
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [np.mean(mags)], rtol=1e-9)  # a float32 mean is off by ~4e-8; runs differ by 3e-11


def test_vertical_motion_reads_as_much_as_horizontal_motion():
    across = RAW_FEATURES["meanOF"].fn(Clip("x", None, translating(6, 6)), {})[0]
    down = RAW_FEATURES["meanOF"].fn(Clip("y", None, translating(6, 6).transpose(0, 2, 1, 3).copy()), {})[0]
    assert down == pytest.approx(across, rel=0.1)


def test_a_clip_is_converted_to_grey_once(monkeypatch, tmp_path):
    """contrast and meanOF share the full-size grey frames raw_features made (blurriness greys its own resize)."""
    import features.raw as raw

    full_size = []
    real = raw.grey_frames
    monkeypatch.setattr(raw, "grey_frames", lambda f: (full_size.append(f.shape[1:3] == (256, 256)), real(f))[1])
    frames = natural_frames(3)
    path = write_x264(tmp_path / "v.mp4", frames[:, :64, :64])
    out = raw.raw_features(Clip("v", path, frames), HogPCA(np.zeros(34596), np.eye(10, 34596), np.ones(10)))
    assert sum(full_size) == 1
    assert out["contrast"][0] == pytest.approx(np.mean([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).std() for f in frames]))


def test_the_raw_errors_say_what_is_missing(tmp_path):
    frames = translating(3, 1)
    with pytest.raises(RuntimeError) as err:
        RAW_FEATURES["hog"].fn(Clip("v", None, frames), {})
    assert str(err.value) == "the HOG PCA is not fitted: the extraction loop fits it before extract()"
    with pytest.raises(VideoError) as err:
        RAW_FEATURES["size_orig"].fn(Clip("v", None, frames), {})
    assert (str(err.value.path), err.value.reason) == ("<memory>", "size_orig needs the original video file")
    lonely = tmp_path / "videos_npy" / "c_d.npy"
    lonely.parent.mkdir()
    np.save(lonely, frames)
    with pytest.raises(VideoError) as err:
        RAW_FEATURES["size_orig"].fn(Clip("c_d", lonely, frames), {})
    assert str(err.value) == (
        f"{lonely}: size_orig needs the original compressed video (looked for videos/<stem>.mp4 beside videos_npy/); "
        "the .npy array's size says nothing about the video"
    )
    ext = RawExtractor.__new__(RawExtractor)
    ext.hog_pca = None
    with pytest.raises(RuntimeError) as err:
        ext.extract([Clip("v", None, frames)])
    assert str(err.value) == (
        "RawExtractor: the HOG PCA is not loaded (the extraction loop runs prepare_fit / load_prepared first)"
    )
