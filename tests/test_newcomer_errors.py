"""A newcomer's mistakes are one line that says the fix, never a traceback."""

import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest

from config import ROOT, ConfigError, EvalConfig, GenConfig, TrainConfig, parse, parse_explicit
from dataset import VideoRecord, load_records
from pipeline.generate import run_import
from pipeline.run.loop import sigterm_as_interrupt
from pipeline.run.table import FeatureTable
from pipeline.run.training import Interrupted, Trainer, run_training
from tests.conftest import signal_features, write_videomem


def _script(name, *argv, cwd=None):
    return subprocess.run(
        [sys.executable, str(ROOT / name), *argv], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def _import(memento, tmp_path, name="emb"):
    ids, x = signal_features(memento)
    np.savez(tmp_path / f"{name}.npz", ids=np.array(ids), emb=x)
    argv = ["--dataset", "Memento10k", "--data_dir", str(memento), "--import", str(tmp_path / f"{name}.npz")]
    run_import(parse(GenConfig, [*argv, "--name", name]))


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    proc = _script("evaluate.py", "--checkpoint", str(tmp_path / "notes.pt"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "is not an m3s checkpoint" in proc.stderr and "weights_only" not in proc.stderr


def test_a_folder_dataset_needs_split_test(tmp_path):
    records = [VideoRecord("a", tmp_path / "a.mp4", "test", None), VideoRecord("b", tmp_path / "b.mp4", "test", None)]
    cfg = parse(EvalConfig, ["--checkpoint", "x.pt", "--dataset", "folder"])
    train_cfg = TrainConfig(dataset="folder", use_raw=True, data_dir=str(cfg.data_dir))
    with pytest.raises(
        ConfigError, match=r"folder has no videos in val; it has test 2 \(0 scored\)\. Pass --split test"
    ):
        FeatureTable.build(train_cfg, records, splits=("val",), scored_only=False)
    with pytest.raises(ConfigError, match="Its videos are unscored: train on a scored dataset.*evaluate.py --videos"):
        FeatureTable.build(train_cfg, records)  # what train.py --dataset folder does


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("use_raw: true\nepochs: [1\nlr: 2\n")
    with pytest.raises(ConfigError, match=r"mine.yaml is not valid YAML at line 3, column 3"):
        parse(TrainConfig, ["--config", str(bad)])
    proc = _script("train.py", "--config", str(bad))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_abbreviations_are_off_and_typos_get_the_closest_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(TrainConfig, ["--epoch", "2"])  # argparse used to take it for --epochs
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--epoch (did you mean --epochs?)" in err
    with pytest.raises(SystemExit):
        parse(EvalConfig, ["--checkpiont", "x.pt"])
    assert "did you mean --checkpoint?" in capsys.readouterr().err


def test_a_misspelt_extra_features_name_lists_the_stores(memento, tmp_path):
    _import(memento, tmp_path, "emb")
    cfg = TrainConfig(data_dir=str(memento), extra_features=["embb"])
    with pytest.raises(FileNotFoundError, match=r"embb.h5 does not exist\. The stores of Memento10k are: emb\."):
        FeatureTable.build(cfg, load_records("Memento10k", cfg))


def test_a_missing_tier_store_offers_to_leave_the_tier_out(memento, tmp_path):
    _import(memento, tmp_path, "emb")
    cfg = TrainConfig(data_dir=str(memento), extra_features=["emb"], use_raw=True)
    with pytest.raises(FileNotFoundError, match=r"gen_features.py --dataset Memento10k --features raw, or leave the "
                       r"tier out: --no-use_raw"):  # fmt: skip
        FeatureTable.build(cfg, load_records("Memento10k", cfg))


def test_ctrl_c_during_training_says_where_the_checkpoint_is(memento, tmp_path, monkeypatch):
    _import(memento, tmp_path, "emb")
    real = Trainer.train_epoch

    def interrupted_at_epoch_3(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted_at_epoch_3)
    argv = ["--data_dir", str(memento), "--extra_features", "emb", "--runs_dir", str(tmp_path / "runs"), "-n", "r",
            "--epochs", "5", "--hidden_channels", "8"]  # fmt: skip
    with pytest.raises(Interrupted, match="interrupted before any checkpoint was written \\(train with -s"):
        run_training(*parse_explicit(TrainConfig, argv, check=False))
    last = tmp_path / "runs/s/last.pt"
    with pytest.raises(Interrupted, match=f"the last checkpoint is {last} \\(epoch 2\\)\\. Resume with: .*"
                       f"train.py --checkpoint_local {last}"):  # fmt: skip
        run_training(*parse_explicit(TrainConfig, [*argv, "-s", "-n", "s"], check=False))


def test_sigterm_stops_training_like_ctrl_c():
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_videomem_split_names_without_the_webm_suffix_are_matched_and_said(tmp_path, capsys):
    names = [f"video{i}.webm" for i in range(10)]
    write_videomem(tmp_path / "VideoMem", names)
    with (tmp_path / "VideoMem/train_test_split_videomem.pkl").open("wb") as f:
        pickle.dump(([n[:-5] for n in names[:8]], [n[:-5] for n in names[8:]]), f)
    records = load_records("VideoMem", TrainConfig(data_dir=str(tmp_path)))
    assert [r.split for r in records] == ["train"] * 8 + ["val"] * 2
    assert "names the videos without their suffix (video0; the ground truth: video0.webm)" in capsys.readouterr().out
    with (tmp_path / "VideoMem/train_test_split_videomem.pkl").open("wb") as f:
        pickle.dump((["clip1"], ["clip2"]), f)
    with pytest.raises(ConfigError, match="10 videos of the ground truth are in no split of .*'clip1'"):
        load_records("VideoMem", TrainConfig(data_dir=str(tmp_path)))


def test_videomem_runs_say_which_split_and_imports_do_not_write_one(tmp_path):
    from dataset import reading_only

    names = [f"video{i}.webm" for i in range(10)]
    write_videomem(tmp_path / "VideoMem", names)
    with reading_only():
        records = load_records("VideoMem", TrainConfig(data_dir=str(tmp_path)))
    assert "(not saved)" in records[0].extras["split_source"]
    assert not (tmp_path / "VideoMem/m3s_split_videomem.json").exists()
    records = load_records("VideoMem", TrainConfig(data_dir=str(tmp_path)))
    assert records[0].extras["split_source"].startswith("the seeded split (seed 0) ")
    assert (tmp_path / "VideoMem/m3s_split_videomem.json").is_file()


def test_only_gen_features_generates_the_demo_corpus(tmp_path, capsys):
    """train.py --config configs/demo.yaml --data_dir typo_dir wrote 300 clips into typo_dir before failing."""
    typo = tmp_path / "typo_dir"
    cfg = TrainConfig(dataset="demo", data_dir=str(typo), use_raw=True)
    with pytest.raises(FileNotFoundError) as err:
        load_records("demo", cfg)
    assert str(err.value) == (
        f"no demo corpus in {typo / 'demo'}; generate it (and its raw features) with: python gen_features.py "
        f"--dataset demo --data_dir {typo} --features raw"
    )
    assert not typo.exists()
    argv = ["--config", str(ROOT / "configs/demo.yaml"), "--data_dir", str(typo), "--runs_dir", str(tmp_path / "r")]
    with pytest.raises(FileNotFoundError, match="no demo corpus in"):
        run_training(*parse_explicit(TrainConfig, argv, check=False))
    assert not typo.exists() and not (tmp_path / "r" / "demo").exists()


def test_an_unknown_text_model_offline_is_one_error_at_once_and_a_cached_one_needs_no_hub(tmp_path, monkeypatch):
    """An unknown --text_model retried the hub for 75 s offline before its error; a model in the local Hugging Face
    cache is found there first."""
    import time

    import huggingface_hub.constants

    from features.text import model_location

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"'no-such-model' not found: .* not in the local Hugging Face cache"):
        model_location("no-such-model")
    assert time.perf_counter() - t0 < 10
    snapshot = tmp_path / "hub/models--sentence-transformers--tiny-encoder/snapshots/0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "modules.json").write_text("[]")
    (tmp_path / "hub/models--sentence-transformers--tiny-encoder/refs").mkdir()
    (tmp_path / "hub/models--sentence-transformers--tiny-encoder/refs/main").write_text("0123abcd")
    assert model_location("tiny-encoder") == (str(snapshot), "Hugging Face cache (sentence-transformers/tiny-encoder)")


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("--lr_rate", "--lr"), ("--epoch", "--epochs"), ("--hiden_channels", "--hidden_channels"),
     ("--batchsize", "--batch_size"), ("--use_rw", "--use_raw"), ("--bogus", None)],
)  # fmt: skip
def test_a_mistyped_flag_is_answered_with_the_flag_it_most_likely_meant(typed, meant):
    from core import cli

    parser = cli.build_parser(TrainConfig)
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    assert cli.closest_flag(typed, flags) == meant  # --lr_rate was answered with --ablate


@pytest.mark.parametrize("cls", [TrainConfig, GenConfig, EvalConfig])
def test_help_says_each_default_once_and_offers_no_empty_choice(cls):
    from config import help_groups
    from core import cli

    parser = cli.build_parser(cls, "", help_groups(cls))
    text = parser.format_help()
    # "default $M3S_DATA_DIR or ./data (default: none)", "(default --lr / 100) (default: none)": said twice
    assert all(a.help.count("default") <= 1 for a in parser._actions if a.help), text
    assert "(default: none)" not in text and "default $M3S_DATA_DIR or ./data" in text
    assert "{," not in text and ",}" not in text  # --dataset {,Memento10k,...} offered the empty string
    if cls is TrainConfig:  # about 80 options, in sections
        for title in ("data:", "model:", "optimisation:", "experiments (several runs", "end-to-end training"):
            assert f"\n{title}" in text
        assert "other options" not in text  # every flag has its section
        assert "(0: no search)" in text


def test_workers_means_the_same_in_every_script():
    from config import WORKERS_HELP

    for cls in (TrainConfig, GenConfig, EvalConfig):
        assert cls.__dataclass_fields__["workers"].default == -1
        assert WORKERS_HELP in cls.__dataclass_fields__["workers"].metadata["help"]
    with pytest.raises(ConfigError, match="--workers -2: decoding processes"):
        parse(GenConfig, ["--workers", "-2"])
