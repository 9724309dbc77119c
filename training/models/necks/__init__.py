"""Necks applied after the backbone, in order: FPN (and the Libra BFP)."""
from .fpn import FPN

__all__ = ["FPN"]
