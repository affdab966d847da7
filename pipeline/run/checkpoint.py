"""Checkpoints: self-describing (weights, config, modules, their tiers and dims, normalisation statistics, provenance
of the features, metrics, code version), made of tensors and plain values only, so they load with
``torch.load(weights_only=True)``."""

from __future__ import annotations

from pathlib import Path

import torch

from core.io import ConfigError, M3SError, atomic_write, code_version, out_of_space
from model.heads import HEADS

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomic: a kill or a full disk leaves the previous file as it was."""
    try:
        with atomic_write(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as err:  # torch's zip writer reports ENOSPC as "unexpected pos ..."
        if out_of_space(err, Path(path).parent):
            raise M3SError(f"no space left on {Path(path).parent}: free some space and resume from last.pt") from None
        raise


REQUIRED = ("config", "model", "dims", "stats", "sources", "epoch", "modules")


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by ``train.py --save``; anything else (empty, truncated, another program's file, a
    pickle that would need ``weights_only=False``) is one clear error, never torch's traceback or advice."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt"))
        hint = (
            f"pass one of its checkpoints: {', '.join(str(path / f) for f in found)}"
            if found
            else ("it holds no checkpoint (train.py --save writes best.pt and last.pt)")
        )
        raise ConfigError(f"{path} is a directory, not a checkpoint; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train.py --save writes best.pt and last.pt)")
    not_ours = f"{path} is not an m3s checkpoint (best.pt / last.pt written by train.py --save)"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types here (EOFError, RuntimeError, UnpicklingError, OSError...)
        text = str(err).strip()
        reason = text.splitlines()[0][:200] if text else type(err).__name__
        if "weights_only" in text or "weights only" in text.lower():  # torch's advice (weights_only=False: run the
            reason = "torch.load finds no checkpoint of plain tensors and values in it"  # file's code) is wrong here
        raise ConfigError(f"{not_ours}: it cannot be read ({reason}); it may be truncated or empty") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{not_ours} (format {CHECKPOINT_FORMAT})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ConfigError(f"{not_ours}: it lacks {', '.join(missing)}")
    wrong = [
        f"{k} is {type(v).__name__}"
        for k, v in ckpt.items()
        if k in SCHEMA and not isinstance(v, SCHEMA[k]) and not (SCHEMA[k] is float and type(v) is int)
    ]
    if wrong:
        raise ConfigError(f"{not_ours}: {', '.join(wrong)} (see pipeline/run/checkpoint.py SCHEMA)")
    return ckpt


def repair_best(run_dir: Path, ckpt: dict) -> bool:
    """Make ``best.pt`` hold the best epoch that ``ckpt`` (the checkpoint a run resumes from) knows of. A kill between
    writing one file and the other could leave it stale; it is rebuilt from the best weights kept in ``ckpt``, for
    scoring (it holds no optimiser state of its own epoch, so it cannot be resumed from). True if it was rebuilt."""
    best, path = ckpt.get("best"), Path(run_dir) / "best.pt"
    if not best or not ckpt.get("best_model"):
        return False
    try:
        if load_checkpoint(path)["epoch"] == best["epoch"]:
            return False
    except (FileNotFoundError, ConfigError):
        pass
    state = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "rng")}
    history = [row for row in ckpt.get("history", []) if row["epoch"] <= best["epoch"]]
    state |= {"model": ckpt["best_model"], "epoch": best["epoch"], "metrics": best, "history": history}
    save_checkpoint(state, path)
    print(f"warning: {path} did not hold the best epoch {best['epoch'] + 1}; rebuilt it from the run's last checkpoint")
    return True


def load_weights(module: torch.nn.Module, weights: dict, what: str = "the checkpoint") -> None:
    """``module.load_state_dict(weights)``, with a checkpoint whose tensors do not fit the model it describes (edited,
    or written by other code) as one line that names the first differences, not torch's 20-line report."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    diffs = [f"{k}: {have[k]} in it, {want[k]} in the model" for k in want if k in have and have[k] != want[k]]
    diffs += [f"{k} missing" for k in want if k not in have] + [f"{k} unexpected" for k in have if k not in want]
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ConfigError(
            f"{what}'s weights do not fit the model its config describes: {'; '.join(diffs[:3])}{more}. Was it "
            "edited, or written by another version? Retrain, or use the checkpoint the run wrote"
        )
    module.load_state_dict(weights)


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    """The checkpoint's head (``config["head"]``, the MLP for checkpoints written before heads had names)."""
    name = ckpt["config"].get("head", "mlp")
    if name not in HEADS:
        raise ConfigError(f"the checkpoint's head {name!r} is not one of this m3s's heads ({', '.join(HEADS)})")
    weights = HEADS[name].upgrade(ckpt["model"])
    model = HEADS[name].build(ckpt["dims"], ckpt["config"], weights)
    load_weights(model, weights)
    return model


#: Every key a checkpoint of this format holds, with its type. ``REQUIRED`` ones are in every checkpoint of the
#: format, the oldest included; the others are checked when present (checkpoints written before ``tiers`` /
#: ``fitted`` existed still load).
SCHEMA: dict[str, type | tuple[type, ...]] = {
    "format": int, "code_version": str, "config": dict, "modules": list, "tiers": dict, "dims": dict, "stats": dict,
    "sources": dict, "fitted": dict, "train_mean": float, "epoch": int, "metrics": dict, "history": list,
    "best": dict, "model": dict,
    # to resume (last.pt of a run trained with -s) and to run end to end
    "best_model": dict, "best_pred": (torch.Tensor, type(None)), "optimizer": dict, "scheduler": dict, "rng": dict,
    "scaler": dict, "end_to_end": dict, "backbones": dict,
}  # fmt: skip
RESUME_KEYS = ("best_model", "best_pred", "optimizer", "scheduler", "rng", "scaler", "end_to_end", "backbones")


def build_checkpoint(
    cfg, modules: list[str], dims: dict, stats: dict, sources: dict, fitted: dict, history: list[dict], model,
    train_mean: float, best: dict | None = None, **resume: object,
) -> dict:  # fmt: skip
    """The one checkpoint builder (a run, a grid's sub-run, a fitted head, an end-to-end run): its last row of
    ``history`` is its epoch, ``model`` its weights (a module or a state dict), ``fitted`` the stores' transforms
    (what ``evaluate.py --videos`` applies to new videos), ``best`` the best row (default: the first highest val
    Spearman of ``history``); ``resume`` adds the ``RESUME_KEYS`` a run needs to go on."""
    from dataclasses import asdict

    from pipeline.run.fitted import pack
    from tiers import module_tiers

    unknown = sorted(set(resume) - set(RESUME_KEYS))
    if unknown:
        raise TypeError(f"build_checkpoint: {', '.join(unknown)} are not checkpoint keys")
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    state = {
        "format": CHECKPOINT_FORMAT,
        "code_version": code_version(),
        "config": asdict(cfg),
        "modules": list(modules),
        "tiers": {m: t.name for m, t in module_tiers(cfg).items()},
        "dims": {m: dims[m] for m in modules},
        "stats": {m: s for m, s in stats.items() if m in modules},
        "sources": sources,
        "fitted": pack(fitted),
        "train_mean": float(train_mean),
        "epoch": history[-1]["epoch"],
        "metrics": history[-1],
        "history": history,
        "best": best if best is not None else max(history, key=lambda r: r["val_spearman"]),
        "model": {k: v.detach().cpu() for k, v in weights.items()},
    }
    return state | resume


def stats_from_checkpoint(ckpt: dict) -> dict[str, dict[str, torch.Tensor]]:
    return {m: {k: v.float() for k, v in s.items()} for m, s in ckpt["stats"].items()}


def check_sources(want: dict, have: dict) -> None:
    """Refuse features whose dims or extraction settings differ from those a checkpoint was trained on."""
    diffs = []
    for store, w in want.items():
        h = have.get(store)
        if h is None:
            diffs.append(f"{store}: the checkpoint needs it, it is not selected")
            continue
        for key in ("features", "dims", "settings", "smoke"):
            if w.get(key) != h.get(key):
                diffs.append(f"{store} {key}: checkpoint {w.get(key)!r}, feature store {h.get(key)!r}")
        if w.get("transforms", {}) != h.get("transforms", {}):
            diffs.append(
                f"{store}: its fitted transforms ({', '.join(h.get('transforms', {})) or 'none'}) are not the ones "
                "the checkpoint was trained with, so its features are in another basis; extract them with "
                "gen_features.py --fit_on <the training dataset>"
            )
    if diffs:
        raise ConfigError("the feature stores differ from the checkpoint's:\n  " + "\n  ".join(diffs))
