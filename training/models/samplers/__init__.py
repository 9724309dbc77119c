"""Samplers: which assigned candidates enter the loss."""
from .base import BaseSampler, SamplingResult
from .random import RandomSampler

__all__ = ["BaseSampler", "SamplingResult", "RandomSampler"]
