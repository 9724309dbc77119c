"""Backbones: torchvision ResNets and a small from-scratch network; both return [C2, C3, C4, C5]."""
from .resnet import PretrainedLoadError, ResNetBackbone
from .tiny import TinyBackbone

__all__ = ["ResNetBackbone", "TinyBackbone", "PretrainedLoadError"]
