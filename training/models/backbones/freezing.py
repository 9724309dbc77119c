"""Frozen backbone stages: no gradients, and BatchNorm statistics that stay fixed in train mode."""
from __future__ import annotations

from typing import List

from torch import nn

__all__ = ["FrozenStagesBackbone"]


class FrozenStagesBackbone(nn.Module):
    """Base of the backbones with ``frozen_stages``.

    A subclass lists the modules to freeze in ``_frozen_modules`` and calls ``_freeze()`` once they
    exist; ``train(True)`` then keeps their BatchNorm layers in eval mode.
    """

    def _frozen_modules(self) -> List[nn.Module]:
        raise NotImplementedError

    def _freeze(self) -> None:
        """Turn off ``requires_grad`` of every parameter of the frozen modules."""
        for m in self._frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenStagesBackbone":
        """As ``nn.Module.train``, but BatchNorm layers of frozen stages stay in eval mode."""
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                for sub in m.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()
        return self
