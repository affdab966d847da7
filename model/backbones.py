"""The pretrained backbones of the hrnet and csn tiers: a registry, and loading of the official checkpoint files.

``load_backbone(name, weights_dir)`` builds the model, reads ``<weights_dir>/<file>`` with
``torch.load(weights_only=True)``, checks every key and shape against the model (errors name the key and the file)
and returns it in eval mode. A missing file is a ``FileNotFoundError`` that says how to get it (``weights/README.md``,
``weights/download.sh``). Random weights only with ``smoke_random_weights=True``, for pipeline tests.

Before it is read, a file whose sha256 is pinned in ``weights/SHA256SUMS`` (the one list of digests, which
``weights/download.sh`` reads too) must match it: ``weights_only`` stops pickled code, not wrong or altered weights.
``M3S_TRUST_WEIGHTS=1`` loads a file that differs from its pin (your own fine-tuned weights) with a warning.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.io import ROOT, ConfigError
from model.csn import ip_csn_152, ir_csn_152
from model.hrnet import HRNetV2

# Buffers that synchronised batch norm adds to every BN (the CSAIL HRNet file has them); no plain BN reads them.
SYNC_BN_EXTRAS = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")
SMOKE_SEED = 0  # random weights are seeded, so every process (torchrun shard) builds the same smoke model
# the pinned digests, `sha256sum` lines (digest, two spaces, path under the weights folder); download.sh reads it too
SHA256SUMS = ROOT / "weights" / "SHA256SUMS"
TRUST_ENV = "M3S_TRUST_WEIGHTS"  # "1": a file that differs from its pin loads, with a warning (your own weights)


class WeightsError(ConfigError):
    """A checkpoint file does not fit its model (missing, unexpected or misshapen keys, or not a state dict), or its
    sha256 is not the pinned one."""


@dataclass(frozen=True)
class Backbone:
    """One pretrained backbone: how to build it and which official file holds its weights."""

    build: Callable[[], nn.Module]
    family: str  # the feature family (tier) it serves: "hrnet" or "csn"; a new csn variant is one entry here
    file: str  # path under the weights folder, spelled as published; its sha256, if published, is in SHA256SUMS
    url: str
    feature_dim: int
    n_params: int  # learnable parameters (the SPEC's count), checked by the tests
    min_bytes: int  # sum of the tensors' sizes: a complete file is at least this big (download.sh checks it)
    ignorable_suffixes: tuple[str, ...] = ()  # BN buffers present in the file but not in the model


BACKBONES: dict[str, Backbone] = {
    "hrnetv2_w48": Backbone(
        build=HRNetV2,
        family="hrnet",
        file="ade20k-hrnetv2-c1/encoder_epoch_30.pth",
        url="http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-hrnetv2-c1/encoder_epoch_30.pth",
        feature_dim=720,
        n_params=65_325_120,
        min_bytes=261_976_908,
        ignorable_suffixes=SYNC_BN_EXTRAS,
    ),
    "ip_csn_152": Backbone(
        build=ip_csn_152,
        family="csn",
        file="ipCSN_152_ft_kinetics_from_ig65m_f133090949.pth",
        url="https://github.com/bjuncek/VMZ/releases/download/test_models/ipCSN_152_ft_kinetics_from_ig65m_f133090949.pth",
        feature_dim=2048,
        n_params=33_016_592,
        min_bytes=132_769_448,
    ),
    "ir_csn_152": Backbone(
        build=ir_csn_152,
        family="csn",
        file="irCSN_152_ft_kinetics_from_ig65m_f126851907.pth",
        url="https://github.com/bjuncek/VMZ/releases/download/test_models/irCSN_152_ft_kinetics_from_ig65m_f126851907.pth",
        feature_dim=2048,
        n_params=29_703_568,
        min_bytes=119_421_208,
    ),
}


# Tiny stand-ins built by the same classes (same structure, a few channels and blocks): end-to-end training runs on a
# CPU in seconds with them (tests, the demo corpus). Random weights, seeded like ``build_random``; never the paper's.
STANDINS: dict[str, Callable[[], nn.Module]] = {
    "hrnetv2_w48": lambda: HRNetV2(
        widths=(4, 8, 16, 32), stem=8, layer1_blocks=1, stages=((1, 2), (1, 3), (1, 4)), blocks=1
    ),
    "ip_csn_152": lambda: ip_csn_152(layers=(1, 1, 1, 1), planes=(4, 8, 16, 32), stem=8),
    "ir_csn_152": lambda: ir_csn_152(layers=(1, 1, 1, 1), planes=(4, 8, 16, 32), stem=8),
}


def build_standin(name: str) -> nn.Module:
    """The tiny stand-in of backbone ``name`` (``STANDINS``), seeded random weights, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SMOKE_SEED)
        return STANDINS[name]().eval()


def archs(family: str) -> tuple[str, ...]:
    """The backbones that serve a feature family (``--csn_arch`` choices for ``csn``)."""
    return tuple(name for name, b in BACKBONES.items() if b.family == family)


def weights_path(name: str, weights_dir: str | Path) -> Path:
    return Path(weights_dir) / BACKBONES[name].file


def build_random(name: str) -> nn.Module:
    """The backbone with seeded random weights, in eval mode (smoke runs, benchmarks, tests)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SMOKE_SEED)
        return BACKBONES[name].build().eval()


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(
    model: nn.Module, state: dict, source: str, ignorable_suffixes: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """``state`` restricted to the model's keys, after checking it supplies every one of them with the right shape.

    Keys ending in one of ``ignorable_suffixes`` are dropped only where they sit on a batch-norm module of the model
    (the SyncBN extras); any other key the model lacks is an error, as is a missing or misshapen key.
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: expected a plain state dict (parameter name -> tensor), got {type(state)}")
    expected = model.state_dict()
    bn_modules = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    def ignorable(key: str) -> bool:
        module, _, buffer = key.rpartition(".")
        return buffer in ignorable_suffixes and module in bn_modules

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not ignorable(k)]
    misshapen = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{what} key(s): {_listing(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
        if keys
    ]
    if problems:
        raise WeightsError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    return {k: state[k] for k in expected}


def pinned_sha256(rel: str) -> str | None:
    """The sha256 pinned for ``rel`` (a path under the weights folder) in ``SHA256SUMS``; None where none is."""
    for n, line in enumerate(SHA256SUMS.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](\S+)", line.strip())
        if match is None:
            raise WeightsError(f"{SHA256SUMS}, line {n}: {line!r} is not `<sha256>  <path under the weights folder>`")
        if match[2] == rel:
            return match[1]
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):  # streamed: a checkpoint is hundreds of MB
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(path: Path, rel: str, fetch: str) -> None:
    """Refuse ``path`` unless its sha256 is the one pinned for ``rel``; a file with no pin is not checked.

    ``fetch`` names the command(s) that download the official file (for the error). With ``M3S_TRUST_WEIGHTS=1`` a
    mismatch is a warning: the escape hatch for a different file on purpose.
    """
    expected = pinned_sha256(rel)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual == expected:
        return
    size = path.stat().st_size
    what = f"{path} ({size} bytes) has sha256 {actual}, not the {expected} pinned for {rel} in {SHA256SUMS}"
    if os.environ.get(TRUST_ENV) == "1":
        print(f"warning: {what}; loading it anyway ({TRUST_ENV}=1)")
        return
    raise WeightsError(
        f"{what}: a truncated, corrupted or altered download. Fetch the official file again with {fetch}; to load "
        f"a different file on purpose (your own fine-tuned weights), set {TRUST_ENV}=1 (see weights/README.md)."
    )


def load_weights(model: nn.Module, path: Path, ignorable_suffixes: tuple[str, ...] = ()) -> nn.Module:
    """Load ``path`` into ``model`` after ``check_state_dict``; every model key comes from the file."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(check_state_dict(model, state, str(path), ignorable_suffixes), strict=True)
    return model


def load_backbone(name: str, weights_dir: str | Path, smoke_random_weights: bool = False) -> nn.Module:
    """The backbone ``name`` with its official weights, in eval mode on the CPU.

    ``smoke_random_weights`` gives seeded random weights instead (the caller must mark its outputs as smoke).
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    if smoke_random_weights:
        return build_random(name)
    spec = BACKBONES[name]
    path = weights_path(name, weights_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} weights not found at {path}. Run `bash weights/download.sh {weights_dir}` (or download "
            f"{spec.url} to that path by hand; see weights/README.md). To test the pipeline without weights, pass "
            "--smoke_random_weights (random features, marked as smoke in the store)."
        )
    verify_weights(path, spec.file, f"`bash weights/download.sh {weights_dir}`")
    return load_weights(spec.build(), path, spec.ignorable_suffixes).eval()
