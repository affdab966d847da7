"""The backbone definitions against the official checkpoint layouts, and the checked loading of those files.

No real weights here: "official layout" files are written by the tests, with random values, from the key/shape
manifests of the real files (``shared/reference/*.keys.tsv``) when that folder is present, else from the model
itself plus the SyncBN extras (the counts below, from the manifests, still pin the layout down).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from config import ROOT
from model.backbones import (
    BACKBONES,
    SYNC_BN_EXTRAS,
    WeightsError,
    build_random,
    check_state_dict,
    load_backbone,
    weights_path,
)

MANIFESTS = {"hrnetv2_w48": "hrnetv2_w48_encoder", "ip_csn_152": "ip_csn_152", "ir_csn_152": "ir_csn_152"}
# keys in the official file, of which SyncBN extras (3 per BN of HRNet) -- from the manifests
FILE_KEYS = {"hrnetv2_w48": (2745, 915), "ip_csn_152": (1232, 0), "ir_csn_152": (932, 0)}
BN_EPS = {"hrnetv2_w48": 1e-5, "ip_csn_152": 1e-3, "ir_csn_152": 1e-3}
NAMES = sorted(BACKBONES)


def _reference_dir() -> Path | None:
    for d in (os.environ.get("M3S_SHARED_DIR"), ROOT / "shared", ROOT.parent / "shared"):
        if d and (Path(d) / "reference").is_dir():
            return Path(d) / "reference"
    return None


REFERENCE = _reference_dir()
needs_manifest = pytest.mark.skipif(REFERENCE is None, reason="shared/reference manifests not found")


def _shape_str(t: torch.Tensor) -> str:
    return "scalar" if t.dim() == 0 else "x".join(map(str, t.shape))


def read_manifest(name: str) -> list[tuple[str, str, str]]:
    """(key, shape as '64x3x3x3' or 'scalar', dtype) rows of an official file's manifest."""
    lines = (REFERENCE / f"{MANIFESTS[name]}.keys.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "dtype"]
    return [tuple(line.split("\t")) for line in lines[1:]]


_MODELS: dict[str, nn.Module] = {}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Each backbone built once for the module (seeded random weights, eval mode); built on first use."""
    return _MODELS


def get(models: dict, name: str) -> nn.Module:
    if name not in models:
        models[name] = build_random(name)
    return models[name]


def official_state(model: nn.Module, name: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A random state dict in the official file's layout (SyncBN extras on every HRNet BN)."""
    if REFERENCE is not None:
        layout = [(k, s, d) for k, s, d in read_manifest(name)]
    else:
        layout = []
        for k, v in model.state_dict().items():
            layout.append((k, _shape_str(v), str(v.dtype).removeprefix("torch.")))
            if name == "hrnetv2_w48" and k.endswith(".num_batches_tracked"):
                prefix, c = k.rpartition(".")[0], model.state_dict()[k.replace("num_batches_tracked", "weight")]
                layout += [(f"{prefix}.{e}", _shape_str(c) if "tmp" in e else "1", "float32") for e in SYNC_BN_EXTRAS]
    state = {}
    for key, shape, dtype in layout:
        size = () if shape == "scalar" else tuple(int(n) for n in shape.split("x"))
        if dtype == "int64":
            state[key] = torch.randint(0, 1000, size, generator=gen)
        else:
            state[key] = torch.rand(size, generator=gen) + 0.1  # positive: valid running variances too
    return state


@needs_manifest
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_manifest(models, name):
    rows = read_manifest(name)
    official = [(k, s, d) for k, s, d in rows if k.rpartition(".")[2] not in SYNC_BN_EXTRAS]
    ours = [(k, _shape_str(v), str(v.dtype).removeprefix("torch.")) for k, v in get(models, name).state_dict().items()]
    assert ours == official  # same keys, shapes, dtypes, and order
    assert (len(rows), len(rows) - len(official)) == FILE_KEYS[name]
    numel = [1 if s == "scalar" else int(torch.tensor([int(n) for n in s.split("x")]).prod()) for _, s, _ in rows]
    n_bytes = sum(n * (8 if d == "int64" else 4) for n, (_, _, d) in zip(numel, rows, strict=True))
    assert n_bytes == BACKBONES[name].min_bytes  # the size floor download.sh checks


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_and_bn_eps(models, name):
    model = get(models, name)
    assert sum(p.numel() for p in model.parameters()) == BACKBONES[name].n_params  # the SPEC's counts
    n_extras = FILE_KEYS[name][1]
    assert len(model.state_dict()) + n_extras == FILE_KEYS[name][0]
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.eps == BN_EPS[name] for m in bns)
    assert 3 * len(bns) == n_extras or n_extras == 0


@pytest.mark.parametrize("name", NAMES)
def test_official_file_loads_and_reproduces_values(models, name, tmp_path, pin_weights):
    gen = torch.Generator().manual_seed(1)
    state = official_state(get(models, name), name, gen)
    path = weights_path(name, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    pin_weights(BACKBONES[name].file, path)  # random values: not the digest of the official file
    loaded = load_backbone(name, tmp_path).state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    ignored = set(state) - set(loaded)
    assert all(k.rpartition(".")[2] in SYNC_BN_EXTRAS for k in ignored) and len(ignored) == FILE_KEYS[name][1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("defect", ["missing", "misshapen", "unexpected"])
def test_bad_state_dict_is_refused_naming_the_key(models, name, defect):
    model = get(models, name)
    state = dict(model.state_dict())
    key = [k for k in state if k.endswith("running_var")][7]
    if defect == "missing":
        del state[key]
    elif defect == "misshapen":
        state[key] = torch.ones(state[key].numel() + 1)
    else:
        key = "head.weight"
        state[key] = torch.zeros(3)
    with pytest.raises(WeightsError, match=rf"{defect}.*{key.replace('.', '[.]')}"):
        check_state_dict(model, state, "file.pth", BACKBONES[name].ignorable_suffixes)


def test_only_batch_norm_sync_extras_are_ignored(models):
    hrnet = get(models, "hrnetv2_w48")
    state = dict(hrnet.state_dict())
    assert set(check_state_dict(hrnet, state, "f", SYNC_BN_EXTRAS)) == set(state)  # extras are optional
    with pytest.raises(WeightsError, match=r"unexpected.*conv1[.]_tmp_running_mean"):  # conv1 is not a BN
        check_state_dict(hrnet, state | {"conv1._tmp_running_mean": torch.zeros(64)}, "f", SYNC_BN_EXTRAS)
    csn = get(models, "ir_csn_152")  # CSN loads strictly: SyncBN extras are unexpected there
    with pytest.raises(WeightsError, match=r"unexpected.*stem[.]1[.]_running_iter"):
        check_state_dict(csn, dict(csn.state_dict()) | {"stem.1._running_iter": torch.zeros(1)}, "f")


def test_not_a_state_dict_is_refused(models, tmp_path):
    path = weights_path("ir_csn_152", tmp_path)
    torch.save({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(WeightsError, match="plain state dict"):
        load_backbone("ir_csn_152", tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_missing_file_names_path_and_script(name, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_backbone(name, tmp_path)
    assert str(weights_path(name, tmp_path)) in str(err.value) and "weights/download.sh" in str(err.value)


def test_smoke_weights_are_seeded():
    a, b = build_random("ir_csn_152").state_dict(), build_random("ir_csn_152").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(models, name):
    model = get(models, name)
    with torch.inference_mode():
        if name.startswith("hrnet"):
            x = torch.randn(1, 3, 64, 64)
            assert model(x).shape == (1, 720, 16, 16)  # 1/4 of the input
            feats = model.features(x)
        else:
            x = torch.randn(1, 3, 8, 64, 64)
            assert model(x).shape == (1, 400)  # Kinetics logits
            feats = model.features(x)
    assert feats.shape == (1, BACKBONES[name].feature_dim) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and feats.abs().sum() > 0


def test_hrnet_output_is_bilinear_concat_of_branches(models):
    model = get(models, "hrnetv2_w48")
    branches = []
    handle = model.stage4.register_forward_hook(lambda mod, inp, out: branches.extend(out))
    try:
        with torch.inference_mode():
            out = model(torch.randn(1, 3, 64, 96))
    finally:
        handle.remove()
    assert [b.shape[1] for b in branches] == [48, 96, 192, 384]
    assert [tuple(b.shape[2:]) for b in branches] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    size = branches[0].shape[2:]

    def concat(align_corners: bool) -> torch.Tensor:
        ups = [F.interpolate(b, size, mode="bilinear", align_corners=align_corners) for b in branches[1:]]
        return torch.cat([branches[0]] + ups, dim=1)

    assert torch.equal(out, concat(False))
    assert not torch.allclose(out, concat(True))


def test_download_script_and_readme_agree_with_the_registry():
    script = (ROOT / "weights" / "download.sh").read_text()
    readme = (ROOT / "weights" / "README.md").read_text()
    entries = {}
    for line in script.splitlines():
        if line.strip().startswith('"') and line.count("|") == 3 and not line.strip().startswith('"clip_'):
            name, rel, url, size = line.strip().strip('"').split("|")
            entries[rel] = (url, int(size))
    assert entries == {b.file: (b.url, b.min_bytes) for b in BACKBONES.values()}
    assert all(b.file in readme and b.url in readme for b in BACKBONES.values())
