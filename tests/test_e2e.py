"""End-to-end training (``--no-fixed_features``) on CPU with tiny stand-in backbones built by the official classes:
fine-tuning moves the backbones and freezing keeps them, resume is exact, augmentation touches training clips only,
two ``torchrun`` processes (gloo) give the weights of one process with the same global batch, evaluation runs the
fine-tuned backbones. Clips are small real videos (``tests/fixtures_video.py``) at 64x64, few frames."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from config import ROOT, ConfigError, EvalConfig, GenConfig, TrainConfig, parse, parse_explicit
from dataset import load_records
from features.base import Clip
from features.extract import store_meta
from features.raw import RawExtractor
from features.store import FeatureStore
from features.video import read_clip
from model.backbones import build_standin
from model.e2e import EndToEndModel
from pipeline.e2e import clips as clipdata
from pipeline.e2e.backbones import precision_agrees
from pipeline.e2e.data import build_data
from pipeline.e2e.training import EndToEndTrainer, run_end_to_end
from pipeline.run.checkpoint import load_checkpoint
from pipeline.scoring.evaluate import run_evaluation
from tests.fixtures_video import memento_layout

N_VIDEOS = 20  # 12 train (the HOG PCA needs more than 10), 4 val, 4 test


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Memento10k of 20 small real videos and its raw store (HOG PCA included), written in this process."""
    root = tmp_path_factory.mktemp("e2e") / "data"
    memento_layout(root / "Memento10k", N_VIDEOS, n_frames=8)
    gen = parse(GenConfig, ["--dataset", "Memento10k", "--data_dir", str(root), "--features", "raw"])
    records = load_records("Memento10k", gen)
    ext = RawExtractor(gen, torch.device("cpu"))
    store = FeatureStore.at(root / "features", "Memento10k", "raw")
    meta = store_meta(ext, gen)
    clips = [Clip(r.id, r.path, read_clip(r.path, ext.frame_spec), {}) for r in records]
    train = [c for c, r in zip(clips, records, strict=True) if r.split == "train"]
    first = {c.id: ext.prepare_item(dataclasses.replace(c, frames=c.frames[:1])) for c in train}  # as the pre-pass
    ext.prepare_fit(store, [c.id for c in train], first, meta)
    feats = ext.extract(clips)
    store.append([c.id for c in clips], {k: np.stack([f[k] for f in feats]) for k in feats[0]}, meta, {}, shard="0")
    store.compact()
    return root


def _argv(data_dir: Path, runs: Path, *extra: str) -> list[str]:
    return [
        "--dataset", "Memento10k", "--data_dir", str(data_dir), "--runs_dir", str(runs), "--no-fixed_features",
        "--standin_backbones", "--e2e_frames", "3", "--e2e_size", "64", "--batch_size", "4", "--workers", "0",
        "--threads", "1", "--seed", "5", "--use_hrnet", "--use_csn", *extra,
    ]  # fmt: skip


def _cfg(data_dir: Path, runs: Path, *extra: str) -> TrainConfig:
    return parse(TrainConfig, _argv(data_dir, runs, *extra))


def _trainer(cfg: TrainConfig) -> EndToEndTrainer:
    from features.extract import Dist

    torch.set_num_threads(1)
    data = build_data(cfg, load_records(cfg.dataset, cfg), torch.device("cpu"))
    return EndToEndTrainer(cfg, data, torch.device("cpu"), Dist())


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def test_config_accepts_end_to_end_flags_only_with_no_fixed_features(tmp_path):
    cfg = parse(TrainConfig, ["--use_raw", "--no-fixed_features", "--data_augmentation", "--compute_raw"])
    assert not cfg.fixed_features and cfg.data_augmentation
    for flag in ("--data_augmentation", "--compute_raw", "--freeze_backbones", "--grad_checkpointing"):
        with pytest.raises(ConfigError, match="--no-fixed_features"):
            parse(TrainConfig, ["--use_raw", flag])
    with pytest.raises(ConfigError, match="backbone_lr"):
        parse(TrainConfig, ["--use_hrnet", "--no-fixed_features", "--freeze_backbones", "--backbone_lr", "1e-5"])
    with pytest.raises(ConfigError, match="grad_accumulation"):
        parse(TrainConfig, ["--use_hrnet", "--no-fixed_features", "--batch_size", "4", "--grad_accumulation", "8"])


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [False, True])
def test_one_step_moves_backbones_only_when_fine_tuned(data_dir, tmp_path, frozen):
    extra = ("--freeze_backbones",) if frozen else ("--grad_checkpointing",)
    trainer = _trainer(_cfg(data_dir, tmp_path, *extra))
    before_bb, before_head = _clone(trainer.model.backbones.state_dict()), _clone(trainer.model.head.state_dict())
    trainer.train_epoch(0)
    after_bb = trainer.model.backbones.state_dict()
    assert any(not torch.equal(before_head[k], v) for k, v in trainer.model.head.state_dict().items())
    params = dict(trainer.model.backbones.named_parameters())
    moved = [k for k in params if not torch.equal(before_bb[k], after_bb[k])]
    if frozen:
        assert moved == [] and not any(p.requires_grad for p in params.values())
    else:
        assert len(moved) > 0.5 * len(params)  # every parameter but the unused CSN classifier (and dead BN paths)
        assert not any(k.startswith("csn.fc") for k in moved)
    buffers = [k for k in after_bb if k not in params]
    assert all(torch.equal(before_bb[k], after_bb[k]) for k in buffers)  # BN statistics frozen in both modes


@pytest.mark.slow
def test_resume_restores_backbones_optimiser_and_scaler_exactly(data_dir, tmp_path):
    # fp16 autocast on the CPU turns the loss scaler on, so its state is part of what must come back
    extra = ("--epochs", "2", "-s", "--deep_dtype", "fp16", "--data_augmentation")
    straight = run_end_to_end(_cfg(data_dir, tmp_path / "a", "-n", "straight", *extra))
    first = _cfg(data_dir, tmp_path / "b", "-n", "split", *extra)
    first.epochs = 1
    run_end_to_end(first)
    argv = ["--checkpoint_local", str(tmp_path / "b" / "split" / "last.pt"), "--epochs", "2"]
    resumed = run_end_to_end(*parse_explicit(TrainConfig, argv, check=False))
    a = load_checkpoint(Path(straight["run_dir"]) / "last.pt")
    b = load_checkpoint(Path(resumed["run_dir"]) / "last.pt")
    assert a["epoch"] == b["epoch"] == 1 and a["scaler"]["scale"] > 0
    for key in ("model", "backbones"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert a["scaler"] == b["scaler"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_augmentation_touches_training_clips_only(data_dir, tmp_path, monkeypatch):
    touched: list[int] = []
    crop = clipdata.apply_crop

    def spy(frames, c):
        touched.append(len(frames))
        return crop(frames, c)

    cfg = _cfg(data_dir, tmp_path, "--data_augmentation", "--use_raw")
    trainer = _trainer(cfg)
    monkeypatch.setattr(clipdata, "apply_crop", spy)
    trainer.predict("val")
    assert touched == []  # validation clips: never augmented
    trainer.train_epoch(0)
    n_train = len(trainer.data.splits["train"].y)
    assert len(touched) == 2 * n_train  # each training clip once for the backbones, once for the raw tier (256x256)
    ds = trainer.data.datasets["train"]
    plain, aug = ds[(0, 0, False)], ds[(0, 0, True)]
    assert not np.array_equal(plain["frames"], aug["frames"])
    assert np.array_equal(aug["frames"], ds[(0, 0, True)]["frames"])  # seeded: the same clip, epoch and seed
    assert not np.array_equal(aug["frames"], ds[(0, 1, True)]["frames"])  # another epoch, another view
    assert not np.array_equal(plain["raw"]["hog"], aug["raw"]["hog"])  # the raw tier sees the augmented frames
    crops = [clipdata.draw_crop(5, e, i) for e in range(20) for i in range(20)]
    assert all(np.sqrt(0.8) - 1e-9 <= c.side <= 1 and 0 <= c.top <= 1 - c.side for c in crops)
    assert 0.35 < np.mean([c.flip for c in crops]) < 0.65


def test_micro_batches_split_every_batch_over_processes_and_steps():
    order = list(range(11))
    parts = [clipdata.micro_batches(order, 4, 2, r, 2) for r in range(2)]
    # global batches [0-3], [4-7] in 4 parts each, rank r takes parts 2r, 2r+1; [8-10] cannot fill 4 parts
    assert parts == [[[0], [1], [4], [5]], [[2], [3], [6], [7]]]
    assert clipdata.micro_batches(list(range(12)), 6, 2, 1, 1) == [[3, 4, 5], [9, 10, 11]]
    assert clipdata.micro_batches(list(range(5)), 4, 2, 0, 2) == [[0], [1]]  # the trailing single clip is dropped


def test_grad_checkpointing_and_reduced_precision_agree_with_plain_fp32():
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    grads = []
    for ckpt in (False, True):
        bb = {"hrnet": build_standin("hrnetv2_w48"), "csn": build_standin("ip_csn_152")}
        torch.manual_seed(1)
        model = EndToEndModel(bb, {"hrnet": 60, "csn": 128}, [8], grad_checkpointing=ckpt).train()
        model(clips, {}).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])
    assert precision_agrees(model.eval(), clips, torch.bfloat16) > 0.95


def test_evaluate_runs_the_fine_tuned_backbones(data_dir, tmp_path):
    result = run_end_to_end(_cfg(data_dir, tmp_path, "-n", "ft", "--epochs", "1", "-s", "--backbone_lr", "0.05"))
    ckpt = load_checkpoint(Path(result["run_dir"]) / "last.pt")
    assert set(ckpt["end_to_end"]) == {"hrnet", "csn"} and "backbones" in ckpt
    summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())  # the notes a table run records
    assert summary["random_backbones"] is True and summary["smoke_stores"] == []
    out = run_evaluation(EvalConfig(checkpoint=str(Path(result["run_dir"]) / "last.pt"), device="cpu"))
    assert out["val"]["n"] == 4
    trained = np.loadtxt(Path(result["run_dir"]) / "predictions_val.csv", delimiter=",", skiprows=1, usecols=3)
    scored = np.loadtxt(
        Path(result["run_dir"]) / "predictions_Memento10k_val_last.csv", delimiter=",", skiprows=1, usecols=2
    )
    np.testing.assert_allclose(scored, trained, atol=1e-6)
    # the same head over the stand-ins as built (the official weights' place) predicts otherwise: the fine-tuned
    # backbone weights are what evaluation used
    del ckpt["backbones"]
    torch.save(ckpt, tmp_path / "no_backbones.pt")
    other = run_evaluation(
        EvalConfig(checkpoint=str(tmp_path / "no_backbones.pt"), device="cpu", out_dir=str(tmp_path))
    )
    assert other["val"]["mse"] != out["val"]["mse"]
    from pipeline.scoring.explain import run_explain  # --explain would shuffle stored features this head never read

    with pytest.raises(ConfigError, match=r"last.pt was trained end to end \(fine-tuned backbones\): --explain"):
        run_explain(EvalConfig(checkpoint=str(Path(result["run_dir"]) / "last.pt"), device="cpu", explain=True))
    frozen = run_end_to_end(_cfg(data_dir, tmp_path, "-n", "fz", "--epochs", "1", "-s", "--freeze_backbones"))
    assert "backbones" not in load_checkpoint(Path(frozen["run_dir"]) / "last.pt")


@pytest.mark.slow
def test_two_torchrun_processes_give_the_weights_of_one(data_dir, tmp_path):
    def train(runs: Path, nproc: int, *extra: str) -> dict:
        argv = _argv(data_dir, runs, "-n", "dist", "--epochs", "1", "-s", "--backbone_lr", "0.01", *extra)
        if nproc == 1:  # in this process
            run_end_to_end(parse(TrainConfig, argv))
            return load_checkpoint(runs / "dist" / "last.pt")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [*launcher, str(ROOT / "train.py"), *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return load_checkpoint(runs / "dist" / "last.pt")

    one, two = train(tmp_path / "one", 1), train(tmp_path / "two", 2)
    accumulated = train(tmp_path / "acc", 1, "--grad_accumulation", "2")
    for other in (two, accumulated):
        for key in ("model", "backbones"):
            for k, v in one[key].items():
                assert torch.allclose(v, other[key][k], atol=1e-6, rtol=1e-5), (key, k)
        assert one["history"][0]["train_loss"] == pytest.approx(other["history"][0]["train_loss"], rel=1e-5)
    assert any(not torch.equal(v, build_standin("hrnetv2_w48").state_dict()[k.removeprefix("hrnet.")])
               for k, v in one["backbones"].items() if k.startswith("hrnet.") and v.is_floating_point())  # fmt: skip


@pytest.mark.slow
def test_scoring_new_videos_runs_the_fine_tuned_backbones(data_dir, tmp_path):
    from pipeline.scoring.videos import read_scores, score_videos

    argv = ("-n", "apply", "--epochs", "1", "-s", "--use_raw", "--backbone_lr", "0.05", "--no-use_csn")
    result = run_end_to_end(_cfg(data_dir, tmp_path, *argv))
    run_dir = Path(result["run_dir"])
    ids = np.loadtxt(run_dir / "predictions_val.csv", delimiter=",", skiprows=1, usecols=0, dtype=str)
    trained = np.loadtxt(run_dir / "predictions_val.csv", delimiter=",", skiprows=1, usecols=3)
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(str(data_dir / "Memento10k" / "videos" / f"{i}.mp4") for i in ids) + "\n")
    argv = ["--checkpoint", str(run_dir / "last.pt"), "--videos", str(listing), "--workers", "1", "--device", "cpu"]
    scores = read_scores(score_videos(parse(EvalConfig, argv))["out"])
    assert [scores[i] for i in ids] == pytest.approx(list(trained), abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_mixed_precision_channels_last(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path, "--device", "cuda", "--deep_dtype", "auto", "--data_augmentation", "--use_raw")
    from features.extract import Dist

    data = build_data(cfg, load_records(cfg.dataset, cfg), torch.device("cuda"))
    trainer = EndToEndTrainer(cfg, data, torch.device("cuda"), Dist())
    trainer.check_precision()
    assert trainer.dtype in (torch.bfloat16, torch.float16) and trainer.model.channels_last
    assert trainer.scaler.is_enabled() == (trainer.dtype == torch.float16)
    before = _clone(trainer.model.backbones.state_dict())
    loss = trainer.train_epoch(0)
    assert np.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.backbones.state_dict().items())
    assert np.isfinite(trainer.predict("val")).all()


@pytest.mark.slow
def test_imported_features_join_the_step_and_decoding_workers_change_nothing(data_dir, tmp_path):
    from pipeline.generate import run_import

    records = load_records("Memento10k", parse(GenConfig, ["--data_dir", str(data_dir)]))
    emb = np.random.default_rng(0).normal(size=(len(records), 5)).astype(np.float32)
    np.savez(tmp_path / "emb.npz", ids=np.array([r.id for r in records]), emb=emb)
    argv = ["--dataset", "Memento10k", "--data_dir", str(data_dir), "--import", str(tmp_path / "emb.npz")]
    run_import(parse(GenConfig, [*argv, "--name", "emb"]))
    common = ("--epochs", "1", "-s", "--extra_features", "emb", "--no-use_csn", "--data_augmentation")
    runs = [run_end_to_end(_cfg(data_dir, tmp_path, "-n", f"w{w}", *common, "--workers", str(w))) for w in (0, 1)]
    a, b = (load_checkpoint(Path(r["run_dir"]) / "last.pt") for r in runs)
    assert a["dims"] == {"hrnet": 60, "emb": 5} and "emb" in a["sources"]
    for key in ("model", "backbones"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])  # augmentation drawn per clip, not per worker
