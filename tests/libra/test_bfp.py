"""Balanced Feature Pyramid: reference equality, exportable plain ops, refine types, init, ONNX."""
from __future__ import annotations

import inspect
import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.models.necks.bfp import BalancedFeaturePyramid, adaptive_max_pool2d_plain, interpolate_nearest_plain
from training.models.necks.non_local import NonLocal2d

# padded input sizes the data pipeline produces (multiples of 32); 800x1344 is 800x1333 padded
SIZES = [(320, 320), (320, 480), (800, 1344), (608, 800)]


def pyramid(h: int, w: int, *, channels: int = 4, levels: int = 5, stride: int = 4, batch: int = 1, seed: int = 0):
    """Random FPN-like maps: the first at ``stride``, each next one ceil(previous / 2) (ResNet/FPN/P6)."""
    g = torch.Generator().manual_seed(seed)
    hh, ww = -(-h // stride), -(-w // stride)
    out = []
    for _ in range(levels):
        out.append(torch.randn(batch, channels, hh, ww, generator=g))
        hh, ww = -(-hh // 2), -(-ww // 2)
    return out


def reference_bfp(inputs, refine_level, refine):
    """mmdetection's BFP forward, written out with its adaptive pooling and nearest interpolation."""
    gather_size = inputs[refine_level].shape[2:]
    feats = []
    for i, x in enumerate(inputs):
        if i < refine_level:
            feats.append(F.adaptive_max_pool2d(x, output_size=gather_size))
        else:
            feats.append(F.interpolate(x, size=gather_size, mode="nearest"))
    bsf = sum(feats) / len(feats)
    if refine is not None:
        bsf = refine(bsf)
    outs = []
    for i, x in enumerate(inputs):
        if i < refine_level:
            residual = F.interpolate(bsf, size=x.shape[2:], mode="nearest")
        else:
            residual = F.adaptive_max_pool2d(bsf, output_size=x.shape[2:])
        outs.append(residual + x)
    return outs


def assert_all_close(outs, refs, atol=1e-6):
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape
        torch.testing.assert_close(o, r, rtol=0, atol=atol)


@pytest.mark.parametrize("refine_type", ["non_local", "conv", None])
def test_matches_reference_form(refine_type):
    """The plain-op BFP (one code path for training and export) equals the reference's adaptive ops."""
    torch.manual_seed(0)
    bfp = BalancedFeaturePyramid(in_channels=4, num_levels=5, refine_level=2, refine_type=refine_type).eval()
    # the resizing differs by size; the (costly at 800x1344) non-local block does not
    for h, w in SIZES if refine_type != "non_local" else [(320, 480), (608, 800)]:
        inputs = pyramid(h, w)
        with torch.no_grad():
            outs = bfp(inputs)
            refs = reference_bfp(inputs, 2, bfp.refine)
        assert [o.shape for o in outs] == [x.shape for x in inputs]
        assert_all_close(outs, refs)


def test_retinanet_levels_refine_p4():
    """Libra RetinaNet: P3..P7 (stride 8..128), refine_level 1 = P4."""
    bfp = BalancedFeaturePyramid(in_channels=4, num_levels=5, refine_level=1, refine_type="conv").eval()
    for h, w in SIZES:
        inputs = pyramid(h, w, stride=8, batch=2)
        with torch.no_grad():
            assert_all_close(bfp(inputs), reference_bfp(inputs, 1, bfp.refine))


def test_plain_ops_equal_adaptive_pool_and_nearest_exhaustively():
    """Every size a ceil-halving pyramid can give, factors 1..8 apart, both directions."""
    torch.manual_seed(0)
    for k in (1, 2, 4, 8):
        for n in range(1, 100):
            out = -(-n // k)
            x = torch.randn(1, 1, n, n + 3)
            size = (out, -(-(n + 3) // k))
            assert torch.equal(adaptive_max_pool2d_plain(x, size, max_ratio=k), F.adaptive_max_pool2d(x, size)), (k, n)
            y = torch.randn(1, 1, *size)
            up = F.interpolate(y, size=(n, n + 3), mode="nearest")
            assert torch.equal(interpolate_nearest_plain(y, (n, n + 3)), up), (k, n)
            assert torch.equal(interpolate_nearest_plain(x, size), F.interpolate(x, size=size, mode="nearest")), (k, n)


def test_fixed_kernel_max_pool_is_not_enough_for_ceil_rounded_levels():
    """Why the sparse-table pooling: for 608x800 the P4 -> P6 pooling (38x50 -> 10x13) has overlapping
    adaptive bins, which max_pool2d(4, 4, ceil_mode=True) does not reproduce; for 800x1344 it does."""
    x = torch.randn(1, 3, 38, 50)
    ceil_pool = F.max_pool2d(x, 4, 4, ceil_mode=True)
    assert ceil_pool.shape[-2:] == (10, 13)
    assert not torch.equal(ceil_pool, F.adaptive_max_pool2d(x, (10, 13)))
    assert torch.equal(adaptive_max_pool2d_plain(x, (10, 13), max_ratio=4), F.adaptive_max_pool2d(x, (10, 13)))
    x = torch.randn(1, 3, 50, 84)  # 800x1344: P4 50x84 -> P6 13x21 (84 = 4 * 21 but 50 is not 4 * 13)
    assert torch.equal(adaptive_max_pool2d_plain(x, (13, 21), max_ratio=4), F.adaptive_max_pool2d(x, (13, 21)))
    x = torch.randn(1, 3, 80, 84)  # exact multiples: the plain form equals a fixed-kernel max pool
    assert torch.equal(adaptive_max_pool2d_plain(x, (20, 21), max_ratio=4), F.max_pool2d(x, 4, 4))


def test_plain_pool_rejects_ratios_beyond_its_bound():
    msg = r"pooling \(64, 64\) to \(4, 4\) needs bins up to 16 long, more than max_ratio=4"
    with pytest.raises(ValueError, match=msg):
        adaptive_max_pool2d_plain(torch.zeros(1, 1, 64, 64), (4, 4), max_ratio=4)


def _xavier_bound(conv: nn.Conv2d) -> float:
    rf = conv.kernel_size[0] * conv.kernel_size[1]
    return math.sqrt(6.0 / (conv.in_channels * rf + conv.out_channels * rf))


@pytest.mark.parametrize("refine_type", ["non_local", "conv"])
def test_default_init_is_xavier_on_every_conv(refine_type):
    torch.manual_seed(0)
    bfp = BalancedFeaturePyramid(in_channels=32, num_levels=5, refine_type=refine_type)
    convs = [m for m in bfp.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == (4 if refine_type == "non_local" else 1)
    for conv in convs:
        bound = _xavier_bound(conv)
        assert conv.weight.abs().max() <= bound
        # PyTorch's default init is bounded by 1/sqrt(fan_in), well below the Xavier bound here
        assert conv.weight.abs().max() > 0.9 * bound > 1.2 / math.sqrt(conv.in_channels * conv.kernel_size[0] ** 2)
        assert torch.count_nonzero(conv.bias) == 0
    if refine_type == "non_local":  # Xavier overrides the non-local block's zero output conv
        assert torch.count_nonzero(bfp.refine.conv_out.weight) > 0


def test_zero_nonlocal_out_init_makes_refine_the_identity():
    torch.manual_seed(0)
    bfp = BalancedFeaturePyramid(in_channels=16, num_levels=5, init="zero_nonlocal_out").eval()
    assert isinstance(bfp.refine, NonLocal2d)
    assert torch.count_nonzero(bfp.refine.conv_out.weight) == 0
    assert bfp.refine.g.weight.std().item() == pytest.approx(0.01, rel=0.1)
    plain = BalancedFeaturePyramid(in_channels=16, num_levels=5, refine_type=None).eval()
    inputs = pyramid(256, 320, channels=16)
    with torch.no_grad():
        assert_all_close(bfp(inputs), plain(inputs), atol=0)
        # integration only still changes every level (the averaged map is added as a residual)
        assert all(not torch.allclose(o, x) for o, x in zip(plain(inputs), inputs))


def test_refine_types_and_parameters():
    no_refine = BalancedFeaturePyramid(in_channels=8, num_levels=5, refine_type=None)
    assert sum(p.numel() for p in no_refine.parameters()) == 0
    assert BalancedFeaturePyramid(in_channels=8, num_levels=5, refine_type="none").refine is None
    conv = BalancedFeaturePyramid(in_channels=8, num_levels=5, refine_type="conv").eval()
    # "conv": 3x3 conv with bias, then ReLU (mmdetection's ConvModule without norm)
    x = torch.randn(1, 8, 5, 6)
    c = conv.refine[0]
    assert c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None
    torch.testing.assert_close(conv.refine(x), F.relu(F.conv2d(x, c.weight, c.bias, padding=1)))
    nl = BalancedFeaturePyramid(in_channels=8, num_levels=5).refine
    assert isinstance(nl, NonLocal2d) and nl.inter_channels == 8 and not nl.use_scale


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="need 0 <= refine_level < num_levels, got 5 and 5"):
        BalancedFeaturePyramid(in_channels=8, num_levels=5, refine_level=5)
    with pytest.raises(ValueError, match="refine_type must be one of"):
        BalancedFeaturePyramid(in_channels=8, num_levels=5, refine_type="attention")
    with pytest.raises(ValueError, match="init must be one of"):
        BalancedFeaturePyramid(in_channels=8, num_levels=5, init="kaiming")
    with pytest.raises(ValueError, match="expected 5 levels, got 4"):
        BalancedFeaturePyramid(in_channels=4, num_levels=5)(pyramid(64, 64, levels=4))


# the TorchScript-based exporter (the default before torch 2.9, which added ``dynamo``)
TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}

# Plain ops the exported graph may contain; anything else (adaptive pooling, ATen fallbacks) fails.
ALLOWED_ONNX_OPS = {
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Floor", "Cast", "Clip", "Where", "GreaterOrEqual",
    "Conv", "Relu", "MatMul", "Softmax", "MaxPool", "Resize", "Pad", "Gather", "Range",
    "Shape", "Reshape", "Transpose", "Slice", "Concat", "Unsqueeze", "Squeeze", "Expand",
    "Constant", "ConstantOfShape", "Identity",
}


@pytest.mark.parametrize(
    "refine_type,stride,refine_level", [("non_local", 4, 2), ("conv", 4, 2), ("non_local", 8, 1)],
    ids=["faster_nonlocal", "faster_conv", "retina_nonlocal"],
)
def test_onnx_export_runs_at_other_sizes(refine_type, stride, refine_level):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    bfp = BalancedFeaturePyramid(
        in_channels=8, num_levels=5, refine_level=refine_level, refine_type=refine_type
    ).eval()
    names = [f"p{i}" for i in range(5)]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            bfp,
            (pyramid(320, 480, channels=8, stride=stride),),
            buf,
            opset_version=17,
            input_names=names,
            output_names=[f"out{i}" for i in range(5)],
            dynamic_axes={n: {0: "batch", 2: f"h{i}", 3: f"w{i}"} for i, n in enumerate(names)},
            **TORCHSCRIPT_EXPORTER,
        )
    model = onnx.load_from_string(buf.getvalue())
    ops = {node.op_type for node in model.graph.node}
    assert not any("adaptive" in op.lower() or op in ("ATen", "GlobalMaxPool") for op in ops), ops
    assert ops <= ALLOWED_ONNX_OPS, f"unexpected ONNX ops: {sorted(ops - ALLOWED_ONNX_OPS)}"
    assert "MaxPool" in ops and "Gather" in ops
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for (h, w), batch in [((608, 800), 2), ((800, 1344), 1)]:  # not the export size; 608x800 ceil-rounds P6/P7
        inputs = pyramid(h, w, channels=8, stride=stride, batch=batch, seed=1)
        got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
        with torch.no_grad():
            refs = reference_bfp(inputs, refine_level, bfp.refine)
        for g, r in zip(got, refs):
            assert g.shape == tuple(r.shape)
            assert float(abs(torch.from_numpy(g) - r).max()) < 1e-4
