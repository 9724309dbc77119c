"""Second stage of Faster R-CNN: FPN level assignment, RoIAlign, 2-fc head, box predictor.

Shapes: B images, L pooled levels (P2..P5), K RoIs in the batch, C classes (background not
counted), S = ``output_size``, F = fc width. RoIs are [K, 5] rows (batch index, x1, y1, x2, y2) in
input pixels. Class scores have C+1 columns with background LAST (index C); box deltas are
class-specific [K, C*4] (no background regression).

``RoIHead.forward`` returns the raw ``(cls_logits [K, C+1], deltas [K, C*4])`` of given RoIs.
Training: ``sample`` (gts appended to the proposals, max-IoU assignment, sampling) then ``loss``
(cross-entropy over the sampled RoIs, box loss on the positives divided by the number of sampled
RoIs, as torchvision's ``fastrcnn_loss``). Test: ``detect`` on padded proposals [B, R, 4] then
``postprocess`` (softmax, class-specific decode, clip, score threshold, small-box removal, per-class
NMS, top ``max_per_img``), all with fixed-size padded tensors: the ONNX export runs this same code.
``predict`` pads per-image proposal lists, runs ``detect`` and trims the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_area, roi_align

from ..assigner import MaxIoUAssigner
from ..box_coder import DeltaXYWHBoxCoder
from ..ops import (
    INVALID_SCORE,
    Detections,
    clip_boxes,
    detections_from_index,
    gather_rows,
    nms_topk,
    select_candidates,
    trim_detections,
)
from ..samplers.base import BaseSampler

__all__ = [
    "TorchvisionLevelMapper",
    "MMDetLevelMapper",
    "MultiLevelRoIAlign",
    "TwoFCHead",
    "BoxPredictor",
    "RoIHead",
    "RoISamples",
    "boxes_to_rois",
]

# ``bbox_loss(pred [P, 4], target [P, 4], avg_factor=n) -> scalar`` (sum / n), the signature of
# ``training.models.losses`` (L1Loss, SmoothL1Loss, BalancedL1Loss); an empty P gives a connected 0.
BoxLoss = Callable[..., Tensor]


class TorchvisionLevelMapper:
    """FPN paper Eq. 1 as torchvision's ``LevelMapper``: ``floor(k0 + log2(sqrt(wh) / s0) + eps)``,
    clamped to [k_min, k_max], returned relative to ``k_min``."""

    def __init__(self, *, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4, eps: float = 1e-6) -> None:
        self.k_min, self.k_max = k_min, k_max
        self.s0, self.lvl0, self.eps = canonical_scale, canonical_level, eps

    def __call__(self, boxes: Tensor) -> Tensor:
        """[K, 4] -> level index [K] in 0..k_max-k_min."""
        s = torch.sqrt(box_area(boxes))
        lvl = torch.floor(self.lvl0 + torch.log2(s / self.s0) + torch.tensor(self.eps, dtype=s.dtype))
        return (torch.clamp(lvl, min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min).to(torch.int64)


class MMDetLevelMapper:
    """mmdetection's mapping: ``floor(log2(sqrt(wh) / finest_scale + 1e-6))`` clamped to [0, L-1]."""

    def __init__(self, *, num_levels: int, finest_scale: int = 56) -> None:
        self.num_levels, self.finest_scale = num_levels, finest_scale

    def __call__(self, boxes: Tensor) -> Tensor:
        """[K, 4] -> level index [K] in 0..L-1."""
        scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        lvl = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return lvl.clamp(min=0, max=self.num_levels - 1).long()


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes [Ki, 4] -> [K, 5] rows (batch index, x1, y1, x2, y2)."""
    rois = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rois, dim=0)


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign of each RoI on the FPN level its size maps to (``torchvision.ops.roi_align``)."""

    def __init__(
        self,
        *,
        strides: Sequence[int],
        output_size: int = 7,
        sampling_ratio: int = 0,
        aligned: bool = True,
        level_mapper: Callable[[Tensor], Tensor],
    ) -> None:
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = aligned
        self.level_mapper = level_mapper

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Features (the first L used) and rois [K, 5] -> [K, C, S, S]."""
        feats = list(feats)[: len(self.strides)]
        levels = self.level_mapper(rois[:, 1:5])  # [K], every RoI on exactly one level
        s = self.output_size
        order_l, pooled_l = [], []
        for lvl, (feat, stride) in enumerate(zip(feats, self.strides)):
            # float mask: TensorRT's ONNX parser documents NonZero for FP32/FP16 inputs only
            idx = torch.nonzero((levels == lvl).to(torch.float32))[:, 0]  # [K_l]
            pooled_l.append(
                roi_align(
                    feat, rois[idx], output_size=(s, s), spatial_scale=1.0 / stride,
                    sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                )
            )
            order_l.append(idx)
        # pooled[j] belongs to RoI order[j] (RoIs grouped by level): invert that permutation. A
        # gather, not an indexed assignment, so the exported graph has no INT64_MAX slice ends
        order = torch.cat(order_l)  # [K]
        inverse = torch.zeros_like(order).scatter(0, order, torch.arange(order.shape[0], device=order.device))
        return torch.cat(pooled_l).index_select(0, inverse).to(feats[0].dtype)

    def extra_repr(self) -> str:
        return f"strides={self.strides}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"


class TwoFCHead(nn.Module):
    """Flatten, then fc6 + ReLU, fc7 + ReLU (torchvision's ``TwoMLPHead``): [K, C, S, S] -> [K, F]."""

    def __init__(self, *, in_channels: int, roi_size: int, fc_channels: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * roi_size * roi_size, fc_channels)
        self.fc7 = nn.Linear(fc_channels, fc_channels)
        for fc in (self.fc6, self.fc7):  # mmdetection's init for the shared fcs
            nn.init.xavier_uniform_(fc.weight)
            nn.init.constant_(fc.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        return F.relu(self.fc7(F.relu(self.fc6(x))))


class BoxPredictor(nn.Module):
    """Class scores [K, C+1] (background last) and class-specific deltas [K, C*4]."""

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.cls_score.bias, 0)
        nn.init.constant_(self.bbox_pred.bias, 0)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


@dataclass
class RoISamples:
    """Sampled RoIs of a batch: ``rois`` per image [Ki, 4], ``labels`` [K] (C = background),
    ``bbox_targets`` [K, 4] (rows of negatives are unused), ``pos_mask`` [K] bool."""

    rois: List[Tensor]
    labels: Tensor
    bbox_targets: Tensor
    pos_mask: Tensor


class RoIHead(nn.Module):
    """Faster R-CNN box branch (see the module docstring)."""

    def __init__(
        self,
        *,
        roi_extractor: MultiLevelRoIAlign,
        box_head: nn.Module,
        box_predictor: BoxPredictor,
        box_coder: DeltaXYWHBoxCoder,
        assigner: MaxIoUAssigner,
        sampler: BaseSampler,
        bbox_loss: BoxLoss,
        num_classes: int,
        add_gt_as_proposals: bool = True,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        max_per_img: int = 100,
        min_box_size: float = 1e-2,
        nms_pre: int = 3000,
    ) -> None:
        super().__init__()
        self.roi_extractor = roi_extractor
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = box_coder
        self.assigner = assigner
        self.sampler = sampler
        self.bbox_loss = bbox_loss
        self.num_classes = num_classes
        self.add_gt_as_proposals = add_gt_as_proposals
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.max_per_img = max_per_img
        self.min_box_size = min_box_size
        # (proposal, class) candidates per image entering NMS: <= 5000 (TensorRT's NMS limit) and a
        # TopK K < 3840 (TensorRT's TopK limit)
        self.nms_pre = nms_pre

    def forward(self, feats: Sequence[Tensor], rois: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """Per-image RoIs [Ki, 4] -> cls_logits [K, C+1], deltas [K, C*4] (images concatenated)."""
        pooled = self.roi_extractor(feats, boxes_to_rois(rois))
        return self.box_predictor(self.box_head(pooled))

    @torch.no_grad()
    def sample(self, proposals: Sequence[Tensor], targets: Sequence[Dict[str, Tensor]]) -> RoISamples:
        """Assign and sample each image's proposals (gts appended when ``add_gt_as_proposals``)."""
        rois, labels, bbox_targets, pos_masks = [], [], [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            gt_labels = t["labels"]
            if self.add_gt_as_proposals:
                props = torch.cat([props, gt])
            result = self.assigner.assign(props, gt, gt_labels, t.get("ignore_boxes"))
            pos, neg = self.sampler.sample(result)
            sampled = torch.cat([pos, neg])
            rois.append(props[sampled])
            lab = torch.full((sampled.numel(),), self.num_classes, dtype=torch.int64, device=props.device)
            lab[: pos.numel()] = result.labels[pos]
            labels.append(lab)
            tgt = props.new_zeros((sampled.numel(), 4))
            if pos.numel() > 0:
                tgt[: pos.numel()] = self.box_coder.encode(props[pos], gt[result.gt_inds[pos]])
            bbox_targets.append(tgt)
            mask = torch.zeros(sampled.numel(), dtype=torch.bool, device=props.device)
            mask[: pos.numel()] = True
            pos_masks.append(mask)
        return RoISamples(rois, torch.cat(labels), torch.cat(bbox_targets), torch.cat(pos_masks))

    def loss(self, cls_logits: Tensor, deltas: Tensor, samples: RoISamples) -> Dict[str, Tensor]:
        """``rcnn_cls`` (mean CE over sampled RoIs) and ``rcnn_bbox`` (sum over positives / #sampled)."""
        num = samples.labels.numel()
        cls_logits, deltas = cls_logits.float(), deltas.float()  # fp32 losses under autocast
        if num == 0:
            zero = cls_logits.sum() * 0 + deltas.sum() * 0
            return {"rcnn_cls": zero, "rcnn_bbox": zero}
        cls_loss = F.cross_entropy(cls_logits, samples.labels)
        pos = torch.where(samples.pos_mask)[0]
        pred = deltas.view(num, -1, 4)[pos, samples.labels[pos]]  # (K, C*4) -> (K, C, 4) -> (P, 4)
        box_loss = self.bbox_loss(pred, samples.bbox_targets[pos], avg_factor=float(num))
        return {"rcnn_cls": cls_loss, "rcnn_bbox": box_loss}

    def compute_losses(
        self, feats: Sequence[Tensor], proposals: Sequence[Tensor], targets: Sequence[Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        """``sample`` -> ``forward`` -> ``loss``."""
        samples = self.sample(proposals, targets)
        cls_logits, deltas = self(feats, samples.rois)
        return self.loss(cls_logits, deltas, samples)

    def postprocess(
        self,
        cls_logits: Tensor,
        deltas: Tensor,
        proposals: Tensor,
        proposal_valid: Tensor,
        image_sizes: Tensor,
        *,
        max_dets: Optional[int] = None,
    ) -> Detections:
        """Padded detections from the head outputs of padded proposals (the exported eval path).

        Args:
            cls_logits: [B*R, C+1], deltas: [B*R, C*4] (``forward`` on the B*R proposals, image-major).
            proposals: [B, R, 4]; proposal_valid: bool [B, R] (padding rows give no detections).
            image_sizes: [B, 2] (h, w) to clip to.
            max_dets: K, detections per image (default ``max_per_img``).

        Softmax, class-specific decode, clip, score threshold, small-box removal as torchvision's
        ``RoIHeads.postprocess_detections``; then per-class NMS and the K best survivors. At most
        ``nms_pre`` (proposal, class) candidates enter NMS: all of them when there are fewer, else
        the best ``nms_pre`` (NMS only looks at higher scores, so this changes the result only when
        fewer than K of them survive).
        """
        k = self.max_per_img if max_dets is None else int(max_dets)
        num_classes = self.num_classes
        cls_logits, deltas = cls_logits.float(), deltas.float()  # decode in fp32 under autocast
        num_images = proposals.shape[0]
        boxes = self.box_coder.decode(deltas, proposals.reshape(-1, 4))  # [B*R, C*4]
        boxes = clip_boxes(boxes.reshape(num_images, -1, 4), image_sizes)  # (B*R, C*4) -> (B, R*C, 4)
        scores = F.softmax(cls_logits, -1)[:, :num_classes]  # [B*R, C], background (last column) dropped
        scores = scores.reshape(num_images, -1)  # (B*R, C) -> (B, R*C), index r * C + c
        labels = torch.arange(num_classes, device=scores.device).repeat(proposals.shape[1])  # [R*C]
        labels = labels.unsqueeze(0).expand(num_images, -1)  # [B, R*C]
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        # (B, R) -> (B, R, C) -> (B, R*C)
        valid = proposal_valid.unsqueeze(-1).expand(-1, -1, num_classes).reshape(num_images, -1)
        valid = valid & (scores > self.score_thresh) & (w >= self.min_box_size) & (h >= self.min_box_size)
        scores = torch.where(valid, scores, torch.full_like(scores, INVALID_SCORE))
        cand, cand_valid = select_candidates(scores, self.nms_pre)  # [B, M], ascending (r, c) order
        boxes, labels = gather_rows(boxes, cand), gather_rows(labels, cand)
        scores = torch.where(cand_valid, gather_rows(scores, cand), torch.full_like(cand_valid, INVALID_SCORE, dtype=scores.dtype))
        index, keep = nms_topk(boxes, scores, labels, k=k, num_classes=num_classes, iou_threshold=self.nms_thresh)
        return detections_from_index(boxes, scores, labels, index, keep)

    @torch.no_grad()
    def detect(
        self,
        feats: Sequence[Tensor],
        proposals: Tensor,
        proposal_valid: Tensor,
        image_sizes: Tensor,
        *,
        max_dets: Optional[int] = None,
    ) -> Detections:
        """Padded proposals [B, R, 4] (+ valid [B, R]) -> padded ``Detections`` (see ``postprocess``)."""
        num_images, num_props = proposals.shape[0], proposals.shape[1]
        batch = torch.arange(num_images, device=proposals.device, dtype=proposals.dtype)
        batch = batch.reshape(-1, 1, 1).expand(-1, num_props, 1)  # [B, R, 1]
        rois = torch.cat([batch, proposals], dim=2).reshape(-1, 5)  # (B, R, 5) -> (B*R, 5)
        pooled = self.roi_extractor(feats, rois)
        cls_logits, deltas = self.box_predictor(self.box_head(pooled))
        return self.postprocess(cls_logits, deltas, proposals, proposal_valid, image_sizes, max_dets=max_dets)

    @torch.no_grad()
    def predict(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Union[Sequence[Tuple[int, int]], Tensor],
    ) -> List[Dict[str, Tensor]]:
        """Per-image proposals [Ri, 4] -> per-image detections (``detect`` on the padded batch, trimmed)."""
        num = max([p.shape[0] for p in proposals] + [1])
        padded = feats[0].new_zeros((len(proposals), num, 4))
        valid = torch.zeros((len(proposals), num), dtype=torch.bool, device=padded.device)
        for i, p in enumerate(proposals):
            padded[i, : p.shape[0]] = p
            valid[i, : p.shape[0]] = True
        sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=padded.device).reshape(-1, 2)
        return trim_detections(self.detect(feats, padded, valid, sizes))
