"""Argument checks of the Libra samplers' stand-alone call form ``sample(values, inds, num_expected)``.

Shapes: ``values`` [N] one entry per candidate (max IoUs, or assigned gt indices); ``inds`` [M]
indices into the N candidates (the negatives, or the positives) to choose from.
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

__all__ = ["check_sample_args"]


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)} ({x.dtype})" if isinstance(x, Tensor) else type(x).__name__


def check_sample_args(where: str, values: Tensor, values_name: str, inds: Tensor, inds_name: str, num_expected: int) -> None:
    """Raise ValueError naming ``where`` and the argument unless ``values`` is a 1-D tensor [N],
    ``inds`` a 1-D integer tensor of distinct indices in [0, N) and ``num_expected`` an int >= 0."""
    if not isinstance(values, Tensor) or values.dim() != 1:
        raise ValueError(f"{where}: {values_name} must be a 1-D tensor [N], got {_describe(values)}")
    if not isinstance(inds, Tensor) or inds.dim() != 1 or inds.is_floating_point() or inds.dtype == torch.bool:
        raise ValueError(f"{where}: {inds_name} must be a 1-D integer tensor of indices, got {_describe(inds)}")
    if isinstance(num_expected, bool) or not isinstance(num_expected, numbers.Integral) or num_expected < 0:
        raise ValueError(f"{where}: num_expected must be an integer >= 0, got {num_expected!r}")
    if inds.numel():
        if int(inds.min()) < 0 or int(inds.max()) >= values.numel():
            raise ValueError(
                f"{where}: {inds_name} must index the {values.numel()} candidates of {values_name}, "
                f"got values in [{int(inds.min())}, {int(inds.max())}]"
            )
        if torch.unique(inds).numel() != inds.numel():
            raise ValueError(f"{where}: {inds_name} holds duplicate indices")
