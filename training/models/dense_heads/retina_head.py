"""RetinaNet head (Lin et al. 2017): shared 4-conv towers, focal loss, per-level top-k + NMS.

Shapes: B images, L levels, level i of Hi x Wi cells, A anchors per cell, K classes (no
background: a sigmoid per class), C feature channels. Anchors are location-major then anchor
(``AnchorGenerator`` order), so a level's flat index is ``(h * Wi + w) * A + a``; the conv outputs
use the channel layout ``a * K + k`` (class) and ``a * 4 + j`` (box), as torchvision and
mmdetection do.

Parameter names map one-to-one onto torchvision's ``RetinaNetHead``:
``cls_convs.i`` <- ``classification_head.conv.i.0``, ``cls_logits`` <- ``classification_head.cls_logits``,
``reg_convs.i`` <- ``regression_head.conv.i.0``, ``bbox_reg`` <- ``regression_head.bbox_reg``.

Loss normalisation follows torchvision: per image, the focal loss over non-ignored anchors and the
box loss over positives are each divided by ``max(1, positives of that image)``; the per-image
values are then averaged over the batch. (mmdetection divides by the positives of the whole batch
instead; the two agree when every image has the same number of positives.)
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ..assigner import IGNORED, MaxIoUAssigner
from ..box_coder import DeltaXYWHBoxCoder
from ..losses.regression import L1Loss
from ..ops import INVALID_SCORE, Detections, clip_boxes, detections_from_index, gather_rows, nms_topk, topk_padded, trim_detections
from .rpn_head import BoxLoss, flatten_level_outputs

__all__ = ["RetinaHead"]


class RetinaHead(nn.Module):
    """Classification and box-regression towers shared over the pyramid levels.

    Args:
        num_classes: K (foreground classes; labels 0..K-1).
        in_channels: channels of every input level.
        feat_channels: channels inside the towers (torchvision: = in_channels).
        stacked_convs: 3x3 conv + ReLU layers per tower.
        num_anchors: A per location.
        prior_prob: initial foreground probability of every class (bias of ``cls_logits``).
        focal_alpha, focal_gamma: sigmoid focal loss parameters.
        bbox_loss: ``bbox_loss(pred [P, 4], target [P, 4], avg_factor=n) -> sum / n`` on the deltas
            of the positives (the signature of ``training.models.losses``); default L1
            (torchvision). Injected so smooth L1 / Balanced L1 can be passed by the builder.
        score_thresh: candidates with sigmoid score <= this are dropped before top-k.
        pre_nms_top_n: candidates (anchor, class) kept per level and image before NMS.
        nms_thresh: IoU threshold of the class-wise NMS.
        max_per_img: detections kept per image after NMS.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        feat_channels: int,
        stacked_convs: int = 4,
        num_anchors: int = 9,
        prior_prob: float = 0.01,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        bbox_loss: Optional[BoxLoss] = None,
        score_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.5,
        max_per_img: int = 300,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"RetinaHead: num_classes must be >= 1, got {num_classes}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"RetinaHead: prior_prob must be in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.bbox_loss: BoxLoss = bbox_loss if bbox_loss is not None else L1Loss()
        self.score_thresh = score_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.max_per_img = max_per_img

        def tower() -> nn.ModuleList:
            return nn.ModuleList(
                nn.Conv2d(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1)
                for i in range(stacked_convs)
            )

        self.cls_convs = tower()
        self.reg_convs = tower()
        last = feat_channels if stacked_convs > 0 else in_channels
        self.cls_logits = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    # ------------------------------------------------------------------------------------------
    def forward(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level: class logits [B, A*K, Hi, Wi] and box deltas [B, A*4, Hi, Wi]."""
        cls_out, reg_out = [], []
        for x in feats:
            c = x
            for conv in self.cls_convs:
                c = F.relu(conv(c))
            r = x
            for conv in self.reg_convs:
                r = F.relu(conv(r))
            cls_out.append(self.cls_logits(c))
            reg_out.append(self.bbox_reg(r))
        return cls_out, reg_out

    def _flatten(self, cls_logits: Sequence[Tensor], bbox_deltas: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level: logits (B, A*K, Hi, Wi) -> (B, Hi*Wi*A, K), deltas (B, A*4, Hi, Wi) -> (B, Hi*Wi*A, 4)."""
        cls_flat = [flatten_level_outputs([c], self.num_classes) for c in cls_logits]
        reg_flat = [flatten_level_outputs([r], 4) for r in bbox_deltas]
        return cls_flat, reg_flat

    # ------------------------------------------------------------------------------------------
    def loss(
        self,
        cls_logits: Sequence[Tensor],
        bbox_deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        targets: Sequence[Dict[str, Tensor]],
        *,
        assigner: MaxIoUAssigner,
        box_coder: DeltaXYWHBoxCoder,
    ) -> Dict[str, Tensor]:
        """Unweighted ``retina_cls`` (focal) and ``retina_bbox`` losses.

        Args:
            cls_logits, bbox_deltas: ``forward`` outputs, L levels.
            anchors: L tensors [Hi*Wi*A, 4], shared by every image.
            targets: per image ``boxes`` [N, 4], ``labels`` [N] (0..K-1), optional
                ``ignore_boxes`` [M, 4] (anchors inside them are neither positive nor negative).
        """
        cls_flat, reg_flat = self._flatten(cls_logits, bbox_deltas)
        all_cls = torch.cat(cls_flat, dim=1)  # [B, N, K], N = sum_i Hi*Wi*A
        all_reg = torch.cat(reg_flat, dim=1)  # [B, N, 4]
        all_anchors = torch.cat(list(anchors), dim=0)  # [N, 4]
        if len(targets) != all_cls.shape[0]:
            raise ValueError(f"RetinaHead.loss: {len(targets)} targets for a batch of {all_cls.shape[0]} images")

        cls_losses, box_losses = [], []
        for cls_i, reg_i, tgt in zip(all_cls, all_reg, targets):
            gt_boxes = tgt["boxes"].to(all_anchors.dtype)
            res = assigner.assign(all_anchors, gt_boxes, tgt["labels"], tgt.get("ignore_boxes"))
            pos = res.gt_inds >= 0
            num_pos = max(1, int(pos.sum()))
            valid = res.gt_inds != IGNORED

            cls_target = torch.zeros_like(cls_i)  # [N, K]
            cls_target[pos, res.labels[pos]] = 1.0
            cls_losses.append(
                sigmoid_focal_loss(
                    cls_i[valid], cls_target[valid], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
                )
                / num_pos
            )
            # with no positives this is a graph-connected zero: a sum over an empty [0, 4] selection
            box_target = box_coder.encode(all_anchors[pos], gt_boxes[res.gt_inds[pos]])
            box_losses.append(self.bbox_loss(reg_i[pos], box_target, avg_factor=float(num_pos)))

        n = max(1, len(targets))
        return {"retina_cls": torch.stack(cls_losses).sum() / n, "retina_bbox": torch.stack(box_losses).sum() / n}

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(
        self,
        cls_logits: Sequence[Tensor],
        bbox_deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Tensor,
        *,
        box_coder: DeltaXYWHBoxCoder,
        max_dets: Optional[int] = None,
    ) -> Detections:
        """Padded detections of a batch (the exported eval path; ``predict`` trims it).

        Per level: sigmoid scores of all (anchor, class) pairs, those above ``score_thresh``, the
        ``pre_nms_top_n`` best (padded when a level has fewer pairs), decoded and clipped to
        ``image_sizes`` [B, 2] (h, w); then class-wise NMS over the L * ``pre_nms_top_n``
        candidates and the K = ``max_dets`` (default ``max_per_img``) best, as torchvision's
        ``RetinaNet.postprocess_detections``.
        """
        k_out = self.max_per_img if max_dets is None else int(max_dets)
        cls_flat, reg_flat = self._flatten(cls_logits, bbox_deltas)
        k = self.num_classes
        boxes_l, scores_l, labels_l = [], [], []
        for cls_lvl, reg_lvl, anc_lvl in zip(cls_flat, reg_flat, anchors):
            scores = torch.sigmoid(cls_lvl.float()).flatten(1)  # (B, Hi*Wi*A, K) -> (B, Hi*Wi*A*K): anchor * K + class
            scores, idx, _ = topk_padded(scores, self.pre_nms_top_n, fill=INVALID_SCORE, threshold=self.score_thresh)
            anchor_idx = torch.div(idx, k, rounding_mode="trunc")  # [B, n]; idx >= 0: a plain Div in ONNX
            boxes_l.append(box_coder.decode(gather_rows(reg_lvl.float(), anchor_idx), anc_lvl[anchor_idx]))
            scores_l.append(scores)
            labels_l.append(idx % k)
        boxes = clip_boxes(torch.cat(boxes_l, dim=1), image_sizes)  # [B, N, 4], N = L * pre_nms_top_n
        scores = torch.cat(scores_l, dim=1)
        labels = torch.cat(labels_l, dim=1)
        index, keep = nms_topk(boxes, scores, labels, k=k_out, num_classes=k, iou_threshold=self.nms_thresh)
        return detections_from_index(boxes, scores, labels, index, keep)

    def predict(
        self,
        cls_logits: Sequence[Tensor],
        bbox_deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Union[Sequence[Tuple[int, int]], Tensor],
        *,
        box_coder: DeltaXYWHBoxCoder,
    ) -> List[Dict[str, Tensor]]:
        """Detections per image: ``boxes`` [D, 4] (clipped to its (h, w)), ``scores`` [D], ``labels`` [D]
        (``detect`` trimmed to each image's valid rows)."""
        sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=cls_logits[0].device).reshape(-1, 2)
        return trim_detections(self.detect(cls_logits, bbox_deltas, anchors, sizes, box_coder=box_coder))
