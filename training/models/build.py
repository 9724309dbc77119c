"""Build detectors from the config: the only place that turns config fields into constructor kwargs.

``build_model(cfg)`` reads ``cfg.model`` (a :class:`~training.config.Config` or a
:class:`~training.config.ModelConfig`): backbone (``backbone.kind``), necks (FPN, then the Libra
BFP when enabled), then the detector of ``model.arch``.
"""
from __future__ import annotations

from typing import List, Union

from torch import nn

from ..config import (
    AnchorConfig,
    BackboneConfig,
    Config,
    ModelConfig,
    RetinaHeadConfig,
    RoIHeadConfig,
    RPNConfig,
    SamplerConfig,
)
from .anchors import AnchorGenerator
from .assigner import MaxIoUAssigner
from .backbones.resnet import ResNetBackbone
from .backbones.tiny import TinyBackbone
from .box_coder import DeltaXYWHBoxCoder
from .dense_heads.retina_head import RetinaHead
from .dense_heads.rpn_head import RPN, RPNHead
from .faster_rcnn import FasterRCNN
from .retinanet import RetinaNet
from .losses import BalancedL1Loss, L1Loss, SmoothL1Loss
from .necks.bfp import BalancedFeaturePyramid
from .necks.fpn import FPN
from .roi_heads.roi_head import BoxPredictor, MMDetLevelMapper, MultiLevelRoIAlign, RoIHead, TorchvisionLevelMapper, TwoFCHead
from .samplers.base import BaseSampler
from .samplers.combined import CombinedSampler
from .samplers.instance_balanced import InstanceBalancedPosSampler
from .samplers.iou_balanced import IoUBalancedNegSampler
from .samplers.random import RandomSampler

__all__ = [
    "build_model",
    "build_backbone",
    "build_necks",
    "build_bfp",
    "build_anchor_generator",
    "build_sampler",
    "SAMPLER_KINDS",
    "build_bbox_loss",
    "build_faster_rcnn",
]

# Candidates whose IoF with a target's ``ignore_boxes`` (crowd regions) exceeds this are neither
# positives nor negatives.
IGNORE_IOF_THR = 0.5


def _model_cfg(cfg: Union[Config, ModelConfig]) -> ModelConfig:
    return cfg.model if isinstance(cfg, Config) else cfg


def build_backbone(cfg: BackboneConfig, *, pretrained: bool = True) -> nn.Module:
    """ResNet or tiny backbone; loads ``cfg.pretrained`` (a local file) when set and ``pretrained``."""
    if cfg.kind == "resnet":
        backbone: nn.Module = ResNetBackbone(
            depth=cfg.depth, frozen_stages=cfg.frozen_stages, norm=cfg.norm, gn_groups=cfg.gn_groups,
            norm_eps=cfg.norm_eps,
        )
        if pretrained and cfg.pretrained:
            backbone.load_pretrained(cfg.pretrained)  # type: ignore[operator]
        return backbone
    if cfg.kind == "tiny":
        if cfg.pretrained:
            raise ValueError("model.backbone.pretrained: the tiny backbone trains from scratch; set it to null")
        return TinyBackbone(widths=cfg.widths, norm=cfg.norm, gn_groups=cfg.gn_groups, frozen_stages=cfg.frozen_stages)
    raise ValueError(f"model.backbone.kind: unknown '{cfg.kind}'; expected 'resnet' or 'tiny'")


def build_necks(cfg: ModelConfig, in_channels: List[int]) -> nn.ModuleList:
    """FPN over backbone outputs C2..C5 (levels ``fpn.min_level``..``fpn.max_level``), then BFP."""
    f = cfg.fpn
    if not 2 <= f.min_level <= 5 or f.max_level < 5:
        raise ValueError(f"model.fpn: need 2 <= min_level <= 5 <= max_level, got {f.min_level}..{f.max_level}")
    necks = nn.ModuleList(
        [
            FPN(
                in_channels=in_channels,
                out_channels=f.out_channels,
                num_outs=f.max_level - f.min_level + 1,
                start_level=f.min_level - 2,
                extra=f.extra,
            )
        ]
    )
    if cfg.bfp.enabled:
        necks.append(build_bfp(cfg))
    return necks


def build_bfp(cfg: ModelConfig) -> BalancedFeaturePyramid:
    """Libra R-CNN's Balanced Feature Pyramid over the FPN's levels (``model.bfp``)."""
    b = cfg.bfp
    num_levels = cfg.fpn.max_level - cfg.fpn.min_level + 1
    if not 0 <= b.refine_level < num_levels:
        raise ValueError(
            f"model.bfp.refine_level: {b.refine_level} is not a level of the FPN's {num_levels} outputs "
            f"(P{cfg.fpn.min_level}..P{cfg.fpn.max_level}); expected 0..{num_levels - 1}"
        )
    try:
        return BalancedFeaturePyramid(
            in_channels=cfg.fpn.out_channels,
            num_levels=num_levels,
            refine_level=b.refine_level,
            refine_type=b.refine_type,
            init=b.init,
        )
    except ValueError as e:
        raise ValueError(f"model.bfp: {e}") from None


def build_anchor_generator(cfg: AnchorConfig) -> AnchorGenerator:
    """Anchors from explicit ``sizes`` (torchvision) or ``scales`` x stride (mmdetection)."""
    return AnchorGenerator(
        strides=cfg.strides,
        ratios=cfg.ratios,
        scales=None if cfg.sizes is not None else cfg.scales,
        sizes_per_level=cfg.sizes,
        round_base=cfg.round_base,
        center_offset=cfg.center_offset,
        stride_from_image=cfg.stride_from_image,
    )


SAMPLER_KINDS = ("random", "libra", "iou_balanced", "instance_balanced")


def build_assigner(
    cfg: Union[RPNConfig, RoIHeadConfig, RetinaHeadConfig], *, allow_low_quality_matches: bool
) -> MaxIoUAssigner:
    """The max-IoU assigner of one stage (its pos/neg/min-pos thresholds; crowd regions ignored)."""
    return MaxIoUAssigner(
        pos_iou_thr=cfg.pos_iou_thr,
        neg_iou_thr=cfg.neg_iou_thr,
        min_pos_iou=cfg.min_pos_iou,
        allow_low_quality_matches=allow_low_quality_matches,
        ignore_iof_thr=IGNORE_IOF_THR,
    )


def build_sampler(cfg: SamplerConfig, where: str, *, neg_iou_thr: float) -> BaseSampler:
    """The sampler named by ``cfg.kind`` (one of :data:`SAMPLER_KINDS`).

    * "random": uniform positives and negatives (baselines; the Libra RPN with ``neg_pos_ub: 5``).
    * "libra": instance-balanced positives + IoU-balanced negatives (the Libra R-CNN stage).
    * "iou_balanced": random positives + IoU-balanced negatives (ablation).
    * "instance_balanced": instance-balanced positives + random negatives (ablation: the paper's
      "Pos Balance", Table 4).

    ``neg_iou_thr`` is the stage assigner's negative threshold: the top of the IoU range that
    ``binning: paper`` divides into ``num_bins``.
    """
    if cfg.kind not in SAMPLER_KINDS:
        raise ValueError(
            f"{where}.sampler.kind: unknown '{cfg.kind}'; expected one of {', '.join(repr(k) for k in SAMPLER_KINDS)}"
        )
    budget = dict(num=cfg.num, pos_fraction=cfg.pos_fraction, neg_pos_ub=cfg.neg_pos_ub)
    iou_options = dict(
        num_bins=cfg.num_bins,
        floor_thr=cfg.floor_thr,
        floor_fraction=cfg.floor_fraction,
        binning=cfg.binning,
        neg_iou_thr=neg_iou_thr,
    )
    try:
        if cfg.kind == "random":
            return RandomSampler(**budget)
        if cfg.kind == "iou_balanced":
            return IoUBalancedNegSampler(**iou_options, **budget)
        if cfg.kind == "instance_balanced":
            return InstanceBalancedPosSampler(**budget)
        # "libra": the budget is the combined sampler's; the two only choose which candidates
        return CombinedSampler(
            **budget,
            pos_sampler=InstanceBalancedPosSampler(**budget),
            neg_sampler=IoUBalancedNegSampler(**iou_options, **budget),
        )
    except ValueError as e:
        raise ValueError(f"{where}.sampler: {e}") from None


def build_bbox_loss(cfg: Union[RPNConfig, RoIHeadConfig, RetinaHeadConfig], where: str) -> nn.Module:
    """The stage's box loss (``cfg.bbox_loss``) with the ``training.models.losses`` signature.

    ``RPNConfig`` has no ``balanced_l1_*`` fields (no Libra config balances the RPN): Balanced L1
    there takes the paper's alpha 0.5, gamma 1.5, beta 1.
    """
    kind = cfg.bbox_loss
    if kind == "l1":
        return L1Loss()
    if kind == "smooth_l1":
        return SmoothL1Loss(beta=cfg.smooth_l1_beta)
    if kind == "balanced_l1":
        return BalancedL1Loss(
            alpha=getattr(cfg, "balanced_l1_alpha", 0.5),
            gamma=getattr(cfg, "balanced_l1_gamma", 1.5),
            beta=getattr(cfg, "balanced_l1_beta", 1.0),
        )
    raise ValueError(f"{where}.bbox_loss: unknown '{kind}'; expected 'l1', 'smooth_l1' or 'balanced_l1'")


def build_faster_rcnn(cfg: ModelConfig, backbone: nn.Module, necks: nn.ModuleList) -> FasterRCNN:
    """Faster R-CNN with FPN from ``cfg`` around a built backbone and necks."""
    num_classes = int(cfg.num_classes)  # type: ignore[arg-type]
    channels = cfg.fpn.out_channels
    num_levels = cfg.fpn.max_level - cfg.fpn.min_level + 1
    r = cfg.rpn
    if len(r.anchors.strides) != num_levels:
        raise ValueError(
            f"model.rpn.anchors.strides has {len(r.anchors.strides)} levels but the FPN makes {num_levels} "
            f"(P{cfg.fpn.min_level}..P{cfg.fpn.max_level})"
        )
    anchor_generator = build_anchor_generator(r.anchors)
    if len(set(anchor_generator.num_anchors_per_location())) != 1:
        raise ValueError("model.rpn.anchors: the RPN head needs the same number of anchors on every level")
    rpn = RPN(
        head=RPNHead(
            in_channels=channels, feat_channels=r.feat_channels, num_anchors=anchor_generator.num_anchors_per_location()[0]
        ),
        anchor_generator=anchor_generator,
        box_coder=DeltaXYWHBoxCoder(target_means=r.target_means, target_stds=r.target_stds, clip=cfg.bbox_clip),
        assigner=build_assigner(r, allow_low_quality_matches=r.allow_low_quality_matches),
        sampler=build_sampler(r.sampler, "model.rpn", neg_iou_thr=r.neg_iou_thr),
        bbox_loss=build_bbox_loss(r, "model.rpn"),
        pre_nms_top_n_train=r.pre_nms_top_n_train,
        pre_nms_top_n_test=r.pre_nms_top_n_test,
        post_nms_top_n_train=r.post_nms_top_n_train,
        post_nms_top_n_test=r.post_nms_top_n_test,
        nms_thresh=r.nms_thresh,
        min_box_size=r.min_box_size,
        score_thresh=r.score_thresh,
    )

    h = cfg.roi_head
    roi_levels = list(range(cfg.fpn.min_level, 6))  # P_min..P5: the levels built from backbone maps
    if h.level_mapper == "torchvision":
        mapper = TorchvisionLevelMapper(
            k_min=roi_levels[0], k_max=roi_levels[-1], canonical_scale=h.canonical_scale, canonical_level=h.canonical_level
        )
    elif h.level_mapper == "mmdet":
        mapper = MMDetLevelMapper(num_levels=len(roi_levels), finest_scale=h.finest_scale)  # type: ignore[assignment]
    else:
        raise ValueError(f"model.roi_head.level_mapper: unknown '{h.level_mapper}'; expected 'mmdet' or 'torchvision'")
    roi_head = RoIHead(
        roi_extractor=MultiLevelRoIAlign(
            strides=[2**lvl for lvl in roi_levels],
            output_size=h.roi_size,
            sampling_ratio=h.sampling_ratio,
            aligned=h.aligned,
            level_mapper=mapper,
        ),
        box_head=TwoFCHead(in_channels=channels, roi_size=h.roi_size, fc_channels=h.fc_channels),
        box_predictor=BoxPredictor(in_channels=h.fc_channels, num_classes=num_classes),
        box_coder=DeltaXYWHBoxCoder(target_means=h.target_means, target_stds=h.target_stds, clip=cfg.bbox_clip),
        assigner=build_assigner(h, allow_low_quality_matches=False),
        sampler=build_sampler(h.sampler, "model.roi_head", neg_iou_thr=h.neg_iou_thr),
        bbox_loss=build_bbox_loss(h, "model.roi_head"),
        num_classes=num_classes,
        add_gt_as_proposals=h.sampler.add_gt_as_proposals,
        score_thresh=h.score_thresh,
        nms_thresh=h.nms_thresh,
        max_per_img=h.max_per_img,
    )
    return FasterRCNN(backbone=backbone, necks=necks, rpn=rpn, roi_head=roi_head, loss_weights=cfg.loss_weights)


def build_retinanet(cfg: ModelConfig, backbone: nn.Module, necks: nn.ModuleList) -> RetinaNet:
    """RetinaNet from ``cfg`` (``cfg.retina_head``, ``cfg.fpn``) around a built backbone and necks.

    """
    h = cfg.retina_head
    num_levels = cfg.fpn.max_level - cfg.fpn.min_level + 1
    if len(h.anchors.strides) != num_levels:
        raise ValueError(
            f"model.retina_head.anchors.strides has {len(h.anchors.strides)} levels but the FPN makes "
            f"{num_levels} (P{cfg.fpn.min_level}..P{cfg.fpn.max_level})"
        )
    anchor_generator = build_anchor_generator(h.anchors)
    per_level = anchor_generator.num_anchors_per_location()
    if len(set(per_level)) != 1:
        raise ValueError(
            f"model.retina_head.anchors: the head needs the same number of anchors on every level, got {per_level}"
        )
    head = RetinaHead(
        num_classes=int(cfg.num_classes),  # type: ignore[arg-type]
        in_channels=cfg.fpn.out_channels,
        feat_channels=h.feat_channels,
        stacked_convs=h.stacked_convs,
        num_anchors=per_level[0],
        prior_prob=h.prior_prob,
        focal_alpha=h.focal_alpha,
        focal_gamma=h.focal_gamma,
        bbox_loss=build_bbox_loss(h, "model.retina_head"),
        score_thresh=h.score_thresh,
        pre_nms_top_n=h.pre_nms_top_n,
        nms_thresh=h.nms_thresh,
        max_per_img=h.max_per_img,
    )
    return RetinaNet(
        backbone=backbone,
        necks=necks,
        head=head,
        anchor_generator=anchor_generator,
        box_coder=DeltaXYWHBoxCoder(target_means=h.target_means, target_stds=h.target_stds, clip=cfg.bbox_clip),
        assigner=build_assigner(h, allow_low_quality_matches=h.allow_low_quality_matches),
        loss_weights=cfg.loss_weights,
    )


def build_model(cfg: Union[Config, ModelConfig], *, pretrained: bool = True) -> nn.Module:
    """The detector of ``cfg.model.arch`` ("faster_rcnn" | "retinanet").

    ``pretrained``: load ``model.backbone.pretrained`` when it is set (the trainer); checkpoint
    loading passes False, since the checkpoint holds every weight.

    Raises:
        ValueError: ``model.num_classes`` unset, class names of the wrong length, an unknown kind,
            or a loss weight named for a loss the detector does not return.
    """
    m = _model_cfg(cfg)
    if m.num_classes is None:
        raise ValueError(
            "model.num_classes is None: set model.num_classes or let the trainer fill it from the annotation file"
        )
    if m.num_classes < 1:
        raise ValueError(f"model.num_classes must be >= 1, got {m.num_classes}")
    if m.class_names is not None and len(m.class_names) != m.num_classes:
        raise ValueError(f"model.class_names has {len(m.class_names)} names but model.num_classes is {m.num_classes}")
    backbone = build_backbone(m.backbone, pretrained=pretrained)
    necks = build_necks(m, list(backbone.out_channels))  # type: ignore[arg-type]
    if m.arch == "faster_rcnn":
        return build_faster_rcnn(m, backbone, necks)
    if m.arch == "retinanet":
        return build_retinanet(m, backbone, necks)
    raise ValueError(f"model.arch: unknown '{m.arch}'; expected 'faster_rcnn' or 'retinanet'")
