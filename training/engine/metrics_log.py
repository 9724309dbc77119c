"""Training metrics: ``metrics.jsonl`` (one JSON object per log interval) and ``loss_curves.png``.

A record holds ``iter`` (optimizer steps done), ``epoch``, ``lr``, each weighted loss by name,
``total``, ``<name>_unweighted``, ``time`` (s/iter), ``data_time`` (s/iter waiting for data) and
``memory`` (MiB: peak CUDA memory, or the process's peak RSS on CPU); all loss values are means
over the interval (and over ranks). On resume, records past the resumed iteration (logged by
the interrupted run after its last checkpoint) are dropped so the file reads as one run.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = ["MetricsLog", "read_metrics", "plot_loss_curves"]

PathLike = Union[str, "os.PathLike[str]"]
# Keys of a record that are not loss values.
NON_LOSS_KEYS = ("iter", "epoch", "lr", "time", "data_time", "memory", "grad_norm", "eta_s")


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a killed run, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsLog:
    """Appends records to ``path`` (JSON lines). ``enabled=False`` (ranks > 0) writes nothing.

    ``resume_iter``: keep only existing records with ``iter <= resume_iter`` (None: start a new
    file, discarding any old one).
    """

    def __init__(self, *, path: PathLike, enabled: bool = True, resume_iter: Optional[int] = None) -> None:
        self.path = Path(path)
        self.enabled = bool(enabled)
        if not self.enabled:
            return
        kept = []
        if resume_iter is not None:
            kept = [r for r in read_metrics(self.path) if r.get("iter", 0) <= resume_iter]
        with open(self.path, "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")

    def write(self, record: Dict[str, Any]) -> None:
        """Append one record (non-finite floats are written as null, keeping the file valid JSON)."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()

    def records(self) -> List[Dict[str, Any]]:
        return read_metrics(self.path)

    def plot(self, out_path: PathLike) -> Optional[Path]:
        """Write the loss curves of this log to ``out_path`` (None when there is nothing to plot)."""
        if not self.enabled:
            return None
        return plot_loss_curves(self.records(), out_path)


def plot_loss_curves(records: Sequence[Dict[str, Any]], out_path: PathLike) -> Optional[Path]:
    """PNG with the weighted losses and ``total`` against ``iter`` (log scale), and ``lr`` below.

    Written to a temporary file and renamed, so a reader never sees a half-written image.
    Returns the path, or None when ``records`` is empty.
    """
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    loss_names: List[str] = []
    for r in records:
        for k in r:
            if k not in NON_LOSS_KEYS and not k.endswith("_unweighted") and k not in loss_names:
                loss_names.append(k)
    iters = [r.get("iter", i) for i, r in enumerate(records)]

    fig, (ax_loss, ax_lr) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for name in loss_names:
        pts = [(it, r[name]) for it, r in zip(iters, records) if isinstance(r.get(name), (int, float))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax_loss.plot(xs, ys, label=name, linewidth=2.0 if name == "total" else 1.2)
    positive = all(
        r[n] > 0 for r in records for n in loss_names if isinstance(r.get(n), (int, float))
    )
    if positive:
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (weighted)")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend(fontsize=8)
    lr_pts = [(it, r["lr"]) for it, r in zip(iters, records) if isinstance(r.get("lr"), (int, float))]
    if lr_pts:
        xs, ys = zip(*lr_pts)
        ax_lr.plot(xs, ys, color="black")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(True, alpha=0.3)
    fig.tight_layout()

    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out_path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return out_path
