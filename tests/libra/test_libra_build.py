"""Libra configs and their wiring in ``build_model``: BFP after the FPN, the samplers, Balanced L1
with the right head's parameters, loss weights, and full-size models running a forward pass."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.config import SamplerConfig, config_to_dict, load_config
from training.models import build_model
from training.models.assigner import AssignResult
from training.models.build import SAMPLER_KINDS, build_sampler
from training.models.faster_rcnn import FasterRCNN
from training.models.losses import BalancedL1Loss
from training.models.necks import FPN, BalancedFeaturePyramid
from training.models.retinanet import RetinaNet
from training.models.samplers import (
    CombinedSampler,
    InstanceBalancedPosSampler,
    IoUBalancedNegSampler,
    RandomSampler,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k != "loss_weights":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _diff(base: str, libra: str) -> dict:
    a = _flat(config_to_dict(load_config(CONFIGS / base)))
    b = _flat(config_to_dict(load_config(CONFIGS / libra)))
    assert a.keys() == b.keys()
    return {k: b[k] for k in a if a[k] != b[k] and k != "name"}


FASTER_CHANGES = {
    "model.bfp.enabled": True,
    "model.rpn.sampler.neg_pos_ub": 5,
    "model.roi_head.sampler.kind": "libra",
    "model.roi_head.bbox_loss": "balanced_l1",
}


@pytest.mark.parametrize(
    "base,libra,changes",
    [
        ("faster_rcnn_r50_fpn_1x.yaml", "libra_faster_rcnn_r50_fpn_1x.yaml", FASTER_CHANGES),
        ("faster_rcnn_r101_fpn_1x.yaml", "libra_faster_rcnn_r101_fpn_1x.yaml", FASTER_CHANGES),
        ("tiny_faster_rcnn.yaml", "tiny_libra_faster_rcnn.yaml", FASTER_CHANGES),
        (
            "retinanet_r50_fpn_1x.yaml",
            "libra_retinanet_r50_fpn_1x.yaml",
            {"model.bfp.enabled": True, "model.bfp.refine_level": 1, "model.retina_head.bbox_loss": "balanced_l1"},
        ),
        (
            "tiny_retinanet.yaml",
            "tiny_libra_retinanet.yaml",
            {"model.bfp.enabled": True, "model.bfp.refine_level": 1, "model.retina_head.bbox_loss": "balanced_l1"},
        ),
    ],
)
def test_libra_configs_change_only_what_the_reference_changes(base, libra, changes):
    """Every other key (schedule, data, anchors, thresholds, loss weights...) equals the baseline's;
    the values the reference configs set that equal our defaults are checked too."""
    assert _diff(base, libra) == changes
    m = load_config(CONFIGS / libra).model
    assert m.bfp.refine_type == "non_local" and m.bfp.init == "xavier"
    assert set(m.loss_weights.values()) == {1.0}
    if m.arch == "faster_rcnn":
        s = m.roi_head.sampler
        assert (s.pos_fraction, s.add_gt_as_proposals, s.num_bins, s.floor_thr, s.floor_fraction, s.binning) == (
            0.25, True, 3, -1.0, 0.0, "reference"
        )
        assert (m.roi_head.balanced_l1_alpha, m.roi_head.balanced_l1_gamma, m.roi_head.balanced_l1_beta) == (0.5, 1.5, 1.0)
        assert m.rpn.sampler.kind == "random" and m.rpn.bbox_loss != "balanced_l1"
    else:
        h = m.retina_head
        assert (h.balanced_l1_alpha, h.balanced_l1_gamma, h.balanced_l1_beta) == (0.5, 1.5, 0.11)


def test_full_size_refine_level_is_stride_16():
    for name, stride in [("libra_faster_rcnn_r50_fpn_1x.yaml", 16), ("libra_retinanet_r50_fpn_1x.yaml", 16),
                         ("tiny_libra_faster_rcnn.yaml", 16), ("tiny_libra_retinanet.yaml", 16)]:
        m = load_config(CONFIGS / name).model
        assert 2 ** (m.fpn.min_level + m.bfp.refine_level) == stride, name
    assert load_config(CONFIGS / "libra_faster_rcnn_r101_fpn_1x.yaml").model.backbone.depth == 101
    assert load_config(CONFIGS / "libra_faster_rcnn_r50_fpn_1x.yaml").model.roi_head.sampler.num == 512


def _tiny(name: str, *overrides: str):
    cfg = load_config(CONFIGS / name, list(overrides))
    cfg.model.num_classes = 3
    torch.manual_seed(0)
    return build_model(cfg)


def test_tiny_libra_faster_rcnn_wiring():
    model = _tiny("tiny_libra_faster_rcnn.yaml")
    assert isinstance(model, FasterRCNN)
    fpn, bfp = model.necks
    assert isinstance(fpn, FPN) and isinstance(bfp, BalancedFeaturePyramid)
    assert (bfp.in_channels, bfp.num_levels, bfp.refine_level, bfp.refine_type, bfp.init) == (64, 5, 2, "non_local", "xavier")
    sampler = model.roi_head.sampler
    assert isinstance(sampler, CombinedSampler) and (sampler.num, sampler.pos_fraction, sampler.neg_pos_ub) == (256, 0.25, -1)
    assert isinstance(sampler.pos_sampler, InstanceBalancedPosSampler)
    neg = sampler.neg_sampler
    assert isinstance(neg, IoUBalancedNegSampler)
    assert (neg.num_bins, neg.floor_thr, neg.floor_fraction, neg.binning) == (3, -1.0, 0.0, "reference")
    assert model.roi_head.add_gt_as_proposals
    rpn_sampler = model.rpn.sampler
    assert type(rpn_sampler) is RandomSampler and (rpn_sampler.num, rpn_sampler.neg_pos_ub) == (256, 5)
    loss = model.roi_head.bbox_loss
    assert isinstance(loss, BalancedL1Loss) and (loss.alpha, loss.gamma, loss.beta) == (0.5, 1.5, 1.0)
    assert not isinstance(model.rpn.bbox_loss, BalancedL1Loss)
    # the RoI head's candidates end with the gts (max IoU 1.0), the sampler finds them as positives
    images = torch.randn(1, 3, 128, 160)
    target = {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0], [80.0, 30.0, 150.0, 120.0]]), "labels": torch.tensor([0, 2])}
    proposals = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [12.0, 22.0, 70.0, 88.0], [100.0, 60.0, 128.0, 100.0]])]
    samples = model.roi_head.sample(proposals, [target])
    assert samples.pos_mask.sum() == 3 and samples.labels.numel() == 5  # 1 proposal + 2 gts positive
    losses = model.compute_losses(images, [target])
    assert set(losses) == {"rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox"} and all(torch.isfinite(v) for v in losses.values())


def test_tiny_libra_retinanet_wiring():
    model = _tiny("tiny_libra_retinanet.yaml")
    assert isinstance(model, RetinaNet)
    bfp = model.necks[-1]
    assert isinstance(bfp, BalancedFeaturePyramid) and (bfp.num_levels, bfp.refine_level) == (4, 1)
    loss = model.head.bbox_loss
    assert isinstance(loss, BalancedL1Loss) and (loss.alpha, loss.gamma, loss.beta) == (0.5, 1.5, 0.11)


@pytest.mark.parametrize(
    "name,key,loss",
    [("libra_faster_rcnn_r50_fpn_1x.yaml", "rcnn_bbox", "rcnn_bbox"), ("libra_retinanet_r50_fpn_1x.yaml", "retina_bbox", "retina_bbox")],
)
def test_weighted_component_loss_override(name, key, loss):
    """The documented override halves only the box-regression weight of the built model."""
    cfg = load_config(CONFIGS / name, [f"model.loss_weights.{key}=0.5"])
    assert f"--set model.loss_weights.{key}=0.5" in (CONFIGS / name).read_text()
    cfg.model.num_classes = 3
    cfg.model.backbone.depth = 18  # the weights do not depend on the backbone; keep the build quick
    model = build_model(cfg)
    assert model.loss_weights[loss] == 0.5
    assert {k: v for k, v in model.loss_weights.items() if k != loss} == {k: 1.0 for k in model.LOSS_NAMES if k != loss}


@pytest.mark.parametrize("kind", SAMPLER_KINDS)
def test_sampler_kinds(kind):
    cfg = SamplerConfig(kind=kind, num=64, pos_fraction=0.25, neg_pos_ub=3, binning="paper")
    sampler = build_sampler(cfg, "model.roi_head", neg_iou_thr=0.4)
    assert (sampler.num, sampler.pos_fraction, sampler.neg_pos_ub) == (64, 0.25, 3)
    pos_kind, neg_kind = {
        "random": (RandomSampler, RandomSampler),
        "libra": (InstanceBalancedPosSampler, IoUBalancedNegSampler),
        "iou_balanced": (RandomSampler, IoUBalancedNegSampler),
        "instance_balanced": (InstanceBalancedPosSampler, RandomSampler),
    }[kind]
    pos_owner = sampler.pos_sampler if isinstance(sampler, CombinedSampler) else sampler
    neg_owner = sampler.neg_sampler if isinstance(sampler, CombinedSampler) else sampler
    # the classes whose choice rules run (the Libra samplers inherit the random rule for the other side)
    assert type(pos_owner).sample_pos is pos_kind.sample_pos
    assert type(neg_owner).sample_neg is neg_kind.sample_neg
    if neg_kind is IoUBalancedNegSampler:
        assert (neg_owner.binning, neg_owner.neg_iou_thr) == ("paper", 0.4)  # the stage's threshold
    # the detector's call: sample(assign_result) -> (pos, neg) within the budget
    gt_inds = torch.tensor([0] * 10 + [1] * 20 + [-2] * 5 + [-1] * 200)
    mo = torch.cat([torch.full((30,), 0.7), torch.full((5,), 0.45), torch.linspace(0.0, 0.39, 200)])
    result = AssignResult(gt_inds=gt_inds, max_overlaps=mo, labels=torch.where(gt_inds >= 0, 0, -1), num_gts=2)
    torch.manual_seed(0)
    pos, neg = sampler.sample(result)
    assert pos.numel() == 16 and neg.numel() == 48  # 64 * 0.25 positives, negatives capped at 3 per positive
    assert (gt_inds[pos] >= 0).all() and (gt_inds[neg] == -1).all()
    assert pos.unique().numel() == 16 and neg.unique().numel() == 48


def test_bad_libra_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"model.roi_head.sampler.kind: unknown 'ohem'; expected one of 'random', 'libra', "
                                         r"'iou_balanced', 'instance_balanced'"):
        build_sampler(SamplerConfig(kind="ohem"), "model.roi_head", neg_iou_thr=0.5)
    with pytest.raises(ValueError, match="model.roi_head.sampler: IoUBalancedNegSampler: binning must be one of"):
        build_sampler(SamplerConfig(kind="libra", binning="log"), "model.roi_head", neg_iou_thr=0.5)
    with pytest.raises(ValueError, match=r"model.bfp.refine_level: 5 is not a level of the FPN's 4 outputs \(P3..P6\)"):
        _tiny("tiny_libra_retinanet.yaml", "model.bfp.refine_level=5")
    with pytest.raises(ValueError, match="model.bfp: BalancedFeaturePyramid: refine_type must be one of"):
        _tiny("tiny_libra_retinanet.yaml", "model.bfp.refine_type=attention")


def _full_size(name: str):
    cfg = load_config(CONFIGS / name)
    cfg.model.num_classes = 80
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert isinstance(model.necks[-1], BalancedFeaturePyramid) and model.num_classes == 80
    return model


def _check_predictions(dets, size):
    (d,) = dets
    n = d["boxes"].shape[0]
    assert d["boxes"].shape == (n, 4) and d["scores"].shape == (n,) and d["labels"].shape == (n,)
    assert d["boxes"].dtype == torch.float32 and d["labels"].dtype == torch.int64
    assert n <= 100 and torch.isfinite(d["boxes"]).all()
    if n:
        assert (d["boxes"][:, 2] <= size[1]).all() and (d["boxes"][:, 3] <= size[0]).all()
        assert ((d["labels"] >= 0) & (d["labels"] < 80)).all()


@pytest.mark.parametrize("name", ["libra_faster_rcnn_r50_fpn_1x.yaml", "libra_retinanet_r50_fpn_1x.yaml"])
def test_full_size_models_predict_at_800x1333(name):
    """R-50, random init, 80 classes, one eval forward of an 800x1333 image padded to 800x1344 as the
    1x pipeline feeds it (about 3 s each on 2 idle CPU cores; the BFP's non-local block attends over
    the 50x84 P4 positions)."""
    model = _full_size(name)
    with torch.no_grad():
        _check_predictions(model.predict(torch.randn(1, 3, 800, 1344), [(800, 1333)]), (800, 1333))
