"""Checkpoint files: what is written, what is refused and in which words, how a stale best.pt is rebuilt, and how a
checkpoint's sources are compared with the stores."""

import errno

import pytest
import torch

import pipeline.run.checkpoint as checkpoint
from core.io import ConfigError, M3SError
from model.mlp import ModularMLP
from pipeline.run.checkpoint import (
    CHECKPOINT_FORMAT,
    check_sources,
    load_checkpoint,
    model_from_checkpoint,
    repair_best,
    save_checkpoint,
    stats_from_checkpoint,
)

DIMS = {"raw": 3, "emb": 2}


def valid_state(epoch: int = 4) -> dict:
    torch.manual_seed(epoch)
    model = ModularMLP(DIMS, [8, 4])
    return {
        "format": CHECKPOINT_FORMAT, "config": {"hidden_channels": [8, 4]}, "model": model.state_dict(), "dims": DIMS,
        "stats": {"raw": {"mean": torch.zeros(3, dtype=torch.float64), "std": torch.ones(3, dtype=torch.float64)}},
        "sources": {}, "epoch": epoch, "modules": list(DIMS),
    }  # fmt: skip


def test_a_saved_checkpoint_loads_back_and_rebuilds_its_model(tmp_path):
    state = valid_state()
    save_checkpoint(state, tmp_path / "last.pt")
    back = load_checkpoint(tmp_path / "last.pt")
    assert back["epoch"] == 4 and back["modules"] == ["raw", "emb"]
    model = model_from_checkpoint(back)
    for key, value in state["model"].items():
        assert torch.equal(model.state_dict()[key], value)
    stats = stats_from_checkpoint(back)
    assert stats["raw"]["mean"].dtype == torch.float32 and torch.equal(stats["raw"]["std"], torch.ones(3))


def test_a_full_disk_while_saving_is_one_line_and_other_errors_pass_through(tmp_path, monkeypatch):
    def full(state, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(M3SError) as err:
        save_checkpoint(valid_state(), tmp_path / "last.pt")
    assert str(err.value) == f"no space left on {tmp_path}: free some space and resume from last.pt"
    monkeypatch.setattr(checkpoint, "out_of_space", lambda err, where: False)
    with pytest.raises(OSError) as err:
        save_checkpoint(valid_state(), tmp_path / "last.pt")
    assert err.value.errno == errno.ENOSPC and not isinstance(err.value, M3SError)
    assert not list(tmp_path.iterdir())  # nothing left behind


class NotPlain:
    pass


def test_files_that_are_not_checkpoints_are_refused_in_one_line(tmp_path):
    path = tmp_path / "x.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"checkpoint {path} does not exist (train.py --save writes best.pt and last.pt)"
    not_ours = f"{path} is not an m3s checkpoint (best.pt / last.pt written by train.py --save)"
    path.write_bytes(b"")
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{not_ours}: it cannot be read (") and str(err.value).endswith(
        "); it may be truncated or empty"
    )
    torch.save({"format": CHECKPOINT_FORMAT, "x": NotPlain()}, path)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path)
    assert str(err.value) == (
        f"{not_ours}: it cannot be read (torch.load finds no checkpoint of plain tensors and values in it); "
        "it may be truncated or empty"
    )
    for content in ([1, 2], {"model": {}}, valid_state() | {"format": CHECKPOINT_FORMAT + 1}):
        torch.save(content, path)
        with pytest.raises(ConfigError) as err:
            load_checkpoint(path)
        assert str(err.value) == f"{not_ours} (format {CHECKPOINT_FORMAT})"
    torch.save({k: v for k, v in valid_state().items() if k not in ("dims", "config", "modules")}, path)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"{not_ours}: it lacks config, dims, modules"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (EOFError(), "EOFError"),  # no message: its type
        (RuntimeError("x" * 300 + "\nsecond line"), "x" * 200),  # the first line, cut
        (RuntimeError("Unsupported global: GLOBAL m.C; load with weights_only=False"), "torch.load finds no"),
        (RuntimeError("Weights only load failed. This file can still be loaded"), "torch.load finds no"),
    ],
)
def test_the_reason_a_file_cannot_be_read(tmp_path, monkeypatch, error, reason):
    def fail(*args, **kwargs):
        raise error

    (tmp_path / "x.pt").write_bytes(b"x")
    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(tmp_path / "x.pt")
    assert f"it cannot be read ({reason}" in str(err.value)
    if reason == "x" * 200:
        assert "x" * 201 not in str(err.value) and "second" not in str(err.value)


def run_state(best_epoch: int = 2, epoch: int = 5) -> dict:
    best_model = ModularMLP(DIMS, [8, 4]).state_dict()
    history = [{"epoch": e, "val_spearman": e / 10} for e in range(epoch + 1)]
    return valid_state(epoch) | {
        "best": {"epoch": best_epoch, "val_spearman": 0.9}, "best_model": best_model, "history": history,
        "optimizer": {"state": {}}, "scheduler": {"last_epoch": epoch}, "rng": torch.zeros(2),
    }  # fmt: skip


def test_a_stale_best_checkpoint_is_rebuilt_from_the_last_one(tmp_path, capsys):
    ckpt = run_state()
    save_checkpoint(valid_state(1), tmp_path / "best.pt")  # a kill left the best of epoch 1 (0-based)
    assert repair_best(tmp_path, ckpt) is True
    assert capsys.readouterr().out.strip() == (
        f"warning: {tmp_path / 'best.pt'} did not hold the best epoch 3; rebuilt it from the run's last checkpoint"
    )
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and best["metrics"] == ckpt["best"]
    assert [row["epoch"] for row in best["history"]] == [0, 1, 2]
    assert not {"optimizer", "scheduler", "rng"} & set(best)
    for key, value in ckpt["best_model"].items():
        assert torch.equal(best["model"][key], value)
    assert repair_best(tmp_path, ckpt) is False  # now right: left alone
    (tmp_path / "best.pt").unlink()
    assert repair_best(tmp_path, ckpt) is True and load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    (tmp_path / "best.pt").write_bytes(b"junk")  # unreadable: rebuilt too
    assert repair_best(tmp_path, ckpt) is True and load_checkpoint(tmp_path / "best.pt")["epoch"] == 2


def test_a_run_without_history_gets_a_best_checkpoint_with_none(tmp_path):
    ckpt = {k: v for k, v in run_state().items() if k != "history"}
    assert repair_best(tmp_path, ckpt) is True
    assert load_checkpoint(tmp_path / "best.pt")["history"] == []


def test_nothing_to_repair_without_a_best_epoch(tmp_path):
    assert repair_best(tmp_path, valid_state()) is False
    assert repair_best(tmp_path, run_state() | {"best_model": {}}) is False
    assert not (tmp_path / "best.pt").exists()


SOURCE = {
    "features": ["hog"],
    "dims": {"hog": 10},
    "settings": {"frames": 45},
    "smoke": False,
    "transforms": {"pca": "d1"},
}


def test_sources_that_differ_from_the_checkpoint_are_each_named():
    check_sources({"raw": SOURCE}, {"raw": dict(SOURCE), "extra": {}})  # the same, plus an unused store: fine
    have = {"raw": SOURCE | {"dims": {"hog": 8}, "settings": {"frames": 9}, "smoke": True, "transforms": {}}}
    with pytest.raises(ConfigError) as err:
        check_sources({"sim": SOURCE, "raw": SOURCE}, have)
    assert str(err.value).splitlines() == [
        "the feature stores differ from the checkpoint's:",
        "  sim: the checkpoint needs it, it is not selected",
        "  raw dims: checkpoint {'hog': 10}, feature store {'hog': 8}",
        "  raw settings: checkpoint {'frames': 45}, feature store {'frames': 9}",
        "  raw smoke: checkpoint False, feature store True",
        "  raw: its fitted transforms (none) are not the ones the checkpoint was trained with, so its features are in "
        "another basis; extract them with gen_features.py --fit_on <the training dataset>",
    ]
    with pytest.raises(ConfigError, match=r"raw features: checkpoint \['hog'\], feature store \['hog', 'x'\]"):
        check_sources({"raw": SOURCE}, {"raw": SOURCE | {"features": ["hog", "x"]}})
    with pytest.raises(ConfigError, match=r"its fitted transforms \(pca, b\) are not"):
        check_sources({"raw": SOURCE}, {"raw": SOURCE | {"transforms": {"pca": "d2", "b": "d3"}}})
    check_sources({"raw": {}}, {"raw": {}})  # neither records transforms: the same
    with pytest.raises(ConfigError, match=r"its fitted transforms \(none\) are not"):  # the store records none
        check_sources({"raw": SOURCE}, {"raw": {k: v for k, v in SOURCE.items() if k != "transforms"}})


def test_weights_of_the_wrong_shape_are_one_line_naming_the_tensor(tmp_path):
    state = valid_state()
    state["model"] = dict(state["model"])
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(3, 3)
    save_checkpoint(state, tmp_path / "edited.pt")
    with pytest.raises(ConfigError) as err:
        model_from_checkpoint(load_checkpoint(tmp_path / "edited.pt"))
    message = str(err.value)
    want = tuple(ModularMLP(DIMS, [8, 4]).state_dict()[first].shape)
    assert "\n" not in message and f"{first}: (3, 3) in it, {want} in the model" in message


def test_a_run_directory_given_as_checkpoint_names_its_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(valid_state(), tmp_path / "best.pt")
    with pytest.raises(ConfigError) as err:
        load_checkpoint(tmp_path)
    assert (
        str(err.value)
        == f"{tmp_path} is a directory, not a checkpoint; pass one of its checkpoints: {tmp_path}/best.pt"
    )


def test_a_key_of_the_wrong_type_is_refused_in_one_line(tmp_path):
    save_checkpoint(valid_state() | {"epoch": "4", "history": {}}, tmp_path / "odd.pt")
    with pytest.raises(ConfigError) as err:
        load_checkpoint(tmp_path / "odd.pt")
    assert str(err.value) == (
        f"{tmp_path / 'odd.pt'} is not an m3s checkpoint (best.pt / last.pt written by train.py --save): epoch is "
        "str, history is dict (see pipeline/run/checkpoint.py SCHEMA)"
    )
    save_checkpoint(valid_state() | {"train_mean": 1}, tmp_path / "int.pt")  # an int where a float is expected is fine
    assert load_checkpoint(tmp_path / "int.pt")["train_mean"] == 1


def test_the_one_builder_writes_every_schema_key_and_refuses_others():
    from config import TrainConfig
    from pipeline.run.checkpoint import REQUIRED, RESUME_KEYS, SCHEMA, build_checkpoint

    cfg = TrainConfig(extra_features=["raw", "emb"])
    history = [{"epoch": 0, "val_spearman": 0.3}, {"epoch": 1, "val_spearman": 0.5}, {"epoch": 2, "val_spearman": 0.5}]
    stats = valid_state()["stats"] | {"other": {}}
    state = build_checkpoint(cfg, list(DIMS), DIMS | {"x": 9}, stats, {}, {}, history, ModularMLP(DIMS, [8, 4]), 0.5)
    assert set(state) == set(SCHEMA) - set(RESUME_KEYS) and set(REQUIRED) <= set(state)
    assert state["best"] == history[1] and state["epoch"] == 2 and state["metrics"] == history[2]  # first of ties
    assert state["dims"] == DIMS and set(state["stats"]) == {"raw"}  # only the run's modules
    assert all(isinstance(state[k], SCHEMA[k]) for k in state)
    with pytest.raises(TypeError, match="optimiser are not checkpoint keys"):
        build_checkpoint(cfg, list(DIMS), DIMS, stats, {}, {}, history, ModularMLP(DIMS, [8, 4]), 0.5, optimiser={})
