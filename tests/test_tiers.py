"""The tier registry: every tier is tested the moment it is registered, and a new tier plugs in without editing m3s.

The parametrised tests run over ``tiers.TIERS``; ``test_a_new_tier_trains_end_to_end`` registers a tier from a file
outside the repository (``$M3S_TIERS``) and runs gen_features.py and train.py on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import FAMILIES, ROOT, ConfigError, GenConfig, TrainConfig, parse
from dataset import DATASETS, load_records
from features.raw import RAW_FEATURES
from features.similarity import METHODS
from features.store import FeatureStore, StoredFeatures
from model.losses import LOSSES
from pipeline.run.table import FeatureTable
from tests.conftest import signal_features
from tiers import TIERS, owner
from tiers.base import Tier

COMPUTED = [name for name, t in TIERS.items() if t.computed and name != "similarity"]


def _choices(cls: type, name: str) -> tuple:
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]


BUILTIN_CHOICES = {  # written out: what the registries hold today, in their order
    "loss": ("mse", "l1", "mse_tails", "spearman", "mse_to_spearman"),
    "dataset": ("Memento10k", "VideoMem", "LaMem", "demo", "folder", "scores"),
    "raw_features": ("hog", "brightness", "contrast", "blurriness", "meanOF", "size_orig"),
    "similarity_methods": (
        "dbscan",
        "kde",
        "cosine_mean",
        "cosine_threshold0.4",
        "cosine_threshold0.5",
        "cosine_threshold0.7",
        "fractional_mean",
    ),
    "similarity_features": ("hrnet", "ip_csn_152", "ir_csn_152", "clip", "text", "resmem"),
}


@pytest.mark.parametrize("field", sorted(BUILTIN_CHOICES))
def test_config_choices_come_from_the_registries(field):
    """The choices are the registry's entries: each parses, anything else is refused with the list."""
    registry = {"loss": LOSSES, "dataset": DATASETS, "raw_features": RAW_FEATURES, "similarity_methods": METHODS}.get(
        field, [s for t in TIERS.values() for s in t.spaces()]
    )
    assert _choices(TrainConfig, field) == tuple(registry) == BUILTIN_CHOICES[field]
    for value in BUILTIN_CHOICES[field]:
        assert getattr(parse(TrainConfig, ["--use_raw", f"--{field}", value]), field) in (value, [value])
    with pytest.raises(ConfigError, match=f"{field}: 'nope' is not one of {', '.join(BUILTIN_CHOICES[field])}$"):
        parse(TrainConfig, ["--use_raw", f"--{field}", "nope"])
    assert (
        _choices(GenConfig, "features") == FAMILIES == ("raw", "hrnet", "csn", "clip", "text", "resmem", "similarity")
    )


BUILTIN_OPTIONS = {  # tier: {option: default}, written out
    "raw": {
        "raw_features": ["hog", "brightness", "contrast", "blurriness", "size_orig", "meanOF"],
        "normalize_raw": True,
        "use_temporal_std": False,
    },
    "hrnet": {"hrnet_frames": 1},
    "csn": {"csn_arch": "ip_csn_152"},
    "clip": {
        "clip_model": "RN50",
        "clip_pretrained": "openai",
        "clip_frames": 8,
        "clip_std": False,
        "clip_download": False,
    },
    "text": {"text_model": "all-MiniLM-L6-v2", "normalize_text": False},
    "resmem": {"resmem_frames": 8, "resmem_resnet": False, "normalize_resmem": True},
    "similarity": {
        "similarity_features": ["hrnet", "ip_csn_152"],
        "similarity_methods": ["dbscan"],
        "normalize_similarity": True,
    },
}


@pytest.mark.parametrize("name", [n for n, t in TIERS.items() if t.has_switch])
def test_every_tier_has_its_switch_and_options(name):
    """The switch turns on this tier alone; the configs hold the option defaults written out above (a tier
    registered outside m3s is checked against its own declaration)."""
    tier = TIERS[name]
    assert tier.switch == f"use_{name}"
    cfg = parse(TrainConfig, [f"--{tier.switch}"])
    assert cfg.modules() == [name]
    options = tier.options(TIERS)
    expected = BUILTIN_OPTIONS.get(name, {o: spec.default for o, spec in options.items()})
    assert set(options) == set(expected)
    for option, spec in options.items():
        if spec.train:
            assert getattr(cfg, option) == expected[option]
        if spec.gen:
            assert getattr(GenConfig(), option) == expected[option]
        assert spec.train or spec.gen


@pytest.mark.parametrize("name", COMPUTED)
def test_gen_command_round_trips_to_the_same_store(name):
    """The command a tier prints for a missing store parses, computes this tier, and names the same store."""
    tier = TIERS[name]
    cfg = TrainConfig(dataset="demo")
    store = tier.store(cfg)
    assert tier.owns(store) and owner(store) is tier
    argv = tier.gen_command(cfg, store).split()[2:]  # drop "python gen_features.py"
    gen = parse(GenConfig, argv)
    assert gen.features == [name] and gen.dataset == "demo"
    assert tier.store(gen) == store


@pytest.mark.parametrize("space", [s for t in TIERS.values() for s in t.spaces()])
def test_similarity_hint_names_the_space_of_the_missing_store(space):
    """The old hint said `--features csn --csn_arch similarity_ip_csn_152` (it parsed the store name)."""
    sim = TIERS["similarity"]
    cfg = TrainConfig(dataset="demo", use_similarity=True, similarity_features=["hrnet", space])
    store = [s for s, _ in sim.sources(cfg, "similarity")][-1]
    gen = parse(GenConfig, sim.gen_command(cfg, store).split()[2:])
    assert gen.features == ["similarity"] and gen.similarity_features == [space]
    assert f"similarity_{sim.resolve(gen, TIERS)[0].store}" == store


def test_missing_similarity_store_hint_through_the_feature_table(memento):
    """With the hrnet similarity store present and the csn one missing, the error gives the csn space's command."""
    ids, x = signal_features(memento)
    FeatureStore.at(memento / "features", "Memento10k", "similarity_hrnet_f1").write(
        StoredFeatures(ids, {"dbscan": x[:, :3]}, {"family": "similarity"})
    )
    cfg = TrainConfig(data_dir=str(memento), use_similarity=True)
    with pytest.raises(FileNotFoundError) as err:
        FeatureTable.build(cfg, load_records("Memento10k", cfg))
    message = str(err.value)
    assert "similarity_ip_csn_152.h5 does not exist" in message
    assert "--features similarity --similarity_features ip_csn_152 --similarity_methods dbscan" in message
    assert "--csn_arch similarity" not in message


def test_no_store_name_has_two_owners():
    cfg = TrainConfig(dataset="demo")
    names = [t.store(cfg) for t in TIERS.values() if t.computed and t.name != "similarity"]
    names += [f"similarity_{s.store}" for s in TIERS["similarity"].resolve(GenConfig(), TIERS)]
    for name in names:
        assert sum(t.owns(name) for t in TIERS.values()) == 1, name


def test_a_plugin_that_is_not_a_tier_is_a_clear_error(tmp_path):
    (tmp_path / "not_a_tier.py").write_text("TIER = 3\n")
    env = os.environ | {"M3S_TIERS": "not_a_tier", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "not_a_tier is a int, not a tiers.base.Tier instance" in out.stderr


# A tier written by a user in their own file: brightness, contrast, sharpness and motion of 8 small frames.
NEW_TIER = """
import numpy as np

from features.base import Extractor, FrameSpec
from tiers.base import Option, Tier


class ColourExtractor(Extractor):
    family = "colour"
    frame_spec = FrameSpec(8, (48, 64), "squash")
    cpu_extract = True

    def settings(self):
        return {"frames": 8, "size": [48, 64]}

    def extract(self, clips):
        out = []
        for clip in clips:
            f = clip.frames.astype(np.float32) / 255  # (T, H, W, 3)
            grey = f.mean(axis=3)  # (T, H, W)
            sharp = np.abs(np.diff(grey, axis=2)).mean()  # horizontal gradients
            motion = np.abs(np.diff(grey, axis=0)).mean()  # frame differences
            values = [f.max(axis=3).mean(), grey.std(axis=(1, 2)).mean(), sharp, motion]
            out.append({"colour": np.array(values, dtype=np.float32)})
        return out


class ColourTier(Tier):
    name = "colour"
    help = "brightness, contrast, sharpness and motion of small frames"
    extractor = ColourExtractor
    normalize = "normalize_colour"

    def options(self, registry):
        return {"normalize_colour": Option(bool, True, "standardise the colour features on train statistics")}


TIER = ColourTier()
"""


@pytest.mark.slow
def test_a_new_tier_trains_end_to_end(tmp_path):
    """One new file, no other change: --use_colour exists, gen_features.py computes it from the demo clips, train.py
    trains on it, and the checkpoint says which tier the module came from."""
    (tmp_path / "colour_tier.py").write_text(NEW_TIER)
    env = os.environ | {"M3S_TIERS": "colour_tier", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    data, runs = tmp_path / "data", tmp_path / "runs"

    def script(*argv: str) -> str:
        out = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    assert "--use_colour" in script("train.py", "--help") and "--normalize_colour" in script("train.py", "--help")
    assert "colour" in script("gen_features.py", "--help")
    script("gen_features.py", "--dataset", "demo", "--data_dir", str(data), "--features", "colour", "--workers", "1")
    args = ["--dataset", "demo", "--data_dir", str(data), "--use_colour", "--epochs", "15", "--batch_size", "16"]
    args += ["--lr", "3e-3", "--hidden_channels", "32", "8", "--seed", "0", "-s", "--runs_dir", str(runs), "-n", "c"]
    script("train.py", *args)
    summary = json.loads((runs / "c" / "summary.json").read_text())
    assert summary["last"]["val_spearman"] > 0.3  # brightness, contrast, blur and motion drive the demo's scores
    ckpt = torch.load(runs / "c" / "best.pt", weights_only=True)
    assert ckpt["tiers"] == {"colour": "colour"} and ckpt["dims"] == {"colour": 4}
    assert ckpt["sources"]["colour"]["tier"] == "colour" and set(ckpt["stats"]) == {"colour"}


def test_tier_contract_defaults():
    class Bare(Tier):
        name = "bare"

    tier = Bare()
    cfg = type("Cfg", (), {"use_bare": True, "dataset": "demo"})()
    assert tier.modules(cfg) == ["bare"] and tier.store(cfg) == "bare" and not tier.computed
    assert tier.gen_command(cfg, "bare") == "python gen_features.py --dataset demo --features bare"
    assert not tier.normalized(cfg)
    with pytest.raises(TypeError, match="not computed"):
        tier.compute(cfg)


def test_unknown_similarity_space_is_refused():
    with pytest.raises(ConfigError, match="'clipx' is not one of"):
        parse(TrainConfig, ["--use_similarity", "--similarity_features", "clipx"])


def test_the_folder_dataset_sees_every_video_suffix(tmp_path):
    from core.media import CLIP_SUFFIXES

    for i, suffix in enumerate(CLIP_SUFFIXES):
        (tmp_path / f"v{i}{suffix.upper() if i % 2 else suffix}").write_bytes(b"x")
    records = DATASETS["folder"].index(tmp_path)
    assert sorted(r.id for r in records) == sorted(f"v{i}" for i in range(len(CLIP_SUFFIXES)))
    assert ".m4v" in CLIP_SUFFIXES


def test_new_files_follow_the_umask(tmp_path):
    from core.io import atomic_write

    mask = os.umask(0)
    os.umask(mask)
    with atomic_write(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    Path(tmp_path / "b.txt").write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode


def test_gen_features_computes_similarity_after_the_tiers_it_reads(monkeypatch, tmp_path):
    from pipeline import generate as extraction

    order = []
    for name in ("similarity", "text"):
        monkeypatch.setattr(type(TIERS[name]), "compute", lambda self, cfg, records=None: order.append(self.name))
    monkeypatch.setattr(extraction, "load_records", lambda *a: [])
    extraction.run(GenConfig(features=["similarity", "text"], features_dir=str(tmp_path), dataset="demo"))
    assert order == ["text", "similarity"]
    assert list(TIERS).index("similarity") > max(list(TIERS).index(t.name) for t in TIERS.values() if t.spaces())


def test_deep_tiers_name_the_backbone_that_computes_them_end_to_end():
    from model.backbones import BACKBONES
    from pipeline.e2e.backbones import deep_backbones

    cfg = TrainConfig(use_raw=True, use_hrnet=True, use_csn=True, csn_arch="ir_csn_152", extra_features=["emb"])
    assert deep_backbones(cfg) == {"hrnet": "hrnetv2_w48", "csn": "ir_csn_152"}
    for tier in TIERS.values():
        name = tier.backbone(cfg)
        assert name is None or BACKBONES[name].family == tier.name
