"""Every refusal of the config checks with its exact message, each at its boundary (the last refused value and the
first accepted one), and the --help of the three scripts built from the config fields."""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

import config
from config import ConfigError, EvalConfig, GenConfig, TrainConfig, default_data_dir, from_dict, parse
from core import cli
from tests.test_config import REFERENCE_FLAGS
from tiers import TIERS


def refusal(cls: type, argv: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        parse(cls, argv)
    return str(err.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "0"], "--lr 0.0 (a finite number > 0)"),
        (["--lr", "inf"], "--lr inf (a finite number > 0)"),
        (["--weight_decay=-1e-9"], "--weight_decay -1e-09 (finite, >= 0)"),
        (["--weight_decay", "inf"], "--weight_decay inf (finite, >= 0)"),
        (["--momentum", "1"], "--momentum 1.0 (in [0, 1))"),
        (["--scheduler_gamma", "0"], "--scheduler_gamma 0.0 (in (0, 1])"),
        (["--scheduler_gamma", "1.5"], "--scheduler_gamma 1.5 (in (0, 1])"),
        (["--scheduler_step_size", "0"], "--scheduler_step_size 0 (>= 1)"),
        (["--seed", "-1"], "--seed -1 (in [0, 2**64))"),
        (["--seed", str(2**64)], f"--seed {2**64} (in [0, 2**64))"),
        (["--device", "cuda:x"], "--device 'cuda:x' (cpu, cuda[:N], auto)"),
        (["--lr", "0", "--momentum", "2"], "--lr 0.0 (a finite number > 0); --momentum 2.0 (in [0, 1))"),
    ],
)
def test_each_bad_training_value_is_named_with_its_range(argv, message):
    assert refusal(TrainConfig, ["--use_raw", *argv]) == f"invalid value(s): {message}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--weight_decay", "0", "--momentum", "0", "--scheduler_gamma", "1", "--scheduler_step_size", "1"],
        ["--seed", "0", "--lr", "1e-300"],
        ["--seed", str(2**64 - 1)],
        ["--device", "cuda:12"],
        ["--device", "mps"],
        ["--epochs", "1", "--batch_size", "1", "--hidden_channels", "1", "1"],
        ["--folds", "2", "--seeds", "1", "2", "--threads", "0", "--search", "0"],
    ],
)
def test_the_edge_of_every_range_is_accepted(argv):
    parse(TrainConfig, ["--use_raw", *argv])


def test_an_empty_raw_feature_list_is_refused_only_for_the_raw_tier(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("use_raw: true\nraw_features: []\n")
    assert refusal(TrainConfig, ["--config", str(path)]) == "invalid value(s): --raw_features [] (at least one)"
    path.write_text("use_hrnet: true\nraw_features: []\n")
    assert parse(TrainConfig, ["--config", str(path)]).raw_features == []


def test_names_and_module_choices():
    assert refusal(TrainConfig, ["--use_raw", "-n", "../x"]) == (
        "--name '../x': a plain name (letters, digits, _ . + = -), not a path"
    )
    assert parse(TrainConfig, ["--use_raw", "-n", "a1_b.c+d=e-f"]).name == "a1_b.c+d=e-f"
    assert refusal(TrainConfig, ["--use_raw", "--extra_features", "mine", "hrnet", "ip_csn_152"]) == (
        "--extra_features hrnet ip_csn_152: a built-in tier's name; use its --use_ switch"
    )
    switches = ", ".join(f"--{t.switch}" for t in TIERS.values() if t.has_switch)
    assert refusal(TrainConfig, []) == f"no module selected: pass at least one of {switches} or --extra_features NAME"
    assert switches.startswith("--use_raw, --use_hrnet, --use_csn")


@pytest.mark.parametrize(
    "argv",
    [["--epochs", "0"], ["--batch_size", "0"], ["--hidden_channels", "64", "0"], ["--hidden_channels", "1", "-1"]],
)
def test_sizes_below_one_are_refused(argv):
    assert refusal(TrainConfig, ["--use_raw", *argv]) == (
        "--epochs, --batch_size and every --hidden_channels width must be >= 1"
    )


def test_an_empty_hidden_layer_list_from_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("use_raw: true\nhidden_channels: []\n")
    assert refusal(TrainConfig, ["--config", str(path)]) == (
        "--epochs, --batch_size and every --hidden_channels width must be >= 1"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "3", "4", "3"], "--seeds 3 4 3: each seed once"),
        (["--folds", "1"], "--folds K needs K >= 2 (0: the dataset's own train/val split)"),
        (["--folds", "-2"], "--folds K needs K >= 2 (0: the dataset's own train/val split)"),
        (["--threads", "-1"], "--threads and --search must be >= 0"),
        (["--search", "-1"], "--threads and --search must be >= 0"),
        (
            ["--seeds", "1", "--checkpoint_local", "x.pt"],
            "resuming (--checkpoint_local / --checkpoint_run_id) is for single runs, not grids",
        ),  # fmt: skip
        (
            ["--ablate", "--checkpoint_run_id", "e/p/r"],
            "resuming (--checkpoint_local / --checkpoint_run_id) is for single runs, not grids",
        ),  # fmt: skip
        (
            ["--search", "2", "--ablate"],
            "--search tunes one combination of modules; run --ablate with the tuned values after",
        ),  # fmt: skip
        (["--checkpoint_epoch", "3"], "--checkpoint_epoch needs --checkpoint_run_id"),
    ],
)
def test_experiment_and_resume_refusals(argv, message):
    assert refusal(TrainConfig, ["--use_raw", *argv]) == message


def test_search_alone_and_resume_alone_are_accepted():
    assert parse(TrainConfig, ["--use_raw", "--search", "2"]).search == 2
    assert parse(TrainConfig, ["--use_raw", "--checkpoint_local", "x.pt"]).checkpoint_local == "x.pt"
    assert parse(TrainConfig, ["--use_raw", "--checkpoint_run_id", "r", "--checkpoint_epoch", "3"]).checkpoint_epoch


@pytest.mark.parametrize(
    ("argv", "grid"),
    [
        ([], False),
        (["--seeds", "1"], True),
        (["--folds", "3"], True),
        (["--ablate"], True),
        (["--baselines"], True),
        (["--search", "1"], True),
    ],  # fmt: skip
)
def test_any_experiment_flag_alone_makes_a_grid(argv, grid):
    assert parse(TrainConfig, ["--use_raw", *argv]).grid() is grid


E2E = ["--use_raw", "--no-fixed_features"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grad_accumulation", "0"], "--grad_accumulation 0 (1..B)"),
        (["--grad_accumulation", "33"], "--grad_accumulation 33 (1..B)"),
        (["--e2e_frames", "1"], "--e2e_frames 1 (>= 2)"),
        (["--e2e_size", "31"], "--e2e_size 31 (>= 32)"),
        (["--workers", "-2"], "--workers -2 (-1, 0 or more)"),
        (["--prefetch", "0"], "--prefetch 0 (>= 1)"),
        (["--backbone_lr", "0"], "--backbone_lr 0.0 (> 0)"),
        (["--backbone_lr", "inf"], "--backbone_lr inf (> 0)"),
        (
            ["--freeze_backbones", "--backbone_lr", "1e-5"],
            "--backbone_lr with --freeze_backbones (frozen backbones do not train)",
        ),  # fmt: skip
        (
            ["--standin_backbones", "--smoke_random_weights"],
            "--standin_backbones with --smoke_random_weights (choose one)",
        ),  # fmt: skip
        (["--prefetch", "0", "--e2e_frames", "1"], "--e2e_frames 1 (>= 2); --prefetch 0 (>= 1)"),
    ],
)
def test_each_bad_end_to_end_value_is_named(argv, message):
    assert refusal(TrainConfig, [*E2E, "--batch_size", "32", *argv]) == f"invalid end-to-end value(s): {message}"


def test_the_edge_of_every_end_to_end_range_is_accepted():
    ok = ["--grad_accumulation", "32", "--e2e_frames", "2", "--e2e_size", "32", "--workers", "-1", "--prefetch", "1"]
    parse(TrainConfig, [*E2E, "--batch_size", "32", *ok, "--backbone_lr", "1e-300"])
    parse(TrainConfig, [*E2E, "--grad_accumulation", "1", "--freeze_backbones", "--standin_backbones"])
    parse(TrainConfig, [*E2E, "--smoke_random_weights"])


def test_end_to_end_flags_need_end_to_end_training():
    assert refusal(TrainConfig, ["--use_raw", "--workers", "3", "--backbone_lr", "0.1"]) == (
        "--backbone_lr, --workers need(s) end-to-end training over the videos: add --no-fixed_features "
        "(pre-computed features cannot be augmented or fine-tuned)"
    )
    assert refusal(TrainConfig, [*E2E, "--baselines"]) == (
        "--seeds / --folds / --ablate / --baselines / --search / --head train on pre-computed features; run "
        "end-to-end training (--no-fixed_features) with the MLP head, one run at a time"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--checkpoint PATH is required (a best.pt or last.pt written by train.py --save)"),
        (
            ["--videos", "v", "--dataset", "demo"],
            "--videos scores a folder or list of videos; --dataset scores a dataset: pass one",
        ),  # fmt: skip
        (
            ["--explain", "--videos", "v"],
            "--explain needs scored videos of a dataset (--split val); --videos are unscored",
        ),  # fmt: skip
        (["--out", "s.csv"], "--out names the CSV of --videos scores; for a dataset split use --out_dir"),
    ],
)
def test_evaluate_refusals(argv, message):
    assert refusal(EvalConfig, ["--checkpoint", "b.pt", *argv] if argv else []) == message


def test_evaluate_accepts_each_option_alone():
    assert parse(EvalConfig, ["--checkpoint", "b.pt", "--explain"]).explain
    assert parse(EvalConfig, ["--checkpoint", "b.pt", "--videos", "v", "--out", "s.csv"]).out == "s.csv"


def test_gen_features_import_needs_a_name():
    assert refusal(GenConfig, ["--import", "f.npz"]) == (
        "--import needs --name NAME (the module name you will pass to --extra_features)"
    )


def test_similarity_methods_given_twice_or_with_feature_names():
    message = (
        "--similarity_methods takes methods, not feature names, and given twice the second occurrence replaces the "
        f"first (methods: {', '.join(TIERS['similarity'].options(TIERS)['similarity_methods'].choices)}). The "
        "reference README's `--similarity_methods dbscan --similarity_methods hrnet ip_csn_152` means "
        "`--similarity_methods dbscan --similarity_features hrnet ip_csn_152`."
    )
    assert "dbscan, kde, cosine_mean" in message
    assert refusal(TrainConfig, ["--use_similarity", "--similarity_methods", "kde", "--similarity_methods", "dbscan"])
    assert refusal(TrainConfig, ["--use_similarity", "--similarity_methods", "hrnet"]) == message
    argv = ["--use_similarity", "--similarity_methods", "kde", "--similarity_features", "hrnet"]
    assert parse(TrainConfig, argv).similarity_features == ["hrnet"]


def test_unknown_keys_name_where_they_came_from(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("use_raw: true\nlearning_rate: 1\n")
    assert refusal(TrainConfig, ["--config", str(path)]).startswith(f"--config {path}: unknown key(s) learning_rate;")
    with pytest.raises(ConfigError, match=r"^config: unknown key\(s\) bogus; valid keys: ablate, backbone_lr"):
        from_dict(TrainConfig, {"bogus": 1})


def test_data_and_feature_roots(monkeypatch):
    monkeypatch.delenv("M3S_DATA_DIR", raising=False)
    assert default_data_dir() == "data"
    assert config.Paths().resolved_features_dir() == Path("data/features")
    monkeypatch.setenv("M3S_DATA_DIR", "/d")
    assert config.Paths().resolved_features_dir() == Path("/d/features")
    assert config.Paths(features_dir="/f").resolved_features_dir() == Path("/f")


def test_parse_reads_the_command_line_by_default(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "--use_raw", "--epochs", "4"])
    assert parse(TrainConfig).epochs == 4


def test_to_dict_round_trips():
    cfg = parse(TrainConfig, ["--use_raw", "--tags", "a", "--seed", "5"])
    assert from_dict(TrainConfig, config.to_dict(cfg)) == cfg


# --------------------------------------------------------------------------- --help, from a fresh interpreter


@functools.cache
def _help(script: str) -> str:
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=config.ROOT)
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())


@pytest.mark.parametrize(("script", "cls"), [("train.py", TrainConfig), ("evaluate.py", EvalConfig),
                                             ("gen_features.py", GenConfig)])  # fmt: skip
def test_help_documents_every_field_with_its_default(script, cls):
    """The help is built from the config fields: every field once, with its help text, choices and default, and the
    script's docstring. Run in a fresh interpreter, so it also sees how the fields are built at import time."""
    text = _help(script)
    flags = set(re.findall(r"\[(--[a-z_0-9]+)", text.split(" options:")[0]))
    expected = {f.metadata.get("flag") or f"--{f.name}" for f in dataclasses.fields(cls)} | {"--config"}
    assert flags == expected
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        assert f.metadata["help"], f.name
        assert f"{' '.join(f.metadata['help'].split())} (default: {shown if shown not in ('', None) else 'none'})" in (
            text
        ), f.name
        if f.metadata["choices"]:
            assert "{" + ",".join(map(str, f.metadata["choices"])) + "}" in text, f.name
    doc = " ".join((config.ROOT / script).read_text().split('"""')[1].split())  # the script's docstring
    assert doc[:60] in text


def test_help_lists_every_reference_flag_and_its_default():
    text = _help("train.py")
    missing = [f for f in REFERENCE_FLAGS if f"{f} " not in text]
    assert not missing, missing
    assert "number of epochs (default: 20)" in text and "(default: 512 64)" in text and "(default: 0.001)" in text


def test_the_tier_switches_and_options_in_the_configs():
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    gen = {f.name for f in dataclasses.fields(GenConfig)}
    for tier in TIERS.values():
        if tier.has_switch:
            assert train[tier.switch].default is False
            assert train[tier.switch].metadata["help"] == (tier.help or f"use the {tier.name} tier")
        assert tier.switch not in gen
        for name, o in tier.options(TIERS).items():
            assert (name in train, name in gen) == (o.train, o.gen), name
            if o.train:
                assert (train[name].metadata["help"], train[name].metadata["choices"]) == (o.help, o.choices)
    assert "use_imported" not in train


# --------------------------------------------------------------------------- the field builders, called directly
# (the configs are built once, at import; these tests call the builders themselves, so that a change in them is seen
# by the tests in this process too, not only by the --help checks above, which run in a fresh interpreter)


def test_opt_builds_a_field_with_its_help_choices_and_flags():
    scalar = config.opt(3, "three", (1, 3), short="-t", flag="--three")
    assert (scalar.default, scalar.default_factory) == (3, dataclasses.MISSING)
    assert dict(scalar.metadata) == {"help": "three", "choices": (1, 3), "short": "-t", "flag": "--three"}
    listed = config.opt([1, 2], "a list")
    assert listed.default is dataclasses.MISSING
    first, second = listed.default_factory(), listed.default_factory()
    assert first == [1, 2] and first is not second  # every config gets its own list
    assert dict(listed.metadata) == {"help": "a list", "choices": None, "short": None, "flag": None}


@pytest.mark.parametrize("gen", [False, True])
def test_tier_fields_are_the_switches_and_the_options_of_each_side(gen):
    fields = {name: (tp, f) for name, tp, f in config._tier_fields(gen)}
    expected = {}
    for tier in TIERS.values():
        if tier.has_switch and not gen:
            expected[tier.switch] = (bool, False, tier.help or f"use the {tier.name} tier", None)
        for name, o in tier.options(TIERS).items():
            if o.gen if gen else o.train:
                expected[name] = (o.type, o.default, o.help, o.choices)
    got = {}
    for name, (tp, f) in fields.items():
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        got[name] = (tp, default, f.metadata["help"], f.metadata["choices"])
    assert got == expected
    assert ("use_raw" in got, "csn_arch" in got, "normalize_raw" in got) == (not gen, True, not gen)
    assert gen or got["use_raw"] == (bool, False, "use the raw (low-level) tier", None)


def test_parse_passes_its_description_to_the_help(capsys):
    with pytest.raises(SystemExit):
        parse(EvalConfig, ["--help"], description="Score a checkpoint.")
    assert "\n\nScore a checkpoint.\n\n" in capsys.readouterr().out
    for parser in (config.parse_explicit, parse):
        with pytest.raises(SystemExit):
            parser(GenConfig, ["--help"])
        assert capsys.readouterr().out == cli.build_parser(GenConfig).format_help()  # no description unless given
