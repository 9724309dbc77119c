"""Second-stage heads: Faster R-CNN's RoI box head."""
from .roi_head import BoxPredictor, MMDetLevelMapper, MultiLevelRoIAlign, RoIHead, TorchvisionLevelMapper, TwoFCHead

__all__ = ["RoIHead", "MultiLevelRoIAlign", "TwoFCHead", "BoxPredictor", "TorchvisionLevelMapper", "MMDetLevelMapper"]
