"""The M3-S head: an MLP over the concatenation of any non-empty set of modules."""

from __future__ import annotations

import torch
from torch import nn


class ModularMLP(nn.Module):
    """``in_dim -> hidden... -> 1``: each hidden layer Linear then Mish, the output Linear then sigmoid.

    ``dims`` maps each module to its input width, in input order (the order of the feature table's columns);
    the model takes the modules already concatenated, ``x`` of shape (B, sum(dims)), and returns (B,) in [0, 1].
    """

    def __init__(self, dims: dict[str, int], hidden: tuple[int, ...] | list[int] = (512, 64)) -> None:
        super().__init__()
        if not dims or any(d < 1 for d in dims.values()):
            raise ValueError(f"ModularMLP needs at least one module with a positive width, got {dims}")
        self.dims = dict(dims)
        widths = [sum(dims.values()), *hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out), nn.Mish()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)

    @property
    def in_dim(self) -> int:
        return sum(self.dims.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.squash(self.net(x)).squeeze(-1)  # (B, in_dim) -> (B,)

    @staticmethod
    def squash(logits: torch.Tensor) -> torch.Tensor:
        """The output non-linearity: scores in [0, 1] (a grid's stacked runs apply this same function)."""
        return torch.sigmoid(logits)

    @staticmethod
    def concat(features: dict[str, torch.Tensor], dims: dict[str, int]) -> torch.Tensor:
        """Concatenate per-module tensors (B, D_m) in the order of ``dims``, checking every width."""
        for module, dim in dims.items():
            if module not in features:
                raise KeyError(f"module {module!r} missing; have {sorted(features)}")
            if features[module].shape[-1] != dim:
                raise ValueError(f"module {module!r} has width {features[module].shape[-1]}, expected {dim}")
        return torch.cat([features[m] for m in dims], dim=-1)
