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
    ("argv", "parsed"),
    [
        (
            ["--weight_decay", "0", "--momentum", "0", "--scheduler_gamma", "1", "--scheduler_step_size", "1"],
            {"weight_decay": 0.0, "momentum": 0.0, "scheduler_gamma": 1.0, "scheduler_step_size": 1},
        ),
        (["--seed", "0", "--lr", "1e-300"], {"seed": 0, "lr": 1e-300}),
        (["--seed", str(2**64 - 1)], {"seed": 18446744073709551615}),
        (["--device", "cuda:12"], {"device": "cuda:12"}),
        (["--device", "mps"], {"device": "mps"}),
        (
            ["--epochs", "1", "--batch_size", "1", "--hidden_channels", "1", "1"],
            {"epochs": 1, "batch_size": 1, "hidden_channels": [1, 1]},
        ),
        (
            ["--folds", "2", "--seeds", "1", "2", "--threads", "0", "--search", "0"],
            {"folds": 2, "seeds": [1, 2], "threads": 0, "search": 0},
        ),
    ],
)
def test_the_edge_of_every_range_is_accepted(argv, parsed):
    cfg = parse(TrainConfig, ["--use_raw", *argv])
    assert {k: getattr(cfg, k) for k in parsed} == parsed
    assert all(type(getattr(cfg, k)) is type(v) for k, v in parsed.items())  # "0": 0.0 or 0 by field


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
        (["--ablate", "--extra_features", "x"], True),
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
    cfg = parse(TrainConfig, [*E2E, "--batch_size", "32", *ok, "--backbone_lr", "1e-300"])
    got = (cfg.grad_accumulation, cfg.e2e_frames, cfg.e2e_size, cfg.workers, cfg.prefetch, cfg.backbone_lr)
    assert got == (32, 2, 32, -1, 1, 1e-300) and cfg.fixed_features is False and cfg.batch_size == 32
    cfg = parse(TrainConfig, [*E2E, "--grad_accumulation", "1", "--freeze_backbones", "--standin_backbones"])
    assert (cfg.grad_accumulation, cfg.freeze_backbones, cfg.standin_backbones, cfg.smoke_random_weights) == (
        1, True, True, False
    )  # fmt: skip
    cfg = parse(TrainConfig, [*E2E, "--smoke_random_weights"])
    assert (cfg.smoke_random_weights, cfg.standin_backbones, cfg.freeze_backbones) == (True, False, False)


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
    argv = ["--use_similarity", "--similarity_methods", "kde", "--similarity_methods", "dbscan"]
    assert refusal(TrainConfig, argv) == message
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
        said = " ".join(f.metadata["help"].split())
        if "default" not in said and shown not in ("", None):  # a help that names its default is not told it again
            said += f" (default: {shown})"
        assert said in text, f.name
        if f.metadata["choices"]:
            offered = [c for c in f.metadata["choices"] if c != ""]  # "" (unset) is said in words, not as a choice
            assert "{" + ",".join(map(str, offered)) + "}" in text, f.name
    doc = " ".join((config.ROOT / script).read_text().split('"""')[1].split())  # the script's docstring
    assert doc[:60] in text


def test_help_lists_every_reference_flag_and_its_default():
    text = _help("train.py")
    missing = [f for f in REFERENCE_FLAGS if f"{f} " not in text]
    assert not missing, missing
    assert "number of epochs (default: 20)" in text and "(default: 512 64)" in text and "(default: 0.001)" in text


SWITCH_HELP = {  # written out
    "use_raw": "use the raw (low-level) tier",
    "use_hrnet": "use the hrnet (scene semantics) tier",
    "use_csn": "use the csn (actions) tier",
    "use_clip": "use the clip tier (CLIP image embeddings of the frames)",
    "use_text": "use the text tier (sentence embeddings of the captions)",
    "use_resmem": "use the resmem tier (ResMem image memorability of the frames; weights: pip package resmem==1.1.6, "
    "bash envs/setup.sh --with resmem; ResMem Non-commercial License (University of Chicago): research and other "
    "non-commercial use only)",
    "use_similarity": "use the similarity (distinctiveness) tier",
}
TIER_FIELDS = {  # the fields the tiers add to each config, in order, with their types (written out)
    False: {"use_raw": bool, "raw_features": list[str], "normalize_raw": bool, "use_temporal_std": bool,
            "use_hrnet": bool, "hrnet_frames": int, "use_csn": bool, "csn_arch": str, "use_clip": bool,
            "clip_model": str, "clip_pretrained": str, "clip_frames": int, "clip_std": bool, "use_text": bool,
            "text_model": str, "normalize_text": bool, "use_resmem": bool, "resmem_frames": int,
            "resmem_resnet": bool, "normalize_resmem": bool, "use_similarity": bool, "similarity_features": list[str],
            "similarity_methods": list[str], "normalize_similarity": bool, "extra_features": list[str],
            "normalize_extra": bool},
    True: {"hrnet_frames": int, "csn_arch": str, "clip_model": str, "clip_pretrained": str, "clip_frames": int,
           "clip_download": bool, "text_model": str, "resmem_frames": int, "similarity_features": list[str],
           "similarity_methods": list[str]},
}  # fmt: skip


def _tier_defaults() -> dict:
    from tests.test_tiers import BUILTIN_OPTIONS

    switches = dict.fromkeys(SWITCH_HELP, False)
    return switches | {"extra_features": [], "normalize_extra": False} | {
        o: d for options in BUILTIN_OPTIONS.values() for o, d in options.items()
    }  # fmt: skip


def test_the_tier_switches_and_options_in_the_configs():
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    gen = {f.name: f for f in dataclasses.fields(GenConfig)}
    every = set(TIER_FIELDS[False]) | set(TIER_FIELDS[True])
    assert every & set(train) == set(TIER_FIELDS[False]) and every & set(gen) == set(TIER_FIELDS[True])
    defaults = _tier_defaults()
    for fields, side in ((train, False), (gen, True)):
        for name in TIER_FIELDS[side]:
            f = fields[name]
            assert (f.default_factory() if f.default is dataclasses.MISSING else f.default) == defaults[name], name
    for switch, text in SWITCH_HELP.items():
        assert train[switch].metadata["help"] == text
    for tier in TIERS.values():
        for name, o in tier.options(TIERS).items():
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
    fields = config._tier_fields(gen)
    assert [(name, tp) for name, tp, _ in fields] == list(TIER_FIELDS[gen].items())
    defaults, helps = _tier_defaults(), {n: o.help for t in TIERS.values() for n, o in t.options(TIERS).items()}
    for name, _, f in fields:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert default == defaults[name], name
        assert f.metadata["help"] == SWITCH_HELP.get(name, helps.get(name)), name
    assert gen or dict(fields[0][2].metadata) == {
        "help": "use the raw (low-level) tier", "choices": None, "short": None, "flag": None
    }  # fmt: skip
    assert not gen or fields[1][2].metadata["choices"] == ("ip_csn_152", "ir_csn_152")


def test_parse_passes_its_description_to_the_help(capsys):
    with pytest.raises(SystemExit):
        parse(EvalConfig, ["--help"], description="Score a checkpoint.")
    assert "\n\nScore a checkpoint.\n\n" in capsys.readouterr().out
    for parser in (config.parse_explicit, parse):
        with pytest.raises(SystemExit):
            parser(GenConfig, ["--help"])
        want = cli.build_parser(GenConfig, "", config.help_groups(GenConfig)).format_help()
        assert capsys.readouterr().out == want  # no description unless given
