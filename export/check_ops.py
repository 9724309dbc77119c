"""Check an ONNX graph against the TensorRT ONNX parser's documented operator support (no TensorRT needed).

``python -m export.check_ops model.onnx [--json]`` lists every op type of the graph, subgraphs
included, with the attributes that matter for TensorRT (TopK K, NonMaxSuppression limits, RoiAlign
and Resize modes), and checks each node against ``export/trt_ops.json``: the support table of
onnx-tensorrt ``docs/operators.md`` for the TensorRT version named there (10.15), plus the rules
this project's deployments rely on:

* opset of the default domain within the parser's range; no custom domain (no plugins);
* every op supported, on a supported element type (UINT8 only at the network inputs/outputs);
* TopK: ``sorted`` = 1 and K a constant (or the minimum with a constant) < 3840;
* NonMaxSuppression: ``max_output_boxes_per_class``/thresholds constants, bounded (no INT64_MAX),
  at most 5000 candidate boxes per image when the graph's shapes tell;
* If: both branches' outputs of the same rank; ScatterND without reduction; Resize modes; MaxPool
  without the Indices output; Squeeze/Unsqueeze/Reduce*/CumSum axes constants;
* no INT64_MAX / INT64_MIN integer constant anywhere (e.g. as Slice ends).

Exits 0 when the graph passes, 1 with a report naming each offending node, op and rule otherwise,
2 when the file cannot be read.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

__all__ = ["Finding", "OpsReport", "check_model", "load_rules", "main", "RULES_FILE"]

RULES_FILE = Path(__file__).with_name("trt_ops.json")
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
# onnx.TensorProto element type -> the names used in the support table
_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.STRING: "STRING",
}
_RESIZE_CTM = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODES = {"nearest", "linear"}
_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_PASS_THROUGH = {"Cast", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Expand"}


@dataclass
class Finding:
    """One problem: ``level`` "error" (the parser would reject it) or "warning" (cannot verify)."""

    level: str
    op: str
    node: str
    rule: str

    def __str__(self) -> str:
        return f"{self.level.upper()}: {self.op} (node '{self.node}'): {self.rule}"


@dataclass
class OpsReport:
    """Op inventory and findings of one graph."""

    path: str
    opset: Optional[int]
    tensorrt_version: str
    source: str
    num_nodes: int = 0
    op_counts: Dict[str, int] = field(default_factory=dict)
    details: Dict[str, List[str]] = field(default_factory=dict)
    findings: List[Finding] = field(default_factory=list)

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def format(self) -> str:
        lines = [
            f"{self.path}: opset {self.opset}, {len(self.op_counts)} op types, {self.num_nodes} nodes (subgraphs included)"
        ]
        for op in sorted(self.op_counts):
            extra = self.details.get(op)
            suffix = f"  [{'; '.join(sorted(set(extra)))}]" if extra else ""
            lines.append(f"  {op} x{self.op_counts[op]}{suffix}")
        verdict = "PASS" if self.ok else f"FAIL: {len(self.errors)} problem(s)"
        lines.append(f"TensorRT {self.tensorrt_version} ONNX parser check: {verdict}")
        for f in self.findings:
            lines.append(f"  {f}")
        return "\n".join(lines)


def load_rules(path: Union[str, Path] = RULES_FILE) -> Dict[str, Any]:
    """The support table (``export/trt_ops.json``)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _Scope:
    """Constants, producers, element types and shapes visible in a graph (outer scopes included)."""

    def __init__(self, graph: onnx.GraphProto, parent: Optional["_Scope"] = None) -> None:
        self.parent = parent
        self.constants: Dict[str, np.ndarray] = {}
        self.producers: Dict[str, onnx.NodeProto] = {}
        self.types: Dict[str, onnx.TypeProto] = {}
        for init in graph.initializer:
            self.constants[init.name] = numpy_helper.to_array(init)
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            self.types[vi.name] = vi.type
        for node in graph.node:
            for out in node.output:
                self.producers[out] = node
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(a.t)
                    elif a.name in ("value_int", "value_ints"):
                        self.constants[node.output[0]] = np.array(onnx.helper.get_attribute_value(a), dtype=np.int64)
                    elif a.name in ("value_float", "value_floats"):
                        self.constants[node.output[0]] = np.array(onnx.helper.get_attribute_value(a), dtype=np.float32)

    def constant(self, name: str) -> Optional[np.ndarray]:
        if name in self.constants:
            return self.constants[name]
        return self.parent.constant(name) if self.parent else None

    def producer(self, name: str) -> Optional[onnx.NodeProto]:
        if name in self.producers:
            return self.producers[name]
        return self.parent.producer(name) if self.parent else None

    def type_of(self, name: str) -> Optional[onnx.TypeProto]:
        if name in self.types:
            return self.types[name]
        return self.parent.type_of(name) if self.parent else None

    def elem_type(self, name: str) -> Optional[int]:
        t = self.type_of(name)
        if t is None or not t.HasField("tensor_type"):
            c = self.constant(name)
            return onnx.helper.np_dtype_to_tensor_dtype(c.dtype) if c is not None else None
        return t.tensor_type.elem_type or None

    def shape(self, name: str) -> Optional[List[Optional[int]]]:
        """Static dims (None where symbolic/unknown), or None without shape information."""
        t = self.type_of(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]

    def upper_bound(self, name: str, depth: int = 0) -> Optional[float]:
        """A constant upper bound of an integer tensor: constants, Min with a bounded input, and
        shape-preserving ops (Cast, Reshape, Squeeze, Unsqueeze...) over a bounded input."""
        c = self.constant(name)
        if c is not None:
            return float(np.max(c)) if c.size else None
        node = self.producer(name)
        if node is None or depth > 16:
            return None
        if node.op_type == "Min":
            bounds = [b for b in (self.upper_bound(i, depth + 1) for i in node.input) if b is not None]
            return min(bounds) if bounds else None
        if node.op_type in ("Max", "Concat"):
            bounds = [self.upper_bound(i, depth + 1) for i in node.input]
            return None if any(b is None for b in bounds) or not bounds else max(bounds)  # type: ignore[type-var]
        if node.op_type in _PASS_THROUGH and node.input:
            return self.upper_bound(node.input[0], depth + 1)
        return None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _subgraphs(node: onnx.NodeProto) -> Iterator[Tuple[str, onnx.GraphProto]]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(a.graphs):
                yield f"{a.name}[{i}]", g


def _fmt(v: Optional[float]) -> str:
    return "?" if v is None else str(int(v)) if float(v).is_integer() else f"{v:g}"


class _Checker:
    def __init__(self, rules: Dict[str, Any], report: OpsReport, io_names: Sequence[str]) -> None:
        self.rules = rules
        self.ops: Dict[str, Any] = rules["ops"]
        self.limits = rules.get("limits", {})
        self.report = report
        self.io_names = set(io_names)
        self.counts: Counter = Counter()
        self.details: Dict[str, List[str]] = defaultdict(list)

    def error(self, node: onnx.NodeProto, rule: str) -> None:
        self.report.findings.append(Finding("error", node.op_type, node.name or node.output[0], rule))

    def warn(self, node: onnx.NodeProto, rule: str) -> None:
        self.report.findings.append(Finding("warning", node.op_type, node.name or node.output[0], rule))

    # ------------------------------------------------------------------------------------------
    def graph(self, graph: onnx.GraphProto, parent: Optional[_Scope] = None) -> None:
        scope = _Scope(graph, parent)
        self._check_big_constants(graph, scope)
        for node in graph.node:
            self.counts[node.op_type] += 1
            self.node(node, scope)
            for _, sub in _subgraphs(node):
                self.graph(sub, scope)

    def _check_big_constants(self, graph: onnx.GraphProto, scope: _Scope) -> None:
        consumers: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for i in node.input:
                consumers[i].append(node)
        for name, value in scope.constants.items():
            if value.dtype.kind in "iu" and value.size and ((value == INT64_MAX).any() or (value == INT64_MIN).any()):
                shown = value.tolist() if value.size < 8 else "..."
                rule = (
                    f"uses INT64_MAX/INT64_MIN constant '{name}' ({shown}) as a size or index; TensorRT casts "
                    "INT64 to INT32, write the real bound instead"
                )
                for user in consumers.get(name, []):
                    self.error(user, rule)
                if not consumers.get(name):
                    self.report.findings.append(Finding("error", "Constant", name, rule.replace("uses", "holds")))

    def node(self, node: onnx.NodeProto, scope: _Scope) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            self.error(node, f"custom op of domain '{node.domain}' needs a TensorRT plugin; only standard ONNX ops are allowed")
            return
        spec = self.ops.get(op)
        version = self.rules["tensorrt_version"]
        if spec is None:
            self.error(node, f"not listed in the TensorRT {version} ONNX parser's operator table")
            return
        if not spec["supported"]:
            self.error(node, f"not supported by the TensorRT {version} ONNX parser")
            return
        self._check_type(node, spec, scope)
        check = getattr(self, f"check_{op}", None)
        if check is not None:
            check(node, scope)
        elif op.startswith("Reduce"):  # axes (an input since opset 13/18) must be a constant
            self._axes_constant(node, scope, 1)

    def _check_type(self, node: onnx.NodeProto, spec: Dict[str, Any], scope: _Scope) -> None:
        idx = spec.get("type_input", 0)
        if node.op_type in ("Constant", "ConstantOfShape") or len(node.input) <= idx or not node.input[idx]:
            return
        name = node.input[idx]
        et = scope.elem_type(name)
        if et is None:
            return
        tname = _TYPE_NAMES.get(et, str(et))
        allowed = spec.get("types", [])
        if tname == "DOUBLE":
            self.warn(node, "DOUBLE input: TensorRT casts it down to FLOAT")
        elif tname in self.rules.get("io_only_types", []) and name not in self.io_names:
            self.error(node, f"{tname} input '{name}': {tname} is supported only as a network input or output")
        elif allowed and tname not in allowed:
            self.error(node, f"input '{name}' of type {tname} is not supported (supported: {', '.join(allowed)})")

    # --- op-specific rules --------------------------------------------------------------------
    def check_Cast(self, node: onnx.NodeProto, scope: _Scope) -> None:
        to = _TYPE_NAMES.get(_attr(node, "to"), str(_attr(node, "to")))
        if to in self.rules.get("io_only_types", []) and node.output[0] not in self.io_names:
            self.error(node, f"casts to {to}, which TensorRT supports only as a network input or output")
        elif to == "DOUBLE":
            self.warn(node, "casts to DOUBLE: TensorRT casts it down to FLOAT")

    def check_TopK(self, node: onnx.NodeProto, scope: _Scope) -> None:
        limit = int(self.limits.get("topk_max_k_exclusive", 3840))
        if int(_attr(node, "sorted", 1)) != 1:
            self.error(node, "TopK needs sorted=1 in TensorRT")
        bound = scope.upper_bound(node.input[1]) if len(node.input) > 1 else float(_attr(node, "k", 0))
        self.details["TopK"].append(f"K<={_fmt(bound)}")
        if bound is None:
            self.error(node, f"K ('{node.input[1]}') is computed in the graph with no constant bound; TensorRT needs K < {limit}")
        elif bound >= limit:
            self.error(node, f"K = {_fmt(bound)} but TensorRT needs K < {limit}")

    def check_NonMaxSuppression(self, node: onnx.NodeProto, scope: _Scope) -> None:
        names = ["boxes", "scores", "max_output_boxes_per_class", "iou_threshold", "score_threshold"]
        values: Dict[str, Optional[np.ndarray]] = {}
        for i, n in enumerate(names[2:], start=2):
            if len(node.input) > i and node.input[i]:
                values[n] = scope.constant(node.input[i])
                if values[n] is None:
                    self.error(node, f"input {n} ('{node.input[i]}') must be a constant (initializer)")
            elif n == "max_output_boxes_per_class":
                self.error(node, "max_output_boxes_per_class is missing (0 = no boxes); give a constant bound")
        max_out = values.get("max_output_boxes_per_class")
        if max_out is not None and max_out.size and int(max_out.max()) >= 2**31 - 1:
            self.error(node, f"max_output_boxes_per_class = {int(max_out.max())} is unbounded; use the real per-class limit")
        boxes = scope.shape(node.input[0])
        candidates = boxes[1] if boxes is not None and len(boxes) == 3 else None
        limit = int(self.limits.get("nms_max_candidates", 5000))
        iou = values.get("iou_threshold")
        self.details["NonMaxSuppression"].append(
            f"max_output_boxes_per_class={_fmt(None if max_out is None else float(max_out.max()))}, "
            f"iou_threshold={_fmt(None if iou is None else float(iou.max()))}, boxes per image={_fmt(candidates)}"
        )
        if candidates is None:
            self.warn(node, f"cannot tell the number of candidate boxes per image (TensorRT's limit is {limit})")
        elif candidates > limit:
            self.error(node, f"{candidates} candidate boxes per image; TensorRT's NMS takes at most {limit}")

    def check_If(self, node: onnx.NodeProto, scope: _Scope) -> None:
        branches = dict(_subgraphs(node))
        then_g, else_g = branches.get("then_branch"), branches.get("else_branch")
        if then_g is None or else_g is None:
            return
        for i, (a, b) in enumerate(zip(then_g.output, else_g.output)):
            if a.name == b.name:
                self.error(node, f"output {i}: both branches name it '{a.name}'; TensorRT needs different names")
            ra = len(a.type.tensor_type.shape.dim) if a.type.tensor_type.HasField("shape") else None
            rb = len(b.type.tensor_type.shape.dim) if b.type.tensor_type.HasField("shape") else None
            if ra is None or rb is None:
                self.warn(node, f"output {i}: branch ranks unknown; TensorRT needs the same rank in both branches")
            elif ra != rb:
                self.error(node, f"output {i}: then-branch rank {ra} != else-branch rank {rb}; TensorRT needs the same rank")

    def check_ScatterND(self, node: onnx.NodeProto, scope: _Scope) -> None:
        if _attr(node, "reduction", "none") != "none":
            self.error(node, f"reduction '{_attr(node, 'reduction')}' is not supported (only 'none')")

    def check_Resize(self, node: onnx.NodeProto, scope: _Scope) -> None:
        mode = _attr(node, "mode", "nearest")
        ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
        nearest = _attr(node, "nearest_mode", "round_prefer_floor")
        self.details["Resize"].append(f"mode={mode}, coordinate_transformation_mode={ctm}" + (f", nearest_mode={nearest}" if mode == "nearest" else ""))
        if mode not in _RESIZE_MODES:
            self.error(node, f"mode '{mode}' is not supported (nearest, linear)")
        if ctm not in _RESIZE_CTM:
            self.error(node, f"coordinate_transformation_mode '{ctm}' is not supported ({', '.join(sorted(_RESIZE_CTM))})")
        if mode == "nearest" and nearest not in _NEAREST_MODES:
            self.error(node, f"nearest_mode '{nearest}' is not supported ({', '.join(sorted(_NEAREST_MODES))})")
        if int(_attr(node, "antialias", 0)):
            self.error(node, "antialias is not supported")
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            self.error(node, "keep_aspect_ratio_policy must be 'stretch'")

    def check_RoiAlign(self, node: onnx.NodeProto, scope: _Scope) -> None:
        mode = _attr(node, "mode", "avg")
        ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
        self.details["RoiAlign"].append(
            f"mode={mode}, coordinate_transformation_mode={ctm}, sampling_ratio={_attr(node, 'sampling_ratio', 0)}, "
            f"output={_attr(node, 'output_height', 1)}x{_attr(node, 'output_width', 1)}"
        )
        if mode not in ("avg", "max"):
            self.error(node, f"mode '{mode}' is not supported (avg, max)")

    def check_MaxPool(self, node: onnx.NodeProto, scope: _Scope) -> None:
        if len(node.output) > 1 and node.output[1]:
            self.error(node, "the Indices output is not supported")
        if any(int(d) != 1 for d in _attr(node, "dilations", []) or []):
            self.error(node, "dilations must be empty or all ones")

    check_AveragePool = check_MaxPool

    def _axes_constant(self, node: onnx.NodeProto, scope: _Scope, index: int, what: str = "axes") -> None:
        if len(node.input) > index and node.input[index] and scope.constant(node.input[index]) is None:
            self.error(node, f"{what} ('{node.input[index]}') must be a constant")

    def check_Squeeze(self, node: onnx.NodeProto, scope: _Scope) -> None:
        self._axes_constant(node, scope, 1)

    check_Unsqueeze = check_Squeeze

    def check_CumSum(self, node: onnx.NodeProto, scope: _Scope) -> None:
        self._axes_constant(node, scope, 1, "axis")

    def check_Dropout(self, node: onnx.NodeProto, scope: _Scope) -> None:
        if len(node.input) > 2 and node.input[2]:
            mode = scope.constant(node.input[2])
            if mode is None or bool(mode.any()):
                self.error(node, "training_mode must be a constant False")



def check_model(model: Union[str, Path, onnx.ModelProto], rules: Optional[Dict[str, Any]] = None) -> OpsReport:
    """Inventory and TensorRT checks of ``model`` (a path or a ModelProto); see the module docstring."""
    path = "<model>"
    if not isinstance(model, onnx.ModelProto):
        path = str(model)
        model = onnx.load(path)
    rules = rules or load_rules()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    report = OpsReport(path=path, opset=opset, tensorrt_version=rules["tensorrt_version"], source=rules["source"])
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # noqa: BLE001 - a graph shape inference rejects is still worth listing
        report.findings.append(Finding("warning", "<graph>", "<graph>", f"ONNX shape inference failed ({e}); type checks limited"))
        inferred = model
    low, high = rules["opset_range"]
    if opset is None or not low <= opset <= high:
        report.findings.append(
            Finding("error", "<model>", "<opset>", f"opset {opset} is outside TensorRT {rules['tensorrt_version']}'s range {low}..{high}")
        )
    for o in model.opset_import:
        if o.domain not in ("", "ai.onnx"):
            report.findings.append(Finding("error", "<model>", "<opset>", f"custom domain '{o.domain}' imported (needs plugins)"))
    io_names = [v.name for v in list(model.graph.input) + list(model.graph.output)]
    checker = _Checker(rules, report, io_names)
    checker.graph(inferred.graph)
    report.op_counts = dict(checker.counts)
    report.num_nodes = sum(checker.counts.values())
    report.details = dict(checker.details)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.check_ops",
        description="List the ops of an ONNX graph and check them against the TensorRT ONNX parser's documented support.",
    )
    parser.add_argument("model", help="path to an .onnx file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--rules", default=str(RULES_FILE), help="support table (default: export/trt_ops.json)")
    args = parser.parse_args(argv)
    try:
        model = onnx.load(args.model)
        rules = load_rules(args.rules)
    except (OSError, ValueError, DecodeError) as e:
        print(f"{args.model}: cannot read the ONNX model: {e}", file=sys.stderr)
        return 2
    report = check_model(model, rules)
    report.path = args.model
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
