"""Necks applied after the backbone, in order: FPN, then the Libra Balanced Feature Pyramid."""
from .bfp import BalancedFeaturePyramid
from .fpn import FPN
from .non_local import NonLocal2d

__all__ = ["FPN", "BalancedFeaturePyramid", "NonLocal2d"]
