"""Typed configs, one per script. A field's name is its command-line flag and its YAML key.

``parse(TrainConfig, argv)`` reads ``--config file.yaml`` first (its keys become defaults), then the flags, which win.
Unknown keys and bad values are errors that name the valid choices. Flags keep the reference M3-S names.

The configs ask the registries for every name they offer: the tiers (``tiers.TIERS``: each tier's ``--use_<name>``
switch and its own options), the datasets (``dataset.DATASETS``), the losses (``model.losses.LOSSES``). Adding a tier
or a loss never touches this file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from core import cli
from core.io import ROOT, ConfigError, __version__, code_version
from dataset import DATASETS
from model.heads import HEADS
from model.losses import LOSSES
from tiers import TIERS, module_tiers, owner
from tiers.base import Option

__all__ = ["ROOT", "ConfigError", "EvalConfig", "GenConfig", "TrainConfig", "__version__", "code_version", "parse"]

DATASET_NAMES = tuple(DATASETS)
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("step", "cosine", "none")
FAMILIES = tuple(t.name for t in TIERS.values() if t.computed)  # what gen_features.py --features computes
#: --workers means the same in every script (torch's DataLoader convention, plus -1)
WORKERS_HELP = "decoding processes (-1: one per available core; 0: decode in this process; N: N processes)"


def opt(default: Any, help: str, choices: tuple | None = None, short: str | None = None, flag: str | None = None):
    """A config field with its help text, valid choices and optional short / alternative flag."""
    meta = {"help": help, "choices": choices, "short": short, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


def _tier_fields(gen: bool) -> list[tuple[str, Any, dataclasses.Field]]:
    """Every tier's fields: its switch (train side) and its options (those marked ``gen`` for gen_features.py)."""
    out = []
    for tier in TIERS.values():
        if tier.has_switch and not gen:
            out.append((tier.switch, bool, opt(False, tier.help or f"use the {tier.name} tier")))
        for name, o in tier.options(TIERS).items():
            if (o.gen if gen else o.train) and name not in {f[0] for f in out}:
                out.append((name, o.type, opt(o.default, o.help, o.choices)))
    return out


def default_data_dir() -> str:
    return os.environ.get("M3S_DATA_DIR", "data")


@dataclass
class Paths:
    """Where datasets, feature stores and runs live (roots come from flags or environment, never from code)."""

    data_dir: str = opt("", "root holding the datasets (<data_dir>/<dataset>/...); default $M3S_DATA_DIR or ./data")
    features_dir: str = opt("", "root of the feature stores; default <data_dir>/features")

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir or default_data_dir())

    def resolved_features_dir(self) -> Path:
        return Path(self.features_dir) if self.features_dir else self.resolved_data_dir() / "features"


def _modules(self: Any) -> list[str]:
    """The chosen modules, in the model's fixed input order (the tier registry's)."""
    return list(module_tiers(self))


#: Which modules (tiers) feed the model, and how their features are prepared. Shared by train and evaluate.
ModuleConfig = make_dataclass(
    "ModuleConfig",
    [("dataset", str, opt("Memento10k", "dataset to train on", DATASET_NAMES))]
    + _tier_fields(gen=False)
    + [("fixed_features", bool, opt(True, "MLP on pre-computed features (--no-fixed_features: end to end)"))],
    bases=(Paths,),
    namespace={"modules": _modules, "__module__": __name__},
)


# flags that only end-to-end training (--no-fixed_features) reads
_END_TO_END_ONLY = ("data_augmentation", "compute_raw", "freeze_backbones", "grad_checkpointing", "standin_backbones",
                    "smoke_random_weights", "backbone_lr", "grad_accumulation", "e2e_frames", "e2e_size", "workers",
                    "prefetch", "deep_dtype", "weights_dir")  # fmt: skip


@dataclass
class TrainConfig(ModuleConfig):
    name: str = opt("", "run name (run directory runs/<name>); default: dataset, modules and time", short="-n")
    save: bool = opt(False, "save best.pt and last.pt in the run directory", short="-s")
    log: bool = opt(False, "log the run to wandb, with every epoch's checkpoint as an artifact", short="-l")
    seed: int | None = opt(None, "random seed; unset draws one and records it")
    group: str = opt("", "wandb group")
    tags: list[str] = opt([], "wandb tags")
    project: str = opt("m3s", "wandb project")
    runs_dir: str = opt("runs", "parent of the run directories")
    data_augmentation: bool = opt(False, "end-to-end: random resized crop (scale 0.8-1, square) + flip of train clips")
    compute_raw: bool = opt(False, "end-to-end: compute the raw tier from the decoded clips (implied by augmentation)")
    hidden_channels: list[int] = opt([512, 64], "hidden layer widths of the MLP")
    head: str = opt(
        "mlp",
        "the model over the modules (model/heads.py; stack: the blend of configs/recipe.yaml; select: the one of mlp, "
        "svr, ridge that inner CV on train ranks best)",
        tuple(HEADS),
    )
    batch_size: int = opt(32, "batch size")
    loss: str = opt("mse", "training loss", tuple(LOSSES))
    mse_tails_pow: float = opt(4.0, "exponent p of the mse_tails weights 1 + c|m - mean|^p")
    mse_tails_mult_fact: float = opt(2.0, "factor c of the mse_tails weights")
    lr: float = opt(1e-3, "learning rate")
    epochs: int = opt(20, "number of epochs")
    optimizer: str = opt("adam", "optimizer", OPTIMIZERS)
    momentum: float = opt(0.9, "momentum (sgd only)")
    weight_decay: float = opt(1e-5, "weight decay")
    scheduler: str = opt("step", "learning-rate schedule (stepped once per epoch)", SCHEDULERS)
    scheduler_gamma: float = opt(0.2, "StepLR gamma")
    scheduler_step_size: int = opt(5, "StepLR step size, in epochs")
    checkpoint_local: str = opt("", "resume from this checkpoint file (best.pt / last.pt)")
    checkpoint_run_id: str = opt("", "resume from the checkpoint artifact of this wandb run (entity/project/id or id)")
    checkpoint_epoch: int | None = opt(None, "epoch of the wandb checkpoint artifact to fetch (default: latest)")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto (a GPU when present)")
    threads: int = opt(0, "CPU threads torch may use (0: chosen from the work of one step; a batch-32 MLP gets 1)")
    # experiments: any of these makes train.py train a grid of runs and write a summary (pipeline/grid/runner.py)
    seeds: list[int] = opt([], "train one run per seed; the summary gives mean +- std and the seed ensemble")
    folds: int = opt(0, "K-fold cross-validation over the scored train+val videos (0: the dataset's own split)")
    fold_seed: int = opt(0, "seed of the fold partition (written once beside the dataset, then reused)")
    ablate: bool = opt(False, "train every non-empty combination of the selected modules")
    baselines: bool = opt(False, "also train the heads ridge and svr (standardised inputs, CV on train) beside --head")
    batched: bool = opt(True, "train a grid's runs together as one batched model (--no-batched: one by one)")
    search: int = opt(
        0, "run this many Optuna trials over --search_space, each scored over --seeds / --folds (0: no search)"
    )
    search_space: str = opt("configs/search/paper.yaml", "YAML search space of --search")
    search_storage: str = opt("", "Optuna storage URL (default: sqlite in the run directory, so a search resumes)")
    search_seed: int = opt(0, "seed of the TPE sampler")
    search_on: str = opt("val", "what --search scores a trial on: val (its best trial's val score is then optimistic) "
                         "or inner_cv (3 folds of the train videos; val is scored once, for the best trial)",
                         ("val", "inner_cv"))  # fmt: skip
    # end-to-end training (--no-fixed_features): clips decoded, HRNet / CSN run inside the step (pipeline/e2e/)
    freeze_backbones: bool = opt(False, "end-to-end: keep HRNet / CSN frozen (features recomputed per augmented view)")
    backbone_lr: float | None = opt(None, "end-to-end: learning rate of the fine-tuned backbones (default --lr / 100)")
    grad_checkpointing: bool = opt(False, "end-to-end: recompute backbone activations in the backward (less memory)")
    grad_accumulation: int = opt(1, "end-to-end: steps each process splits a --batch_size batch into (same update)")
    e2e_frames: int = opt(45, "end-to-end: frames decoded per clip (45, as the stored features)")
    e2e_size: int = opt(256, "end-to-end: side of the square frames (256, as the stored features and the HOG PCA)")
    workers: int = opt(-1, "end-to-end: clip " + WORKERS_HELP)
    prefetch: int = opt(2, "end-to-end: batches each decoding process prepares ahead")
    deep_dtype: str = opt("auto", "end-to-end: backbone precision (auto: bf16 on GPUs that have it, else fp16 with "
                          "loss scaling; fp32 on the CPU)", ("auto", "bf16", "fp16", "fp32"))  # fmt: skip
    weights_dir: str = opt("weights", "end-to-end: folder of the official backbone checkpoints (weights/README.md)")
    smoke_random_weights: bool = opt(False, "end-to-end: full-size backbones with RANDOM weights (pipeline tests)")
    standin_backbones: bool = opt(False, "end-to-end: tiny random backbones of the same classes (CPU tests, demo)")

    def grid(self) -> bool:
        """Whether this config asks for an experiment (several runs and a summary) rather than one run."""
        return bool(self.seeds or self.folds or self.ablate or self.baselines or self.search)

    def check(self) -> None:
        self._check_experiment()
        self._check_values()
        if not self.modules():
            switches = ", ".join(f"--{t.switch}" for t in TIERS.values() if t.has_switch)
            raise ConfigError(f"no module selected: pass at least one of {switches} or --extra_features NAME")
        self._check_end_to_end()
        if self.epochs < 1 or self.batch_size < 1 or not self.hidden_channels or min(self.hidden_channels) < 1:
            raise ConfigError("--epochs, --batch_size and every --hidden_channels width must be >= 1")
        if self.checkpoint_epoch is not None and not self.checkpoint_run_id:
            raise ConfigError("--checkpoint_epoch needs --checkpoint_run_id")

    def _check_values(self) -> None:
        """Values that would train nonsense or fail an epoch later are refused now, before any data loads."""
        if self.name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*", self.name):
            raise ConfigError(f"--name {self.name!r}: a plain name (letters, digits, _ . + = -), not a path")
        bad = [
            f"--{name} {value!r} ({why})"
            for name, value, ok, why in (
                ("lr", self.lr, math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
                ("weight_decay", self.weight_decay, 0 <= self.weight_decay < math.inf, "finite, >= 0"),
                ("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)"),
                ("scheduler_gamma", self.scheduler_gamma, 0 < self.scheduler_gamma <= 1, "in (0, 1]"),
                ("scheduler_step_size", self.scheduler_step_size, self.scheduler_step_size >= 1, ">= 1"),
                ("seed", self.seed, self.seed is None or 0 <= self.seed < 2**64, "in [0, 2**64)"),
                ("raw_features", self.raw_features, bool(self.raw_features) or not self.use_raw, "at least one"),
                ("device", self.device, re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device), "cpu, cuda[:N], auto"),
            )
            if not ok
        ]
        if bad:
            raise ConfigError("invalid value(s): " + "; ".join(bad))
        taken = [n for n in self.extra_features if n in TIERS or owner(n) is not None]
        if taken:
            raise ConfigError(f"--extra_features {' '.join(taken)}: a built-in tier's name; use its --use_ switch")

    def _check_end_to_end(self) -> None:
        """The end-to-end flags: only with --no-fixed_features, and with values that can train."""
        if self.fixed_features:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            given = [f"--{k}" for k in _END_TO_END_ONLY if getattr(self, k) != defaults[k]]
            if given:
                raise ConfigError(
                    f"{', '.join(given)} need(s) end-to-end training over the videos: add --no-fixed_features "
                    "(pre-computed features cannot be augmented or fine-tuned)"
                )
            return
        if self.grid() or self.head != "mlp":
            raise ConfigError(
                "--seeds / --folds / --ablate / --baselines / --search / --head train on pre-computed features; run "
                "end-to-end training (--no-fixed_features) with the MLP head, one run at a time"
            )
        bad = [
            f"--{name} {value!r} ({why})"
            for name, value, ok, why in (
                ("grad_accumulation", self.grad_accumulation, 1 <= self.grad_accumulation <= self.batch_size, "1..B"),
                ("e2e_frames", self.e2e_frames, self.e2e_frames >= 2, ">= 2"),
                ("e2e_size", self.e2e_size, self.e2e_size >= 32, ">= 32"),
                ("workers", self.workers, self.workers >= -1, "-1, 0 or more"),
                ("prefetch", self.prefetch, self.prefetch >= 1, ">= 1"),
                ("backbone_lr", self.backbone_lr, self.backbone_lr is None or 0 < self.backbone_lr < math.inf, "> 0"),
            )
            if not ok
        ]
        if self.freeze_backbones and self.backbone_lr is not None:
            bad.append("--backbone_lr with --freeze_backbones (frozen backbones do not train)")
        if self.standin_backbones and self.smoke_random_weights:
            bad.append("--standin_backbones with --smoke_random_weights (choose one)")
        if bad:
            raise ConfigError("invalid end-to-end value(s): " + "; ".join(bad))

    def _check_experiment(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds {' '.join(map(str, self.seeds))}: each seed once")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError("--folds K needs K >= 2 (0: the dataset's own train/val split)")
        if self.threads < 0 or self.search < 0:
            raise ConfigError("--threads and --search must be >= 0")
        if self.grid() and (self.checkpoint_local or self.checkpoint_run_id):
            raise ConfigError("resuming (--checkpoint_local / --checkpoint_run_id) is for single runs, not grids")
        if self.search and self.head != "mlp":
            raise ConfigError(f"--search tunes the MLP's training; --head {self.head} chooses its own hyper-parameters")
        if self.search and self.ablate:
            raise ConfigError("--search tunes one combination of modules; run --ablate with the tuned values after")
        if self.ablate and len(self.modules()) < 2:
            raise ConfigError(
                f"--ablate trains every combination of the selected modules; only {self.modules() or 'none'} is "
                "selected: select two or more, or drop --ablate"
            )


@dataclass
class EvalConfig(Paths):
    checkpoint: str = opt("", "checkpoint to score (best.pt / last.pt of a run)")
    dataset: str = opt("", "dataset to score on; default: the checkpoint's", ("",) + DATASET_NAMES)
    split: str = opt("val", "split to score", ("train", "val", "test", "all"))
    out_dir: str = opt("", "where metrics and predictions go; default: the checkpoint's directory")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")
    # scoring new videos from the checkpoint alone (pipeline/scoring/videos.py)
    videos: str = opt("", "score these videos: a folder (recursive) or a text file of video paths, one a line")
    out: str = opt("", "CSV of --videos scores; default: scores_<videos>_<checkpoint>.csv beside the checkpoint")
    weights_dir: str = opt("weights", "backbone checkpoints for --videos with deep tiers (weights/README.md)")
    workers: int = opt(-1, "--videos: " + WORKERS_HELP)
    # zero-shot scores without a checkpoint (pipeline/scoring/zeroshot.py)
    pretrained: str = opt(
        "",
        "score --videos (and images) without a checkpoint: resmem = the mean ResMem image memorability of sampled "
        "frames, an image model, not one trained on video scores (pip package resmem==1.1.6, bash envs/setup.sh "
        "--with resmem; ResMem Non-commercial License, University of Chicago)",
        ("", "resmem"),
    )
    resmem_frames: int = opt(8, "frames per video scored by --pretrained resmem (evenly spaced)")
    # interpretability (pipeline/scoring/explain.py)
    explain: bool = opt(False, "per-module contributions on --split, and its best and worst predicted videos")
    explain_repeats: int = opt(5, "seeded shuffles per module for the permutation importance of --explain")
    explain_seed: int = opt(0, "seed of the --explain shuffles")

    def check(self) -> None:
        if self.pretrained and (self.checkpoint or not self.videos):
            raise ConfigError(f"--pretrained {self.pretrained} scores --videos without a checkpoint: pass --videos "
                              "DIR_OR_LIST, and --checkpoint or --pretrained, not both")  # fmt: skip
        if not self.checkpoint and not self.pretrained:
            hint = "; without a trained model, --pretrained resmem gives zero-shot scores" if self.videos else ""
            raise ConfigError("--checkpoint PATH is required (a best.pt or last.pt written by train.py --save)" + hint)
        if self.workers < -1:
            raise ConfigError(f"--workers {self.workers}: {WORKERS_HELP}")
        if self.videos and self.dataset:
            raise ConfigError("--videos scores a folder or list of videos; --dataset scores a dataset: pass one")
        if self.explain and self.videos:
            raise ConfigError("--explain needs scored videos of a dataset (--split val); --videos are unscored")
        if self.out and not self.videos:
            raise ConfigError("--out names the CSV of --videos scores; for a dataset split use --out_dir")


@dataclass
class _GenBase(Paths):
    dataset: str = opt("Memento10k", "dataset whose videos are processed", DATASET_NAMES)
    features: list[str] = opt(["raw"], "feature families (tiers) to compute", FAMILIES)
    workers: int = opt(-1, WORKERS_HELP)
    batch_size: int = opt(8, "videos per extraction batch")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")


@dataclass
class GenConfig(make_dataclass("_GenTiers", _tier_fields(gen=True), bases=(_GenBase,))):
    fit_on: str = opt(
        "",
        "use the transforms fitted on this dataset's train split (HOG PCA, similarity) instead of fitting: how your "
        "own videos are scored (--dataset folder --fit_on Memento10k); without it a folder is fitted on its own videos",
        ("",) + DATASET_NAMES,
    )
    weights_dir: str = opt("weights", "folder holding the official backbone checkpoints (see weights/README.md)")
    smoke_random_weights: bool = opt(False, "run the deep backbones with RANDOM weights (pipeline tests only)")
    deep_dtype: str = opt("auto", "hrnet/csn compute dtype on CUDA (auto: bf16 where supported, else fp16); "
                          "CPU always runs fp32", ("auto", "bf16", "fp16", "fp32"))  # fmt: skip
    retry_failed: bool = opt(False, "try again the videos recorded as failed")
    limit: int = opt(0, "process at most this many videos (0: all)")
    import_path: str = opt("", "import your own features from .npy/.npz/.h5/.csv instead", flag="--import")
    name: str = opt("", "name of the imported feature (becomes the module --extra_features NAME)")
    ids: str = opt("", "text file of video ids, one per line, matching the rows of an imported .npy")
    id_column: str = opt("", "id column (CSV) or dataset (npz/h5) of an import; default: 'id' / 'ids'")
    overwrite: bool = opt(False, "--import: replace features already imported under --name")

    def check(self) -> None:
        if self.workers < -1:
            raise ConfigError(f"--workers {self.workers}: {WORKERS_HELP}")
        if self.import_path and not self.name:
            raise ConfigError("--import needs --name NAME (the module name you will pass to --extra_features)")


# --------------------------------------------------------------------------- parsing


# the reference's spellings of the optimizer and scheduler names; no other field is rewritten
_ALIASES = {
    "optimizer": {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd"},
    "scheduler": {"StepLR": "step", "CosineAnnealingLR": "cosine"},
}


def _similarity_option(name: str) -> Option:
    return TIERS["similarity"].options(TIERS)[name]


def _explain_similarity(argv: list[str]) -> None:
    """The reference README passes ``--similarity_methods`` twice, the second time with feature names."""
    flagged = [i for i, a in enumerate(argv) if a == "--similarity_methods"]
    feature_names = []
    for i in flagged:
        for value in argv[i + 1 :]:
            if value.startswith("-"):  # the next flag: its values are not methods
                break
            if value in _similarity_option("similarity_features").choices:
                feature_names.append(value)
    if len(flagged) > 1 or feature_names:
        raise ConfigError(
            "--similarity_methods takes methods, not feature names, and given twice the second occurrence replaces the "
            f"first (methods: {', '.join(_similarity_option('similarity_methods').choices)}). The reference README's "
            "`--similarity_methods dbscan --similarity_methods hrnet ip_csn_152` means "
            "`--similarity_methods dbscan --similarity_features hrnet ip_csn_152`."
        )


def help_groups(cls: type) -> dict[str, list[str]]:
    """The sections of a script's ``--help``: title -> field names (the tiers' own fields in one section)."""
    tiers = [name for name, _, _ in _tier_fields(gen=cls is GenConfig)]
    if cls is TrainConfig:
        return {
            "data": ["data_dir", "features_dir", "dataset"],
            "tiers (the modules the model reads, and how their features are made)": [*tiers, "fixed_features"],
            "model": ["head", "hidden_channels", "loss", "mse_tails_pow", "mse_tails_mult_fact"],
            "optimisation": ["batch_size", "lr", "epochs", "optimizer", "momentum", "weight_decay", "scheduler",
                             "scheduler_gamma", "scheduler_step_size", "seed", "device", "threads"],
            "experiments (several runs and their summary)": ["seeds", "folds", "fold_seed", "ablate", "baselines",
                                                              "batched", "search", "search_on", "search_space",
                                                              "search_storage", "search_seed"],
            "end-to-end training (--no-fixed_features)": list(_END_TO_END_ONLY),
            "run directory, resuming and logging": ["name", "save", "runs_dir", "checkpoint_local", "checkpoint_run_id",
                                                    "checkpoint_epoch", "log", "project", "group", "tags"],
        }  # fmt: skip
    if cls is GenConfig:
        return {
            "data": ["data_dir", "features_dir", "dataset", "fit_on", "limit", "retry_failed"],
            "what to compute": ["features", *tiers],
            "how": ["workers", "batch_size", "device", "deep_dtype", "weights_dir", "smoke_random_weights"],
            "importing your own features (--import)": ["import_path", "name", "ids", "id_column", "overwrite"],
        }
    return {}


#: A flag given on the command line drops the config file's value of the field it stands in for.
_OVERRIDES = {"seed": "seeds"}


def parse_explicit(
    cls: type, argv: list[str] | None = None, description: str = "", check: bool = True
) -> tuple[Any, dict]:
    """Like ``parse``, also returning the values set explicitly (YAML file and flags, not defaults).

    ``check=False`` leaves ``cfg.check()`` to the caller (train.py checks after merging a resumed checkpoint's config).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _explain_similarity(argv)
    parser = cli.build_parser(cls, description, help_groups(cls))
    args = vars(parser.parse_args(argv))
    path = args.pop("config", None)
    from_file = cli.load_yaml(path) if path else {}
    for flag, listed in _OVERRIDES.items():  # --seed 3 over a config's seeds: [1, 2, 3]: the command line wins
        if flag in args and listed not in args:
            from_file.pop(listed, None)
    values = from_file | args
    cfg = from_dict(cls, values, source=f"--config {path}" if path else "flags")
    if check and hasattr(cfg, "check"):
        cfg.check()
    return cfg, values


def parse(cls: type, argv: list[str] | None = None, description: str = "") -> Any:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``cls``: YAML defaults, then flags; then ``check()``."""
    return parse_explicit(cls, argv, description)[0]


def from_dict(cls: type, values: dict, source: str = "config") -> Any:
    """Build a config from a mapping (a YAML file, a checkpoint's config), refusing unknown keys and bad values."""
    return cli.from_dict(cls, values, source, _ALIASES)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
