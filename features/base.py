"""The extractor contract and the registry of feature families.

A *family* is one store file per dataset (``raw``, ``hrnet``, ``csn``, ...). An extractor turns decoded clips into
one vector per feature name; it is stateless. Anything fitted on the training split (HOG PCA, normalisation) is a
fitted transform kept in the store as plain arrays + JSON, never inside the extractor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from config import GenConfig


@dataclass(frozen=True)
class FrameSpec:
    """How a family wants its clips decoded: ``n_frames`` evenly spaced frames resized to ``size`` (H, W).

    ``crop`` is ``"squash"`` (resize the full frame, the Memento10k authors' way) or ``"center"`` (resize the short
    side then centre-crop, the M3-S VideoMem loader's way).
    """

    n_frames: int = 45
    size: tuple[int, int] = (256, 256)
    crop: str = "squash"


@dataclass
class Clip:
    """One decoded video: ``frames`` is RGB uint8 ``(T, H, W, 3)``; ``path`` is the original file (for its size)."""

    id: str
    path: Path | None
    frames: np.ndarray
    extras: dict = field(default_factory=dict)


class Extractor(ABC):
    """Base class of every family. Subclasses set ``family`` and ``frame_spec`` and implement ``extract``."""

    family: ClassVar[str]
    frame_spec: ClassVar[FrameSpec] = FrameSpec()

    def __init__(self, cfg: GenConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device

    #: True when the outputs are not real features (random backbone weights): recorded in the store metadata.
    smoke: bool = False

    def store_name(self) -> str:
        """File name (without .h5) of this family's store; a variant that changes the numbers gets its own file."""
        return self.family

    def settings(self) -> dict:
        """Everything that changes the numbers; written into the store metadata and checked on every append."""
        return {}

    @abstractmethod
    def extract(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        """One ``{feature_name: 1-D float32 vector}`` per clip, in order. Raise to fail the batch."""

    def fit(self, store, train_ids: list[str] | None) -> None:
        """Fit transforms on the training split once extraction is complete (HOG PCA...). Default: nothing."""
        return None


EXTRACTORS: dict[str, type[Extractor]] = {}


def register(cls: type[Extractor]) -> type[Extractor]:
    """Class decorator: ``@register`` adds an extractor to ``EXTRACTORS`` under its ``family``."""
    EXTRACTORS[cls.family] = cls
    return cls
