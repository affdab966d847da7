"""Typed configs, one per script. A field's name is its command-line flag and its YAML key.

``parse(TrainConfig, argv)`` reads ``--config file.yaml`` first (its keys become defaults), then the flags, which win.
Unknown keys and bad values are errors that name the valid choices. Flags keep the reference M3-S names.

The configs ask the registries for every name they offer: the tiers (``tiers.TIERS``: each tier's ``--use_<name>``
switch and its own options), the datasets (``dataset.DATASETS``), the losses (``model.losses.LOSSES``). Adding a tier
or a loss never touches this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

import yaml

from core.io import ROOT, ConfigError, M3SError, __version__, code_version
from dataset import DATASETS
from model.losses import LOSSES
from tiers import TIERS, module_tiers
from tiers.base import Option

__all__ = ["ROOT", "ConfigError", "EvalConfig", "GenConfig", "TrainConfig", "__version__", "code_version", "parse"]

DATASET_NAMES = tuple(DATASETS)
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("step", "cosine", "none")
FAMILIES = tuple(t.name for t in TIERS.values() if t.computed)  # what gen_features.py --features computes


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
    + [("fixed_features", bool, opt(True, "train on pre-computed features (the only mode implemented)"))],
    bases=(Paths,),
    namespace={"modules": _modules, "__module__": __name__},
)


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
    data_augmentation: bool = opt(False, "augment videos during training (needs end-to-end training; not implemented)")
    compute_raw: bool = opt(False, "compute raw features on the fly (reference flag; use gen_features.py instead)")
    hidden_channels: list[int] = opt([512, 64], "hidden layer widths of the MLP")
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
    # experiments: any of these makes train.py train a grid of runs and write a summary (pipeline/experiments.py)
    seeds: list[int] = opt([], "train one run per seed; the summary gives mean +- std and the seed ensemble")
    folds: int = opt(0, "K-fold cross-validation over the scored train+val videos (0: the dataset's own split)")
    fold_seed: int = opt(0, "seed of the fold partition (written once beside the dataset, then reused)")
    ablate: bool = opt(False, "train every non-empty combination of the selected modules")
    baselines: bool = opt(False, "also fit Ridge and RBF-SVR (standardised inputs, CV on train) on the same table")
    batched: bool = opt(True, "train a grid's runs together as one batched model (--no-batched: one by one)")
    search: int = opt(0, "run this many Optuna trials over --search_space (each scored over --seeds / --folds)")
    search_space: str = opt("configs/search_paper.yaml", "YAML search space of --search")
    search_storage: str = opt("", "Optuna storage URL (default: sqlite in the run directory, so a search resumes)")
    search_seed: int = opt(0, "seed of the TPE sampler")

    def grid(self) -> bool:
        """Whether this config asks for an experiment (several runs and a summary) rather than one run."""
        return bool(self.seeds or self.folds or self.ablate or self.baselines or self.search)

    def check(self) -> None:
        self._check_experiment()
        if not self.modules():
            switches = ", ".join(f"--{t.switch}" for t in TIERS.values() if t.has_switch)
            raise ConfigError(f"no module selected: pass at least one of {switches} or --extra_features NAME")
        refused = {
            "data_augmentation": "augmentation needs end-to-end training over videos, which m3s does not do yet; "
            "train on pre-computed features without --data_augmentation",
            "compute_raw": "raw features are computed offline: run `python gen_features.py --dataset "
            f"{self.dataset} --features raw`, then train without --compute_raw",
        }
        for name, why in refused.items():
            if getattr(self, name):
                raise ConfigError(f"--{name} is not supported: {why}")
        if not self.fixed_features:
            raise ConfigError(
                "--no-fixed_features (features computed inside the training step) is not implemented; "
                "m3s trains on pre-computed features from gen_features.py"
            )
        if self.epochs < 1 or self.batch_size < 1 or not self.hidden_channels or min(self.hidden_channels) < 1:
            raise ConfigError("--epochs, --batch_size and every --hidden_channels width must be >= 1")
        if self.checkpoint_epoch is not None and not self.checkpoint_run_id:
            raise ConfigError("--checkpoint_epoch needs --checkpoint_run_id")

    def _check_experiment(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds {' '.join(map(str, self.seeds))}: each seed once")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError("--folds K needs K >= 2 (0: the dataset's own train/val split)")
        if self.threads < 0 or self.search < 0:
            raise ConfigError("--threads and --search must be >= 0")
        if self.grid() and (self.checkpoint_local or self.checkpoint_run_id):
            raise ConfigError("resuming (--checkpoint_local / --checkpoint_run_id) is for single runs, not grids")
        if self.search and self.ablate:
            raise ConfigError("--search tunes one combination of modules; run --ablate with the tuned values after")


@dataclass
class EvalConfig(Paths):
    checkpoint: str = opt("", "checkpoint to score (best.pt / last.pt of a run)")
    dataset: str = opt("", "dataset to score on; default: the checkpoint's", ("",) + DATASET_NAMES)
    split: str = opt("val", "split to score", ("train", "val", "test", "all"))
    out_dir: str = opt("", "where metrics and predictions go; default: the checkpoint's directory")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")

    def check(self) -> None:
        if not self.checkpoint:
            raise ConfigError("--checkpoint PATH is required (a best.pt or last.pt written by train.py --save)")


@dataclass
class _GenBase(Paths):
    dataset: str = opt("Memento10k", "dataset whose videos are processed", DATASET_NAMES)
    features: list[str] = opt(["raw"], "feature families (tiers) to compute", FAMILIES)
    workers: int = opt(0, "decoding worker processes (0: one per available core)")
    batch_size: int = opt(8, "videos per extraction batch")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")


@dataclass
class GenConfig(make_dataclass("_GenTiers", _tier_fields(gen=True), bases=(_GenBase,))):
    fit_on: str = opt(
        "",
        "use the transforms fitted on this dataset's train split (HOG PCA, similarity) instead of fitting: how your "
        "own videos are scored (--dataset folder --fit_on Memento10k)",
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

    def check(self) -> None:
        if self.import_path and not self.name:
            raise ConfigError("--import needs --name NAME (the module name you will pass to --extra_features)")


# --------------------------------------------------------------------------- parsing


def _base_type(tp: Any) -> tuple[type, bool]:
    """(element type, is_list) of an annotation such as ``int | None`` or ``list[str]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


# the reference's spellings of the optimizer and scheduler names; no other field is rewritten
_ALIASES = {
    "optimizer": {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd"},
    "scheduler": {"StepLR": "step", "CosineAnnealingLR": "cosine"},
}


def _coerce(f: dataclasses.Field, value: Any, hints: dict) -> Any:
    """Convert a YAML / flag value to the field's type and check its choices."""
    tp, is_list = _base_type(hints[f.name])
    if value is None:
        return None
    items = value if is_list else [value]
    if is_list and not isinstance(value, list):
        raise ConfigError(f"{f.name}: expected a list, got {value!r}")
    out = []
    for item in items:
        item = _ALIASES.get(f.name, {}).get(item, item) if isinstance(item, str) else item
        try:
            if (tp is bool) != isinstance(item, bool):  # YAML's true/false only for booleans, and only they take it
                raise TypeError
            if tp is int and isinstance(item, float) and not item.is_integer():
                raise ValueError  # 2.9 epochs is a mistake, not 2
            item = tp(item) if not isinstance(item, tp) else item
        except (TypeError, ValueError):
            raise ConfigError(f"{f.name}: {item!r} is not a valid {tp.__name__}") from None
        choices = f.metadata.get("choices")
        if choices and item not in choices:
            raise ConfigError(f"{f.name}: {item!r} is not one of {', '.join(map(str, choices))}")
        out.append(item)
    return out if is_list else out[0]


def build_parser(cls: type, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of defaults (keys = flag names); flags override it")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, is_list = _base_type(hints[f.name])
        names = [f.metadata.get("flag") or f"--{f.name}"] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        # argparse's own default display is off: SUPPRESS keeps the values given explicitly apart from defaults
        help_text = f"{f.metadata.get('help', '')} (default: {shown if shown not in ('', None) else 'none'})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "default": argparse.SUPPRESS}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = str if tp is str else tp
            if is_list:
                kwargs["nargs"] = "+" if f.name not in ("tags", "extra_features") else "*"
        choices = f.metadata.get("choices")
        if choices:
            kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        parser.add_argument(*names, **kwargs)
    return parser


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of flag names to values")
    return data


def from_dict(cls: type, values: dict, source: str = "config") -> Any:
    """Build a config from a mapping, refusing unknown keys and bad values."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    cfg = cls(**{k: _coerce(fields[k], v, hints) for k, v in values.items()})
    return cfg


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


def parse_explicit(
    cls: type, argv: list[str] | None = None, description: str = "", check: bool = True
) -> tuple[Any, dict]:
    """Like ``parse``, also returning the values set explicitly (YAML file and flags, not defaults).

    ``check=False`` leaves ``cfg.check()`` to the caller (train.py checks after merging a resumed checkpoint's config).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _explain_similarity(argv)
    parser = build_parser(cls, description)
    args = vars(parser.parse_args(argv))
    path = args.pop("config", None)
    values = (load_yaml(path) if path else {}) | args
    cfg = from_dict(cls, values, source=f"--config {path}" if path else "flags")
    if check and hasattr(cfg, "check"):
        cfg.check()
    return cfg, values


def parse(cls: type, argv: list[str] | None = None, description: str = "") -> Any:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``cls``: YAML defaults, then flags; then ``check()``."""
    return parse_explicit(cls, argv, description)[0]


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def main_guard(fn: typing.Callable[[], None]) -> None:
    """Run a script's main, turning the errors we raise on purpose into one clear line and exit status 2."""
    try:
        fn()
    except (M3SError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
