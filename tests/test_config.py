"""Config parsing: reference flags, YAML defaults, errors that name the fix."""

import pytest

import config
from config import ConfigError, EvalConfig, GenConfig, TrainConfig, parse, parse_explicit

REFERENCE_FLAGS = (
    "-n --name -s --save -l --log --seed --group --tags --use_raw --raw_features --normalize_raw --use_temporal_std "
    "--use_hrnet --use_csn --hrnet_frames --csn_arch --use_similarity --similarity_features --similarity_methods "
    "--normalize_similarity --hidden_channels --dataset --batch_size --loss --mse_tails_pow --mse_tails_mult_fact "
    "--lr --epochs --optimizer --weight_decay --scheduler --scheduler_gamma --scheduler_step_size --checkpoint_local "
    "--checkpoint_run_id --checkpoint_epoch --fixed_features --data_augmentation --compute_raw --extra_features"
).split()


def test_reference_defaults_and_short_flags():
    cfg = parse(TrainConfig, ["--use_raw", "-n", "x", "-s", "-l", "--seed", "3"])
    assert (cfg.name, cfg.save, cfg.log, cfg.seed) == ("x", True, True, 3)
    assert cfg.raw_features == ["hog", "brightness", "contrast", "blurriness", "size_orig", "meanOF"]
    assert (cfg.hrnet_frames, cfg.csn_arch, cfg.similarity_methods, cfg.hidden_channels) == (
        1,
        "ip_csn_152",
        ["dbscan"],
        [512, 64],
    )
    assert (cfg.batch_size, cfg.loss, cfg.mse_tails_pow, cfg.mse_tails_mult_fact, cfg.lr, cfg.epochs) == (
        32,
        "mse",
        4.0,
        2.0,
        1e-3,
        20,
    )
    assert (cfg.optimizer, cfg.weight_decay, cfg.scheduler, cfg.scheduler_gamma, cfg.scheduler_step_size) == (
        "adam",
        1e-5,
        "step",
        0.2,
        5,
    )
    assert cfg.normalize_raw and cfg.fixed_features
    assert not parse(TrainConfig, ["--use_raw", "--no-normalize_raw"]).normalize_raw


def test_yaml_sets_defaults_and_flags_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("use_raw: true\nlr: 0.0004\nepochs: 7\nloss: mse_to_spearman\nscheduler: StepLR\n")
    cfg = parse(TrainConfig, ["--config", str(path), "--epochs", "3"])
    assert (cfg.use_raw, cfg.lr, cfg.epochs, cfg.loss, cfg.scheduler) == (True, 0.0004, 3, "mse_to_spearman", "step")


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("use_raw: true\nlearning_rate: 0.1\n", "unknown key(s) learning_rate; valid keys:"),
        ("use_raw: true\nloss: huber\n", "'huber' is not one of mse, l1, mse_tails, spearman, mse_to_spearman"),
        ("use_raw: true\nhrnet_frames: 3\n", "3 is not one of 1, 5, 9"),
        ("use_raw: true\nepochs: many\n", "'many' is not a valid int"),
        ("use_raw: yes-please\n", "is not a valid bool"),
        ("use_raw: true\nepochs: 2.9\n", "2.9 is not a valid int"),
        ("use_raw: true\nbatch_size: true\n", "True is not a valid int"),
        ("use_raw: true\nlr: false\n", "False is not a valid float"),
    ],
)
def test_bad_yaml_names_the_valid_choices(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(TrainConfig, ["--config", str(path)])


def test_reference_readme_similarity_command_is_explained():
    argv = ["--use_similarity", "--similarity_methods", "dbscan", "--similarity_methods", "hrnet", "ip_csn_152"]
    with pytest.raises(ConfigError, match="--similarity_features hrnet ip_csn_152"):
        parse(TrainConfig, argv)
    with pytest.raises(ConfigError, match="takes methods, not feature names"):
        parse(TrainConfig, ["--use_similarity", "--similarity_methods", "kde", "ip_csn_152"])
    right = ["--use_similarity", "--similarity_methods", "dbscan", "--similarity_features", "hrnet", "ip_csn_152"]
    cfg = parse(TrainConfig, [*right, "--csn_arch", "ir_csn_152"])
    assert (cfg.similarity_methods, cfg.similarity_features) == (["dbscan"], ["hrnet", "ip_csn_152"])
    assert parse(GenConfig, ["--similarity_methods", "kde", "--csn_arch", "ir_csn_152"]).similarity_methods == ["kde"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no module selected"),
        (["--use_raw", "--data_augmentation"], "--data_augmentation need.* --no-fixed_features"),
        (["--use_raw", "--compute_raw"], "--compute_raw need.* --no-fixed_features"),
        (["--use_raw", "--freeze_backbones"], "--freeze_backbones need.* --no-fixed_features"),
        (["--use_raw", "--no-fixed_features", "--seeds", "1", "2"], "one run at a time"),
        (["--use_raw", "--no-fixed_features", "--grad_accumulation", "64"], "--grad_accumulation 64"),
        (["--use_raw", "--checkpoint_epoch", "3"], "needs --checkpoint_run_id"),
    ],
)
def test_flags_that_cannot_apply_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(TrainConfig, argv)


def test_bad_flag_values_name_the_choices(capsys):
    with pytest.raises(ConfigError, match="'r3d' is not one of ip_csn_152, ir_csn_152"):
        parse(TrainConfig, ["--use_raw", "--csn_arch", "r3d"])
    with pytest.raises(SystemExit):
        parse(TrainConfig, ["--use_raw", "--epochs", "ten"])
    assert "invalid int value" in capsys.readouterr().err


def test_explicit_values_are_only_those_given():
    _, explicit = parse_explicit(TrainConfig, ["--epochs", "9"], check=False)
    assert explicit == {"epochs": 9}


def test_other_scripts_configs():
    gen = parse(GenConfig, ["--dataset", "VideoMem", "--features", "raw", "hrnet", "--import", "f.npz", "--name", "c"])
    assert (gen.import_path, gen.features) == ("f.npz", ["raw", "hrnet"])
    with pytest.raises(ConfigError, match="--import needs --name"):
        parse(GenConfig, ["--import", "f.npz"])
    with pytest.raises(ConfigError, match="--checkpoint PATH is required"):
        parse(EvalConfig, [])


@pytest.mark.parametrize("path", sorted((config.ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    modules = ["--extra_features", "emb"] if path.name == "recipe.yaml" else []  # the recipe: any data, named by flags
    cfg = parse(TrainConfig, ["--config", str(path), *modules])
    assert cfg.modules()


def test_aliases_rewrite_only_optimizer_and_scheduler():
    cfg = parse(TrainConfig, ["--use_raw", "-n", "SGD", "--tags", "AdamW", "StepLR", "--optimizer", "SGD"])
    assert (cfg.name, cfg.tags, cfg.optimizer) == ("SGD", ["AdamW", "StepLR"], "sgd")
    assert parse(TrainConfig, ["--use_raw", "--scheduler", "CosineAnnealingLR"]).scheduler == "cosine"


def test_one_device_resolver():
    from core.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("tpu")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:0")
