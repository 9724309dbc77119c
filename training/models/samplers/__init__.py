"""Samplers: which assigned candidates enter the loss.

``RandomSampler`` (baselines, the Libra RPN with ``neg_pos_ub=5``); the Libra R-CNN stage's
``CombinedSampler(pos_sampler=InstanceBalancedPosSampler(), neg_sampler=IoUBalancedNegSampler())``.
``training.models.build.build_sampler`` turns ``sampler.kind`` into one of these.
"""
from .base import BaseSampler, SamplingResult
from .combined import CombinedSampler
from .instance_balanced import InstanceBalancedPosSampler
from .iou_balanced import BINNINGS, IoUBalancedNegSampler
from .random import RandomSampler

__all__ = [
    "BaseSampler",
    "SamplingResult",
    "RandomSampler",
    "CombinedSampler",
    "InstanceBalancedPosSampler",
    "IoUBalancedNegSampler",
    "BINNINGS",
]
