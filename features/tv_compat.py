"""Importing torchvision beside a CPU torch (``open_clip`` and ``transformers`` import it).

The registry's torchvision 0.28.0 is a CUDA build: its ``_C.so`` needs ``libtorch_cuda``, so on our CPU torch its
C++ operators do not load and ``import torchvision`` fails while registering fake kernels for ``nms`` and ``qnms``
("operator torchvision::nms does not exist"). Defining the schemas of those two operators first lets the import go
through (``../shared/ENV.md``, tested fix). Nothing m3s uses needs the missing C++ kernels: the CLIP tier only runs
the model, and its preprocessing is ours. Where torchvision's ``_C`` loads (a matching CUDA torch), this is a no-op.
"""

from __future__ import annotations

import importlib.util
import os

import torch

_FRAGMENT: list[torch.library.Library] = []  # kept alive: dropping the Library object would undefine the ops


def ensure_torchvision_importable() -> bool:
    """Call before the first ``import torchvision`` (directly or through open_clip / sentence-transformers).

    Returns True when torchvision's C++ operators load, False when the two schemas were defined instead (or
    torchvision is not installed, in which case there is nothing to do)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    library = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
    try:
        torch.ops.load_library(library)
        return True
    except (OSError, ImportError, RuntimeError):
        if not _FRAGMENT:
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _FRAGMENT.append(lib)
        return False
