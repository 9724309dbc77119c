"""Optional graph simplification: ONNX Runtime's basic, provider-independent optimisations.

``simplify_onnx(src, dst)`` loads the graph in an ONNX Runtime session with
``GraphOptimizationLevel.ORT_ENABLE_BASIC`` and writes the optimised graph: constant folding,
redundant-node elimination (Identity, duplicate Shape/Constant subgraphs) and the like. Basic-level
rewrites keep standard ONNX ops only (no ORT-specific fused ops), so the result still passes
``onnx.checker`` and ``export.check_ops``; ``export_model`` verifies both afterwards.
(onnxsim / onnxslim would do more but are not dependencies of this project.)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import onnx

__all__ = ["simplify_onnx"]

PathLike = Union[str, "os.PathLike[str]"]


def simplify_onnx(src: PathLike, dst: PathLike) -> Path:
    """Write the basic-optimised graph of ``src`` to ``dst`` (may be the same path); returns ``dst``."""
    import onnxruntime as ort

    src, dst = Path(src), Path(dst)
    before = onnx.load(str(src), load_external_data=False)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=dst.parent)
    os.close(fd)
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = tmp
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        after = onnx.load(tmp)
        # ORT writes its own producer and may add opset imports of its domains when unused; keep ours
        after.producer_name, after.producer_version = before.producer_name, before.producer_version
        used = {n.domain for n in after.graph.node}
        keep = [o for o in after.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
        del after.opset_import[:]
        after.opset_import.extend(keep)
        onnx.save(after, str(dst))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst
