"""The built-in demo corpus: a few hundred synthetic clips in the official Memento10k layout, made on first use.

``ensure_demo_corpus(root)`` writes ``memento_{train,val,test}_data.json`` (70/15/15, every official key; the test
split without ``mem_score``, as released) and ``videos/<action>_<rest>.mp4`` (24 frames, 128x96, MPEG-4). It is
deterministic in ``seed``; a finished corpus is marked by ``.complete`` (written last) and skipped, an interrupted
one is generated again. Every file is written under a temporary name and renamed.

Each clip is a striped "scene" of one of eight types (orientation, stripe frequency and palette per type, drawn
with Zipf-like frequencies) with a moving disc. Per clip we draw brightness, contrast, blur and motion speed, and the
memorability score is, with noise, higher for bright, contrasted, sharp, moving clips and for rare scene types
(distinctiveness), around a mean of 0.8 and clipped to [0.3, 1] like Memento10k's. The raw tier sees all of these
(brightness, contrast, blurriness, meanOF; the scene type through HOG), so a raw-tier MLP learns the score.

Each clip's five captions (the JSON's ``captions``) say what its scene shows and how fast it moves, in five
phrasings, so the text tier sees the scene type (rarity) and the motion speed, but not brightness, contrast or blur.
They come from their own random stream: the videos and scores are the same as before captions were added.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from core.io import atomic_write, write_text

DEMO_VERSION = 2  # 2: captions describe the scene and the motion
N_FRAMES, HEIGHT, WIDTH, FPS = 24, 96, 128, 24
# (action name, share of the corpus, stripe angle in degrees, stripe period in pixels, RGB palette a, b)
SCENES = (
    ("walking", 0.30, 0, 16, (200, 180, 140), (60, 70, 90)),
    ("cooking", 0.20, 90, 12, (220, 120, 60), (40, 30, 20)),
    ("talking", 0.15, 45, 20, (150, 160, 200), (30, 30, 60)),
    ("running", 0.11, 135, 10, (90, 200, 90), (20, 60, 20)),
    ("juggling", 0.08, 30, 6, (240, 220, 40), (80, 20, 120)),
    ("surfing", 0.07, 150, 24, (40, 140, 230), (230, 240, 250)),
    ("welding", 0.05, 60, 4, (255, 140, 0), (10, 10, 10)),
    ("fencing", 0.04, 120, 8, (240, 240, 240), (120, 0, 0)),
)
SPLIT_SHARES = (("train", 0.70), ("val", 0.15), ("test", 0.15))
# what each scene type shows, for the captions (same order as SCENES)
SCENE_TEXT = (
    ("people walking down a street", "pedestrians on a sidewalk"),
    ("someone cooking in a kitchen", "a cook stirring a pan"),
    ("two people talking", "a conversation between friends"),
    ("a runner on a track", "an athlete jogging outdoors"),
    ("a performer juggling balls", "a street juggler"),
    ("a surfer riding a wave", "someone surfing in the ocean"),
    ("a worker welding metal", "sparks flying from a welding torch"),
    ("two fencers dueling", "a fencing match"),
)
# motion speed (0 to 4 pixels a frame) in five bands: (adjective, how it moves)
MOTION_TEXT = (
    ("still", "barely moving"),
    ("slow", "moving slowly"),
    ("steady", "moving at a steady pace"),
    ("fast", "moving quickly"),
    ("very fast", "rushing across the frame"),
)


def captions(scene: int, speed: float, rng: np.random.Generator) -> list[str]:
    """Five captions of a clip: its scene and its motion band, each phrased differently."""
    what, other = SCENE_TEXT[scene]
    adj, how = MOTION_TEXT[min(int(speed / 0.8), len(MOTION_TEXT) - 1)]
    options = [
        f"{what.capitalize()}, {how}.",
        f"A {adj} shot of {other}.",
        f"Video of {what}; the scene is {how}.",
        f"{other.capitalize()} with {adj} motion.",
        f"In this clip, {what} with everything {how}.",
    ]
    rng.shuffle(options)  # the order varies from clip to clip, as annotators' would
    return options


def _clip(scene: tuple, bright: float, contrast: float, blur: float, speed: float, rng: np.random.Generator):
    """RGB uint8 (N_FRAMES, HEIGHT, WIDTH, 3)."""
    _, _, angle, period, col_a, col_b = scene
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    theta = np.deg2rad(angle)
    proj = xx * np.cos(theta) + yy * np.sin(theta)
    a, b = np.array(col_a, np.float32), np.array(col_b, np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    x0, y0 = rng.uniform(20, WIDTH - 20), rng.uniform(20, HEIGHT - 20)
    phase0 = rng.uniform(0, 2 * np.pi)
    frames = []
    for t in range(N_FRAMES):
        # stripes drift with the motion speed, the disc moves (bouncing off the borders)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period + phase0 + 0.35 * speed * t)
        img = b + (a - b) * wave[..., None]
        x = x0 + speed * t * np.cos(direction)
        y = y0 + speed * t * np.sin(direction)
        x = abs((x - 10) % (2 * (WIDTH - 20)) - (WIDTH - 20)) + 10
        y = abs((y - 10) % (2 * (HEIGHT - 20)) - (HEIGHT - 20)) + 10
        cv2.circle(img, (int(x), int(y)), 9, (255.0 - b).tolist(), -1)
        mean = img.mean()
        img = (img - mean) * contrast + mean * bright
        if blur > 0.05:
            img = cv2.GaussianBlur(img, (0, 0), blur)
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _write_video(path: Path, frames: np.ndarray) -> None:
    with atomic_write(path, suffix=".mp4") as tmp:  # the writer picks the container from the suffix
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def demo_records(n_videos: int, seed: int) -> list[dict]:
    """The corpus plan: one dict per clip with its scene, properties, split and official-format record."""
    rng = np.random.default_rng(seed)
    shares = np.array([s[1] for s in SCENES])
    scene_idx = rng.choice(len(SCENES), size=n_videos, p=shares / shares.sum())
    bright = rng.uniform(0.35, 1.0, n_videos)
    contrast = rng.uniform(0.2, 1.0, n_videos)
    blur = rng.choice([0.0, 0.0, 1.0, 2.0, 3.5], size=n_videos) * rng.uniform(0.8, 1.2, n_videos)
    speed = rng.uniform(0.0, 4.0, n_videos)
    rarity = -np.log(shares[scene_idx])
    score = (
        0.80
        + 0.035 * _zscore(bright)
        + 0.030 * _zscore(contrast)
        - 0.030 * _zscore(blur)
        + 0.035 * _zscore(speed)
        + 0.035 * _zscore(rarity)
        + rng.normal(0, 0.03, n_videos)
    )
    score = np.clip(score, 0.3, 1.0)
    order = rng.permutation(n_videos)
    n_train, n_val = round(0.70 * n_videos), round(0.15 * n_videos)
    split = np.empty(n_videos, dtype=object)
    split[order[:n_train]], split[order[n_train : n_train + n_val]], split[order[n_train + n_val :]] = (
        "train", "val", "test",
    )  # fmt: skip
    plan = []
    for i in range(n_videos):
        action = SCENES[scene_idx[i]][0]
        rest = f"demo-{seed}-{i:05d}"
        plan.append({
            "i": i, "scene": int(scene_idx[i]), "bright": bright[i], "contrast": contrast[i], "blur": blur[i],
            "speed": speed[i], "split": split[i],
            "record": {
                "filename": f"{action}_{rest}.mp4",
                "url": f"https://example.invalid/m3s-demo/actions3/{action}/{rest}.mp4",
                "mem_score": float(score[i]),
                "alpha": float(-0.0016 + 0.0008 * rng.standard_normal()),
                "audio_description": f"this is a synthetic video of {action}",
                "captions": captions(int(scene_idx[i]), float(speed[i]), np.random.default_rng([seed, i, 1])),
                "action_labels": [action],
            },
        })  # fmt: skip
    return plan


def ensure_demo_corpus(root: Path, n_videos: int = 300, seed: int = 0) -> None:
    """Generate the demo corpus under ``root`` unless a complete one with the same settings is there."""
    root = Path(root)
    marker = root / ".complete"
    wanted = {"version": DEMO_VERSION, "n_videos": n_videos, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return
    marker.unlink(missing_ok=True)
    plan = demo_records(n_videos, seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for item in plan:
        rng = np.random.default_rng([seed, item["i"]])
        frames = _clip(SCENES[item["scene"]], item["bright"], item["contrast"], item["blur"], item["speed"], rng)
        _write_video(root / "videos" / item["record"]["filename"], frames)
    for split, _ in SPLIT_SHARES:
        records = sorted((dict(p["record"]) for p in plan if p["split"] == split), key=lambda r: r["filename"])
        if split == "test":
            for r in records:
                del r["mem_score"]
        write_text(root / f"memento_{split}_data.json", json.dumps(records, indent=1))
    write_text(marker, json.dumps(wanted))
