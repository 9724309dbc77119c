"""``libra-bench``: latency and COCO accuracy of one model on one backend, and the torchvision peer.

    libra-bench latency MODEL [--backend auto|torch|onnxruntime|tensorrt] [--batch 1,4]
                        [--size 800x1333] [--warmup 3] [--iters 20] [--threads N] [--device cpu|cuda]
                        [--images DIR] [--json FILE] [--md FILE]
    libra-bench accuracy MODEL --data ANN_JSON --images DIR [--backend ...] [--reference CHECKPOINT]
                        [--batch 1] [--max-images N] [--threads N] [--device ...] [--json FILE] [--md FILE]
    libra-bench peer [--backend torch|onnxruntime] [--onnx FILE] [--size 800x1333] [--batch 1]
                     [--warmup 1] [--iters 5] [--threads N] [--device ...] [--json FILE] [--md FILE]

MODEL is a checkpoint (.pth, torch backend), an exported ``model.onnx`` (or its folder) or a
TensorRT engine. The markdown of the result is printed; ``--json`` / ``--md`` also write it.
``make bench`` (``python -m runtime.bench.suite``) runs these for every model and backend.
Exit status: 0 done, 2 bad arguments or a model/data file that cannot be used (the message names it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from runtime.bench.latency import parse_batches, parse_size

__all__ = ["build_parser", "main", "write_json"]


def write_json(record: Mapping[str, Any], path: "os.PathLike[str] | str") -> Path:
    """Write ``record`` as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def _size(text: str) -> tuple:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _batches(text: str) -> list:
    try:
        return parse_batches(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common(p: argparse.ArgumentParser, *, backends: Sequence[str]) -> None:
    p.add_argument("--backend", default=backends[0], choices=list(backends))
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op CPU threads (torch.set_num_threads / ONNX Runtime); default: available cores")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the record as JSON")
    p.add_argument("--md", type=Path, default=None, metavar="FILE", help="write the markdown table")
    p.add_argument("--quiet", action="store_true", help="do not print the markdown")


def _timing(p: argparse.ArgumentParser, *, batch: str, warmup: int, iters: int) -> None:
    p.add_argument("--batch", type=_batches, default=parse_batches(batch), help=f"batch sizes, e.g. 1,4 (default {batch})")
    p.add_argument("--size", type=_size, default=(800, 1333), metavar="HxW",
                   help="height x width of the synthetic input images (default 800x1333)")
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed iterations per batch size (default {warmup})")
    p.add_argument("--iters", type=int, default=iters, help=f"timed iterations per batch size (default {iters})")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    p.add_argument("--pool", type=int, default=8, help="distinct input images cycled through (default 8)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="libra-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    lat = sub.add_parser("latency", help="latency percentiles, throughput, memory, pre/infer/post split")
    lat.add_argument("model", type=Path, help="checkpoint (.pth), model.onnx (or its folder) or engine")
    _common(lat, backends=("auto", "torch", "onnxruntime", "tensorrt"))
    _timing(lat, batch="1", warmup=3, iters=20)
    lat.add_argument("--images", type=Path, default=None, metavar="DIR",
                     help="time on the image files of DIR (first --pool) instead of synthetic images")

    acc = sub.add_parser("accuracy", help="COCO box AP (6 numbers) and the delta to a PyTorch reference")
    acc.add_argument("model", type=Path, help="checkpoint (.pth), model.onnx (or its folder) or engine")
    _common(acc, backends=("auto", "torch", "onnxruntime", "tensorrt"))
    acc.add_argument("--data", type=Path, required=True, metavar="ANN_JSON", help="COCO annotation file")
    acc.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of its images")
    acc.add_argument("--reference", type=Path, default=None, metavar="CHECKPOINT",
                     help="PyTorch checkpoint scored on the torch backend; the delta is MODEL - reference")
    acc.add_argument("--batch", type=int, default=1, help="images per predict call (default 1)")
    acc.add_argument("--max-images", type=int, default=None, help="score only the first N images (by id)")

    peer = sub.add_parser("peer", help="torchvision fasterrcnn_resnet50_fpn (random weights) latency")
    _common(peer, backends=("torch", "onnxruntime"))
    _timing(peer, batch="1", warmup=1, iters=5)
    peer.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                      help="the peer's ONNX file (exported there first when missing); needed for onnxruntime")
    peer.add_argument("--score-thresh", type=float, default=0.05, help="box_score_thresh (default 0.05)")
    peer.add_argument("--min-size", type=int, default=800)
    peer.add_argument("--max-size", type=int, default=1333)
    return parser


def _timing_kwargs(args: argparse.Namespace) -> dict:
    return dict(batch_sizes=args.batch, size=args.size, warmup=args.warmup, iters=args.iters,
                pool=args.pool, seed=args.seed)


def _emit(record: Mapping[str, Any], args: argparse.Namespace, render: Callable[[Mapping[str, Any]], str]) -> None:
    text = render(record)
    if args.json is not None:
        write_json(record, args.json)
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text, encoding="utf-8")
    if not args.quiet:
        print(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.backends.base import ModelLoadError
    from runtime.bench import report

    try:
        if args.command == "latency":
            if args.iters < 1 or args.warmup < 0:
                raise ValueError(f"--iters must be >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}")
            from runtime.bench.latency import run_latency

            record = run_latency(args.model, backend=args.backend, device=args.device, threads=args.threads,
                                 images_dir=args.images, **_timing_kwargs(args))
            _emit(record, args, report.latency_markdown)
        elif args.command == "accuracy":
            from runtime.bench.accuracy import run_accuracy

            record = run_accuracy(args.model, ann_file=args.data, images_dir=args.images, backend=args.backend,
                                  device=args.device, threads=args.threads, batch_size=args.batch,
                                  max_images=args.max_images, reference=args.reference)
            _emit(record, args, report.accuracy_markdown)
        else:
            if args.iters < 1 or args.warmup < 0:
                raise ValueError(f"--iters must be >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}")
            from runtime.bench.peer import run_peer_latency

            record = run_peer_latency(args.backend, device=args.device, threads=args.threads, onnx_path=args.onnx,
                                      score_thresh=args.score_thresh, min_size=args.min_size,
                                      max_size=args.max_size, **_timing_kwargs(args))
            _emit(record, args, report.latency_markdown)
    except (ModelLoadError, ValueError) as exc:
        print(f"libra-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
