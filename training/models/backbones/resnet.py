"""ResNet backbone over torchvision's constructors, returning C2..C5.

Shapes: input [B, 3, H, W]; outputs C2..C5 of [B, Ci, H/si, W/si] with s = 4, 8, 16, 32 and
Ci = 64, 128, 256, 512 (depth 18/34) or 256, 512, 1024, 2048 (depth 50/101).

Parameter names are torchvision's ResNet names (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so an
ImageNet checkpoint loads as is and torchvision's detector keys ``backbone.body.*`` convert by
dropping ``body.``.

Normalisation (``norm``):
* ``"frozen_bn"``: ``torchvision.ops.FrozenBatchNorm2d`` everywhere (statistics and affine fixed).
* ``"bn"``: trainable ``BatchNorm2d``; the BN layers of frozen stages stay in eval mode (their
  running statistics are not updated) and have no gradients.
* ``"gn"``: ``GroupNorm(gn_groups, C)``.
``frozen_stages``: -1 nothing frozen, 0 the stem (conv1 + bn1), k the stem and stages 1..k.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Union

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from ..norms import GroupNorm2d
from .freezing import FrozenStagesBackbone

__all__ = ["ResNetBackbone", "PretrainedLoadError", "norm_layer_factory"]

_CONSTRUCTORS: Dict[int, Callable[..., nn.Module]] = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
}


class PretrainedLoadError(ValueError):
    """A pretrained backbone file is missing, unreadable, or not a matching ResNet checkpoint."""


def norm_layer_factory(norm: str, gn_groups: int = 32, eps: float = 1e-5) -> Callable[[int], nn.Module]:
    """A ``num_features -> module`` factory for ``norm`` in ("frozen_bn", "bn", "gn")."""
    if norm == "frozen_bn":
        return lambda c: FrozenBatchNorm2d(c, eps=eps)
    if norm == "bn":
        return lambda c: nn.BatchNorm2d(c, eps=eps)
    if norm == "gn":
        return lambda c: GroupNorm2d(gn_groups, c, eps=eps)
    raise ValueError(f"unknown norm '{norm}'; expected 'frozen_bn', 'bn' or 'gn'")


class ResNetBackbone(FrozenStagesBackbone):
    """ResNet-18/34/50/101 trunk (no avgpool / fc) producing [C2, C3, C4, C5]."""

    def __init__(
        self, *, depth: int = 50, frozen_stages: int = 1, norm: str = "frozen_bn", gn_groups: int = 32,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if depth not in _CONSTRUCTORS:
            raise ValueError(f"ResNetBackbone: depth {depth} not supported; choose one of {sorted(_CONSTRUCTORS)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"ResNetBackbone: frozen_stages must be in -1..4, got {frozen_stages}")
        net = _CONSTRUCTORS[depth](weights=None, norm_layer=norm_layer_factory(norm, gn_groups, norm_eps))
        self.depth = depth
        self.norm = norm
        self.frozen_stages = frozen_stages
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels: List[int] = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.strides: List[int] = [4, 8, 16, 32]
        self._freeze()

    def _frozen_modules(self) -> List[nn.Module]:
        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + stages[: self.frozen_stages]

    def forward(self, x: Tensor) -> List[Tensor]:
        """[B, 3, H, W] -> [C2, C3, C4, C5]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

    def load_pretrained(self, path: Union[str, os.PathLike]) -> Dict[str, List[str]]:
        """Load a torchvision ImageNet ResNet state dict (``.pth``) from a local file.

        ``fc.*`` keys are ignored; ``num_batches_tracked`` only matters for ``norm="bn"``.
        Returns ``{"missing": [...], "unexpected": [...]}`` (also printed when not empty).

        Raises:
            PretrainedLoadError: the file is missing or unreadable, is not a ResNet checkpoint
                (no ``conv1.weight`` / ``layer1.*``), or its shapes do not fit this depth/norm.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise PretrainedLoadError(f"{path}: pretrained backbone file not found")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
            raise PretrainedLoadError(f"{path}: cannot read as a torch checkpoint: {e}") from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise PretrainedLoadError(f"{path}: not a ResNet state dict (expected a dict of tensors)")
        if "conv1.weight" not in sd or not any(k.startswith("layer1.") for k in sd):
            sample = ", ".join(list(sd)[:5])
            raise PretrainedLoadError(
                f"{path}: not a torchvision ResNet checkpoint (no 'conv1.weight' / 'layer1.*' keys; "
                f"first keys: {sample})"
            )
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        own = self.state_dict()
        if self.norm != "bn":
            sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
        mismatched = [
            f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in sd.items()
            if k in own and own[k].shape != v.shape
        ]
        if mismatched:
            raise PretrainedLoadError(
                f"{path}: shapes do not fit a ResNet-{self.depth} ({len(mismatched)} mismatches, e.g. "
                + "; ".join(mismatched[:3])
                + ")"
            )
        missing = sorted(k for k in own if k not in sd)
        unexpected = sorted(k for k in sd if k not in own)
        weight_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if weight_missing and len(weight_missing) > len(own) // 2:
            raise PretrainedLoadError(
                f"{path}: does not fit a ResNet-{self.depth}: {len(weight_missing)} of {len(own)} "
                f"entries missing, e.g. {weight_missing[:3]}"
            )
        if unexpected and any(k.startswith("layer") for k in unexpected):
            raise PretrainedLoadError(
                f"{path}: has blocks a ResNet-{self.depth} does not (e.g. {unexpected[:3]}); wrong depth?"
            )
        self.load_state_dict(sd, strict=False)
        report = {"missing": missing, "unexpected": unexpected}
        if missing or unexpected:
            print(f"load_pretrained({path}): missing keys {missing}, unexpected keys {unexpected}")
        return report
