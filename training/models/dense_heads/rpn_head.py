"""Region proposal network: head, training loss and proposal selection (torchvision's RPN).

Shapes: B images, L levels of Hi x Wi cells, A anchors per cell, N = sum_i Hi*Wi*A anchors of an
image, P proposals kept per image. Boxes are x1y1x2y2 in input pixels. "objectness" are logits,
"deltas" box-coder deltas relative to the anchors.

``RPNHead.forward`` returns raw per-level tensors only. ``RPN`` adds the anchor generator, box
coder, assigner and sampler: ``loss`` (binary cross-entropy on the sampled anchors, box loss on the
sampled positives, both divided by the number of sampled anchors of the batch) and
``propose`` (per-level top-k, decode, clip, small-box and score filters, NMS per level, top
``post_nms_top_n``; detached), written with fixed-size padded tensors so that the ONNX export runs
this same code; ``get_proposals`` trims its result to per-image lists.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..anchors import AnchorGenerator
from ..assigner import MaxIoUAssigner
from ..box_coder import DeltaXYWHBoxCoder
from ..ops import INVALID_SCORE, clip_boxes, gather_rows, nms_topk, topk_padded
from ..samplers.base import BaseSampler

__all__ = ["RPNHead", "RPN", "flatten_level_outputs"]

# ``bbox_loss(pred [P, 4], target [P, 4], avg_factor=n) -> scalar`` (sum / n), the signature of
# ``training.models.losses`` (L1Loss, SmoothL1Loss, BalancedL1Loss); an empty P gives a connected 0.
BoxLoss = Callable[..., Tensor]


def flatten_level_outputs(outputs: Sequence[Tensor], channels: int) -> Tensor:
    """Per-level maps [B, A*channels, Hi, Wi] -> [B, N, channels], ordered (level, y, x, anchor)."""
    flat = []
    for x in outputs:
        b, _, h, w = x.shape
        # (B, A*C, Hi, Wi) -> (B, A, C, Hi, Wi) -> (B, Hi, Wi, A, C) -> (B, Hi*Wi*A, C)
        flat.append(x.view(b, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, channels))
    return torch.cat(flat, dim=1)


class RPNHead(nn.Module):
    """3x3 conv + ReLU shared over levels, then 1x1 objectness (A) and 1x1 deltas (A*4)."""

    def __init__(self, *, in_channels: int, feat_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(feat_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        for m in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.constant_(m.bias, 0)

    def forward(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level: objectness [B, A, Hi, Wi] and deltas [B, A*4, Hi, Wi]."""
        objectness, deltas = [], []
        for x in feats:
            t = F.relu(self.conv(x))
            objectness.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return objectness, deltas


class RPN(nn.Module):
    """RPN head plus anchors, targets, loss and proposal selection (see the module docstring)."""

    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: DeltaXYWHBoxCoder,
        assigner: MaxIoUAssigner,
        sampler: BaseSampler,
        bbox_loss: BoxLoss,
        pre_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_train: int = 2000,
        post_nms_top_n_test: int = 1000,
        nms_thresh: float = 0.7,
        min_box_size: float = 1e-3,
        score_thresh: float = 0.0,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.assigner = assigner
        self.sampler = sampler
        self.bbox_loss = bbox_loss
        self.pre_nms_top_n = {True: pre_nms_top_n_train, False: pre_nms_top_n_test}
        self.post_nms_top_n = {True: post_nms_top_n_train, False: post_nms_top_n_test}
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        self.score_thresh = score_thresh

    def forward(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Raw head outputs per level (see ``RPNHead.forward``)."""
        return self.head(feats)

    def get_anchors(self, feats: Sequence[Tensor], image_shape: Tuple[int, int]) -> List[Tensor]:
        """Anchors per level [Hi*Wi*A, 4] for the padded batch of shape ``image_shape`` (H, W)."""
        return self.anchor_generator(feats, image_shape)

    def loss(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        targets: Sequence[Dict[str, Tensor]],
    ) -> Dict[str, Tensor]:
        """``rpn_cls`` and ``rpn_bbox`` (unweighted) for targets with ``boxes`` [M, 4] (+ ``ignore_boxes``)."""
        obj = flatten_level_outputs(objectness, 1).squeeze(-1).float()  # [B, N]; fp32 under autocast
        dlt = flatten_level_outputs(deltas, 4).float()  # [B, N, 4]
        all_anchors = torch.cat(list(anchors), dim=0)  # [N, 4]
        logits, labels, pred_pos, target_pos = [], [], [], []
        for i, t in enumerate(targets):
            gt = t["boxes"].to(all_anchors.dtype)
            result = self.assigner.assign(all_anchors, gt, None, t.get("ignore_boxes"))
            pos, neg = self.sampler.sample(result)
            logits.append(obj[i, torch.cat([pos, neg])])
            labels.append(torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).to(obj.dtype))
            pred_pos.append(dlt[i, pos])
            target_pos.append(self.box_coder.encode(all_anchors[pos], gt[result.gt_inds[pos]]))
        logits_t, labels_t = torch.cat(logits), torch.cat(labels)
        num_samples = max(logits_t.numel(), 1)
        cls_loss = F.binary_cross_entropy_with_logits(logits_t, labels_t, reduction="sum") / num_samples
        box_loss = self.bbox_loss(torch.cat(pred_pos), torch.cat(target_pos), avg_factor=float(num_samples))
        return {"rpn_cls": cls_loss, "rpn_bbox": box_loss}

    @torch.no_grad()
    def propose(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Tensor,
        *,
        training: bool,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Fixed-size proposals of a batch (the exported eval path; ``get_proposals`` trims it).

        Per level the ``pre_nms_top_n`` best objectness logits (padded with -inf when a level has
        fewer anchors), decoded and clipped to ``image_sizes`` [B, 2] (h, w); small boxes and scores
        below ``score_thresh`` dropped; NMS per level; the ``post_nms_top_n`` best kept (P of them).

        Returns:
            boxes [B, P, 4], scores [B, P] (objectness probabilities, ``INVALID_SCORE`` on padding
            rows) and valid bool [B, P]; valid rows come first, by decreasing score.
        """
        pre_n, post_n = self.pre_nms_top_n[training], self.post_nms_top_n[training]
        boxes_l, logits_l, valid_l, levels_l = [], [], [], []
        for lvl, (obj, dlt, anc) in enumerate(zip(objectness, deltas, anchors)):
            obj = flatten_level_outputs([obj.detach()], 1).flatten(1).float()  # (B, Hi*Wi*A, 1) -> (B, Hi*Wi*A)
            dlt = flatten_level_outputs([dlt.detach()], 4).float()  # [B, Hi*Wi*A, 4]
            logits, idx, valid = topk_padded(obj, pre_n, fill=float("-inf"))  # [B, k] each
            boxes_l.append(self.box_coder.decode(gather_rows(dlt, idx), anc[idx]))  # [B, k, 4]
            logits_l.append(logits)
            valid_l.append(valid)
            levels_l.append(torch.full_like(idx, lvl))
        boxes = clip_boxes(torch.cat(boxes_l, dim=1), image_sizes)  # [B, N, 4], N = L * pre_n
        scores = torch.sigmoid(torch.cat(logits_l, dim=1))  # [B, N]
        levels = torch.cat(levels_l, dim=1)  # [B, N]
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        valid = torch.cat(valid_l, dim=1) & (w >= self.min_box_size) & (h >= self.min_box_size)
        valid = valid & (scores >= self.score_thresh)
        scores = torch.where(valid, scores, torch.full_like(scores, INVALID_SCORE))
        index, keep = nms_topk(boxes, scores, levels, k=post_n, num_classes=len(levels_l), iou_threshold=self.nms_thresh)
        scores = torch.where(keep, gather_rows(scores, index), torch.full_like(keep, INVALID_SCORE, dtype=scores.dtype))
        return gather_rows(boxes, index), scores, keep

    @torch.no_grad()
    def get_proposals(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Union[Sequence[Tuple[int, int]], Tensor],
        *,
        training: bool,
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Proposals [P, 4] and their objectness probabilities [P] per image (detached): ``propose``
        trimmed to each image's valid rows.

        ``training`` picks the train or test ``pre_nms_top_n`` (per level) and ``post_nms_top_n``.
        """
        sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=objectness[0].device).reshape(-1, 2)
        boxes, scores, valid = self.propose(objectness, deltas, anchors, sizes, training=training)
        counts = valid.sum(dim=1).tolist()
        return [b[:n] for b, n in zip(boxes, counts)], [s[:n] for s, n in zip(scores, counts)]
