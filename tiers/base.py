"""The tier contract. A tier is one module of the model (M3-S's raw, hrnet, csn, similarity; imported features; the
tiers still to come) and declares everything the rest of m3s would otherwise re-derive:

- its switch ``--use_<name>`` (``switch``) and its own options (``options``: flags of train.py / evaluate.py, and of
  gen_features.py for those marked ``gen``), from which ``config.py`` builds its typed configs;
- the feature store(s) it reads given a config (``stores``, ``sources``), and which store names are its own
  (``owns``);
- how its features are computed: its extractor class (``extractor``, run over videos by ``gen_features.py``), or
  ``compute`` for a tier derived from other stores (similarity); and the exact ``gen_features.py`` command that
  makes a missing store (``gen_command``);
- its normalisation (``normalize``: the option that standardises it with train-split statistics) and the fitted
  transforms its stores carry (``transforms``);
- the similarity spaces it offers (``spaces``), with the DBSCAN ``eps`` tuned for them.

Its dims are data: they come from the store metadata, never from the tier. See ``tiers/__init__.py`` for the
registry and README "Extending m3s" for a worked example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from features.base import Extractor
    from features.store import StoredFeatures

Source = tuple[str, str]  # (store name, feature name)


@dataclass(frozen=True)
class Option:
    """One config field a tier adds: its flag and YAML key is the option's name."""

    type: Any  # bool, int, float, str, list[str], list[int]
    default: Any
    help: str
    choices: tuple | None = None
    gen: bool = False  # gen_features.py takes it too: it changes how the tier's store is computed
    train: bool = True  # train.py / evaluate.py take it (False: an extraction-only option)


class Tier:
    """One module of the model. Subclasses set ``name`` and what applies of the class attributes below."""

    name: ClassVar[str]
    help: ClassVar[str] = ""  # of the --use_<name> switch
    has_switch: ClassVar[bool] = True  # False: modules chosen otherwise (imported features: --extra_features)
    extractor: ClassVar[type[Extractor] | None] = None  # computes its store from videos; None: derived or imported
    derived: ClassVar[bool] = False  # computed by ``compute`` from other tiers' stores, after the video tiers
    normalize: ClassVar[str | None] = None  # name of the boolean option that standardises it on train statistics
    #: fitted transforms its store carries (raw: the HOG PCA); a checkpoint's provenance records their digests, and
    #: features made with another fit (another basis) are refused at evaluation
    transforms: ClassVar[tuple[str, ...]] = ()
    dbscan_eps: ClassVar[float | None] = None  # DBSCAN eps for its similarity spaces (the reference's, per space)
    #: every registered tier, set by the registry (``tiers/__init__.py``): for tiers built on the others (similarity)
    registry: dict[str, Tier]

    def options(self, registry: dict[str, Tier]) -> dict[str, Option]:
        """Its own config fields (``registry`` is every tier, for options whose choices depend on the others)."""
        return {}

    # ---------------------------------------------------------------- selection
    @property
    def switch(self) -> str:
        return f"use_{self.name}"

    def modules(self, cfg: Any) -> list[str]:
        """The model modules this tier contributes under ``cfg`` (one, named after the tier, when switched on)."""
        return [self.name] if self.has_switch and getattr(cfg, self.switch) else []

    @property
    def computed(self) -> bool:
        """Whether ``gen_features.py --features <name>`` computes it (imported features are imported instead)."""
        return self.extractor is not None or self.derived

    def normalized(self, cfg: Any) -> bool:
        return bool(self.normalize and getattr(cfg, self.normalize))

    # ---------------------------------------------------------------- stores
    def store(self, cfg: Any, **options: Any) -> str:
        """The store (file name without ``.h5``) the extractor writes under ``cfg``; ``options`` override ``cfg``
        values (e.g. ``csn_arch`` for a similarity space). Default: the tier's name."""
        return self.name

    def owns(self, store: str) -> bool:
        """Whether a store of this name belongs to this tier (imports may not take such names)."""
        return store == self.name

    def sources(self, cfg: Any, module: str, stores: dict[str, StoredFeatures] | None = None) -> list[Source]:
        """``[(store, feature), ...]`` of one module, in input order. Without ``stores`` (before they are read) the
        list may be partial: only the store names are certain. Default: every feature of ``store(cfg)``."""
        name = self.store(cfg)
        return [(name, f) for f in (sorted(stores[name].features) if stores else [""])]

    def gen_options(self, cfg: Any, store: str) -> dict[str, Any]:
        """The ``gen_features.py`` options that make ``store`` (beyond ``--dataset`` and ``--features``)."""
        return {}

    def gen_command(self, cfg: Any, store: str) -> str:
        """The exact command that computes a missing store of this tier."""
        flags = "".join(
            f" --{k} {' '.join(map(str, v)) if isinstance(v, list | tuple) else v}"
            for k, v in self.gen_options(cfg, store).items()
        )
        return f"python gen_features.py --dataset {cfg.dataset} --features {self.name}{flags}"

    def backbone(self, cfg: Any) -> str | None:
        """The ``model.backbones.BACKBONES`` network computing this tier under ``cfg``, for end-to-end training
        (None: the tier is pre-computed there, read from its store)."""
        return None

    # ---------------------------------------------------------------- similarity spaces
    def fitted_in_use(self, cfg: Any, transforms: list[str]) -> list[str]:
        """Of ``transforms``, fitted on a dataset's train split and carried by this tier's store, those the features
        ``cfg`` selects depend on (``--folds`` refuses them: they have seen the validation folds' videos)."""
        return list(transforms)

    def spaces(self) -> tuple[str, ...]:
        """Names of the similarity feature spaces this tier offers (``--similarity_features`` choices)."""
        return ()

    def space(self, cfg: Any, space: str) -> tuple[str, str, dict[str, Any]]:
        """``(store, feature, gen options)`` of one of its spaces under ``cfg``."""
        raise KeyError(space)

    # ---------------------------------------------------------------- derived tiers
    def compute(self, cfg: Any, records: list | None = None) -> list[str]:
        """Compute the stores of a tier without an extractor from other stores (similarity); returns their paths."""
        raise TypeError(f"the {self.name} tier is not computed by gen_features.py --features {self.name}")
