"""Box-regression losses sharing one call signature (see ``regression``): L1, smooth L1, balanced L1."""
from .balanced_l1 import BalancedL1Loss, balanced_l1_elementwise, balanced_l1_loss
from .regression import ElementwiseLoss, L1Loss, SmoothL1Loss, weight_reduce_loss

__all__ = [
    "BalancedL1Loss",
    "balanced_l1_loss",
    "balanced_l1_elementwise",
    "ElementwiseLoss",
    "L1Loss",
    "SmoothL1Loss",
    "weight_reduce_loss",
]
