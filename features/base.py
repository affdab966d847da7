"""The extractor contract and the registry of feature families.

A *family* is one store file per dataset (``raw``, ``hrnet``, ``csn``, ...). An extractor turns decoded clips into
one vector per feature name; it is stateless. Anything fitted on the training split (HOG PCA, normalisation) is a
fitted transform kept in the store as plain arrays + JSON, never inside the extractor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from features.store import FeatureStore


@dataclass(frozen=True)
class FrameSpec:
    """How a family wants its clips decoded: ``n_frames`` evenly spaced frames resized to ``size`` (H, W).

    ``crop`` is ``"squash"`` (resize the full frame, the Memento10k authors' way) or ``"center"`` (resize the short
    side then centre-crop, the M3-S VideoMem loader's way). ``resample`` is ``"opencv"`` (``INTER_AREA`` down,
    ``INTER_LINEAR`` up) or ``"pil-bilinear"`` (Pillow's anti-aliased bilinear: what torchvision's ``Resize`` does to a
    PIL image, for a family that must frame images exactly as its original preprocessing did, e.g. resmem).
    """

    n_frames: int = 45
    size: tuple[int, int] = (256, 256)
    crop: str = "squash"
    resample: str = "opencv"


@dataclass
class Clip:
    """One decoded video: ``frames`` is RGB uint8 ``(T, H, W, 3)``; ``path`` is the original file (for its size)."""

    id: str
    path: Path | None
    frames: np.ndarray
    extras: dict = field(default_factory=dict)


def fitting_videos(records: list) -> list:
    """The videos a dataset's fitted transforms (HOG PCA, similarity) are fitted on: its train split; a dataset
    without one (a folder of your own videos) is its own corpus, all its videos."""
    return [r for r in records if r.split == "train"] or list(records)


class Extractor(ABC):
    """Base class of every family. Subclasses set ``family`` and ``frame_spec`` and implement ``extract``.

    ``cfg`` is the ``gen_features.py`` config (``config.GenConfig``): an extractor reads its own tier's options from
    it (``hrnet_frames``, ``csn_arch``...). Which store file the features go to is the tier's business
    (``tiers``), not the extractor's. The optional hooks below have working defaults; override what applies.
    """

    family: ClassVar[str]
    frame_spec: ClassVar[FrameSpec] = FrameSpec()
    #: pure CPU work: the extraction loop runs ``extract`` inside its decoding worker processes (the raw tier)
    cpu_extract: ClassVar[bool] = False
    #: decode with the dataset's crop (VideoMem: centre crop); False keeps ``frame_spec.crop`` on every dataset
    dataset_crop: ClassVar[bool] = True
    #: a pre-pass over the training videos fits a transform before extraction (``prepare_item`` / ``prepare_fit``)
    has_prepass: ClassVar[bool] = False
    #: an image file (LaMem's .jpg) is read as a one-frame clip instead of being refused as "not a video"
    accepts_images: ClassVar[bool] = False

    def __init__(self, cfg: Any, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device

    #: True when the outputs are not real features (random backbone weights): recorded in the store metadata.
    smoke: bool = False

    def settings(self) -> dict:
        """Everything that changes the numbers; written into the store metadata and checked on every append."""
        return {}

    @abstractmethod
    def extract(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        """One ``{feature_name: 1-D float32 vector}`` per clip, in order. Raise to fail the batch."""

    def fit(self, store: FeatureStore, train_ids: list[str] | None) -> None:
        """Fit transforms on the training split once extraction is complete. Default: nothing."""
        return None

    # the pre-pass (only called when ``has_prepass``) ---------------------------------------------------------
    def load_prepared(self, store: FeatureStore, train_ids: list[str] | None) -> bool:
        """Load the pre-pass transform from ``store`` if it holds one fitted on ``train_ids`` (None: adopted from
        another dataset with ``--fit_on``, taken as it is); False when there is none yet."""
        return True

    def prepare_all_frames(self, n_videos: int) -> bool:
        """Whether the pre-pass over ``n_videos`` training videos decodes every sampled frame of each (True) or
        only the first (False, the default: cheap)."""
        return False

    def prepare_item(self, clip: Clip) -> np.ndarray:
        """Per training video, in the decoding workers: what the pre-pass fit needs of it."""
        raise TypeError(f"{type(self).__name__} has no pre-pass")

    def prepare_fit(self, store: FeatureStore, train_ids: list[str], items: dict[str, np.ndarray], meta: dict) -> None:
        """Fit the pre-pass transform on ``{train id: prepare_item(...)}`` and save it in ``store``."""
        raise TypeError(f"{type(self).__name__} has no pre-pass")
