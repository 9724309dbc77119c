"""Objective-level balance (Libra R-CNN, Sec. 3.3): the gradient each loss sends into the features.

Every head reads the same features (the last neck's outputs: the FPN, or the BFP after it), so the
norm of d(w_k L_k)/d(features) shows how strongly loss k (classification vs box regression, RPN vs
R-CNN) drives the shared representation; Balanced L1 raises the regression share. With L losses
and feature maps F_1..F_n [B, C, Hi, Wi]:

    grad_norm/<loss k> = || (d (w_k L_k) / d F_1, ..., d (w_k L_k) / d F_n) ||_2

where w_k is the model's loss weight (the gradient the optimiser actually sees). Each norm is one
``torch.autograd.grad`` through the heads only (not the backbone), with ``retain_graph=True`` so the
training step's ``backward()`` still works afterwards; parameter ``.grad`` buffers are untouched.

Use in a training step (before ``backward``)::

    tap = FeatureTap(shared_features_module(model))      # once, after building the model
    ...
    tap.arm()                                            # on logging iterations only
    losses = model(images, targets)                      # weighted, as the trainer has them
    norms = loss_grad_norms(model, losses, tap.take(), losses_are_weighted=True)
    total.backward()
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["FeatureTap", "shared_features_module", "loss_grad_norms", "grad_norm_records"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The detector inside a DistributedDataParallel / DataParallel wrapper."""
    return getattr(model, "module", model)


def shared_features_module(model: nn.Module) -> nn.Module:
    """The module whose outputs every head reads: the detector's last neck (FPN or BFP)."""
    necks = getattr(_unwrap(model), "necks", None)
    if not isinstance(necks, nn.ModuleList) or len(necks) == 0:
        raise ValueError(
            f"shared_features_module: {type(_unwrap(model)).__name__} has no 'necks' ModuleList; "
            "pass the shared-feature module to FeatureTap yourself"
        )
    return necks[-1]


class FeatureTap:
    """Keeps the outputs of ``module``'s next forward after :meth:`arm` (a forward hook).

    Only an armed tap holds tensors, so between logging iterations it keeps nothing alive.
    """

    def __init__(self, module: nn.Module) -> None:
        self._armed = False
        self._feats: Optional[List[Tensor]] = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: object, output: object) -> None:
        if not self._armed:
            return
        self._armed = False
        if isinstance(output, Tensor):
            self._feats = [output]
        elif isinstance(output, Mapping):
            self._feats = list(output.values())
        else:
            self._feats = list(output)  # type: ignore[call-overload]

    def arm(self) -> None:
        """Capture the outputs of the next forward of the module."""
        self._armed = True
        self._feats = None

    def take(self) -> List[Tensor]:
        """The captured feature maps (and forget them)."""
        if self._feats is None:
            raise RuntimeError("FeatureTap.take: nothing captured; call arm() before the forward pass")
        feats, self._feats = self._feats, None
        return feats

    def remove(self) -> None:
        """Detach the hook from the module."""
        self._handle.remove()
        self._feats = None


@torch.no_grad()
def _norm(grads: Sequence[Optional[Tensor]]) -> float:
    total = sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
    return math.sqrt(total)


def loss_grad_norms(
    model: nn.Module,
    losses: Mapping[str, Tensor],
    feats: Sequence[Tensor],
    *,
    losses_are_weighted: bool = False,
    scale: float = 1.0,
) -> Dict[str, float]:
    """L2 norm of each loss component's gradient into ``feats`` (see the module docstring).

    Args:
        model: the detector (or its DDP wrapper); its ``loss_weights`` weight unweighted losses.
        losses: name -> scalar loss, still attached to the graph (before ``backward``).
        feats: the shared feature maps the losses were computed from (e.g. ``FeatureTap.take()``).
        losses_are_weighted: True when ``losses`` already include the weights (``model(...)`` in
            train mode); False for ``model.compute_losses(...)``, whose norms are then scaled by
            |w| (the gradient of w L is w times that of L).
        scale: differentiate ``scale * loss`` and divide the norm by ``scale``: under fp16 autocast
            pass ``GradScaler.get_scale()`` so small gradients do not underflow.

    Returns:
        ``{loss name: norm}``; 0.0 for a loss that does not depend on ``feats``, NaN when the
        gradient is not finite (e.g. an fp16 overflow).
    """
    weights = getattr(_unwrap(model), "loss_weights", {}) or {}
    feats = [f for f in feats if isinstance(f, Tensor) and f.requires_grad]
    norms: Dict[str, float] = {}
    for name, loss in losses.items():
        if not feats or not loss.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(loss * scale, feats, retain_graph=True, allow_unused=True)
        norm = _norm(grads) / scale
        if not losses_are_weighted:
            norm *= abs(float(weights.get(name, 1.0)))
        norms[name] = norm if math.isfinite(norm) else float("nan")
    return norms


def grad_norm_records(norms: Mapping[str, float]) -> Dict[str, float]:
    """``{loss: norm}`` -> ``{"grad_norm/<loss>": norm}``, the metric names the trainer logs."""
    return {f"grad_norm/{name}": float(v) for name, v in norms.items()}
