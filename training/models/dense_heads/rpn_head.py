"""Region proposal network: head, training loss and proposal selection (torchvision's RPN).

Shapes: B images, L levels of Hi x Wi cells, A anchors per cell, N = sum_i Hi*Wi*A anchors of an
image, P proposals kept per image. Boxes are x1y1x2y2 in input pixels. "objectness" are logits,
"deltas" box-coder deltas relative to the anchors.

``RPNHead.forward`` returns raw per-level tensors only. ``RPN`` adds the anchor generator, box
coder, assigner and sampler: ``loss`` (binary cross-entropy on the sampled anchors, box loss on the
sampled positives, both divided by the number of sampled anchors of the batch) and
``get_proposals`` (per-level top-k, decode, clip, small-box and score filters, NMS per level,
top ``post_nms_top_n``; detached).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from ..anchors import AnchorGenerator
from ..assigner import MaxIoUAssigner
from ..box_coder import DeltaXYWHBoxCoder
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
    def get_proposals(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Sequence[Tuple[int, int]],
        *,
        training: bool,
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Proposals [P, 4] and their objectness probabilities [P] per image (detached).

        ``training`` picks the train or test ``pre_nms_top_n`` (per level) and ``post_nms_top_n``.
        """
        obj = flatten_level_outputs([o.detach() for o in objectness], 1).squeeze(-1).float()  # [B, N]
        dlt = flatten_level_outputs([d.detach() for d in deltas], 4).float()  # [B, N, 4]
        num_images = obj.shape[0]
        device = obj.device
        pre_n = self.pre_nms_top_n[training]
        top_idx, levels, offset = [], [], 0
        for lvl, a in enumerate(anchors):
            n = a.shape[0]
            k = min(pre_n, n)
            idx = obj[:, offset : offset + n].topk(k, dim=1).indices + offset  # [B, k]
            top_idx.append(idx)
            levels.append(torch.full((k,), lvl, dtype=torch.int64, device=device))
            offset += n
        idx = torch.cat(top_idx, dim=1)  # [B, K]
        lvl_ids = torch.cat(levels)  # [K]
        batch = torch.arange(num_images, device=device)[:, None]
        scores = torch.sigmoid(obj[batch, idx])  # [B, K]
        boxes = self.box_coder.decode(dlt[batch, idx], torch.cat(list(anchors))[idx])  # [B, K, 4]

        proposals, proposal_scores = [], []
        for b in range(num_images):
            bx = clip_boxes_to_image(boxes[b], tuple(image_sizes[b]))
            keep = remove_small_boxes(bx, self.min_box_size)
            bx, sc, lv = bx[keep], scores[b][keep], lvl_ids[keep]
            keep = torch.where(sc >= self.score_thresh)[0]
            bx, sc, lv = bx[keep], sc[keep], lv[keep]
            keep = batched_nms(bx, sc, lv, self.nms_thresh)[: self.post_nms_top_n[training]]
            proposals.append(bx[keep])
            proposal_scores.append(sc[keep])
        return proposals, proposal_scores
