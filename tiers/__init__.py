"""The tier registry: every module of the model, in the model's fixed input order.

Adding a tier = one file in this package (a ``Tier`` subclass, see ``tiers/base.py``) + one line in ``BUILTIN``
below; the tests parametrised over ``TIERS`` then cover it. Tiers that live outside this repository are named in
``$M3S_TIERS`` (comma-separated ``module`` or ``module:attribute``, importable from ``PYTHONPATH``; the attribute,
default ``TIER``, is a ``Tier`` instance): they come after the built-in tiers, before similarity (which may use
their features as spaces) and imported features. ``config.py`` builds its flags from this registry, so every
registered tier has its ``--use_<name>``.
"""

from __future__ import annotations

import importlib
import os

from core.io import ConfigError
from tiers.base import Option, Source, Tier
from tiers.clip import CLIPTier
from tiers.csn import CSNTier
from tiers.hrnet import HRNetTier
from tiers.imported import ImportedTier
from tiers.raw import RawTier
from tiers.resmem import ResMemTier
from tiers.similarity import SimilarityTier
from tiers.text import TextTier

__all__ = ["TIERS", "Option", "Source", "Tier", "module_tiers", "owner", "sources"]

BUILTIN: tuple[Tier, ...] = (RawTier(), HRNetTier(), CSNTier(), CLIPTier(), TextTier(), ResMemTier())
# after every tier whose features it may use as a space (plugins included), so gen_features computes it last
SPACE_USERS: tuple[Tier, ...] = (SimilarityTier(),)
LAST: tuple[Tier, ...] = (ImportedTier(),)  # imported features come after every named tier


def _plugins() -> list[Tier]:
    out = []
    for spec in filter(None, (s.strip() for s in os.environ.get("M3S_TIERS", "").split(","))):
        module, _, attr = spec.partition(":")
        try:
            tier = getattr(importlib.import_module(module), attr or "TIER")
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"$M3S_TIERS names {spec!r}, which does not load: {err}") from err
        if not isinstance(tier, Tier):
            raise ConfigError(f"$M3S_TIERS: {spec} is a {type(tier).__name__}, not a tiers.base.Tier instance")
        out.append(tier)
    return out


def _registry() -> dict[str, Tier]:
    registry: dict[str, Tier] = {}
    for tier in (*BUILTIN, *_plugins(), *SPACE_USERS, *LAST):
        if tier.name in registry:
            raise ConfigError(f"two tiers are named {tier.name!r}")
        registry[tier.name] = tier
    for tier in registry.values():
        tier.registry = registry
    return registry


TIERS: dict[str, Tier] = _registry()


def module_tiers(cfg: object) -> dict[str, Tier]:
    """``{module: its tier}`` for the modules ``cfg`` selects, in the model's input order."""
    return {module: tier for tier in TIERS.values() for module in tier.modules(cfg)}


def sources(cfg: object, stores: dict | None = None) -> dict[str, list[Source]]:
    """``{module: [(store, feature), ...]}`` in input order (see ``Tier.sources`` for what ``stores`` resolves)."""
    return {module: tier.sources(cfg, module, stores) for module, tier in module_tiers(cfg).items()}


def owner(store: str) -> Tier | None:
    """The tier a store name belongs to (None: a free name, e.g. for imported features)."""
    return next((t for t in TIERS.values() if t.owns(store)), None)
