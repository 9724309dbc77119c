"""Training metrics: ``metrics.jsonl`` (one JSON object per log interval) and ``loss_curves.png``.

A record holds ``iter`` (optimizer steps done), ``epoch``, ``lr``, each weighted loss by name,
``total``, ``<name>_unweighted``, ``time`` (s/iter), ``data_time`` (s/iter waiting for data) and
``memory`` (MiB: peak CUDA memory, or the process's peak RSS on CPU); all loss values are means
over the interval (and over ranks). ``grad_norm`` is the parameter-gradient norm before clipping
(with ``train.grad_clip`` only). Detectors with necks add ``grad_norm/<name>``: the L2 norm of the
gradient the weighted loss sends into the shared features, measured on the logged update only (not
a mean over the interval) and averaged over ranks. On resume, records past the resumed iteration
(logged by the interrupted run after its last checkpoint) are dropped so the file reads as one run.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["MetricsLog", "read_metrics", "plot_loss_curves", "curve_names", "FEATURE_GRAD_PREFIX"]

PathLike = Union[str, "os.PathLike[str]"]
# Keys of a record that are not loss values.
NON_LOSS_KEYS = ("iter", "epoch", "lr", "time", "data_time", "memory", "grad_norm", "eta_s")
# Prefix of the per-loss gradient norms into the shared features (``grad_norm/<loss name>``).
FEATURE_GRAD_PREFIX = "grad_norm/"


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


def curve_names(records: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[str]]:
    """``(loss names, loss names with a grad_norm/<name> value)`` in first-seen order: the series
    of the loss panel and of the feature-gradient panel of :func:`plot_loss_curves`."""
    loss_names: List[str] = []
    grad_names: List[str] = []
    for r in records:
        for k in r:
            if k.startswith(FEATURE_GRAD_PREFIX):
                name = k[len(FEATURE_GRAD_PREFIX):]
                if name not in grad_names:
                    grad_names.append(name)
            elif k not in NON_LOSS_KEYS and not k.endswith("_unweighted") and k not in loss_names:
                loss_names.append(k)
    return loss_names, grad_names


def plot_loss_curves(records: Sequence[Dict[str, Any]], out_path: PathLike) -> Optional[Path]:
    """PNG with the weighted losses and ``total`` against ``iter`` (log scale); when the records
    hold ``grad_norm/<loss>`` values, a panel of those ("grad norm into shared features", log
    scale, each loss in its colour of the loss panel); ``lr`` at the bottom.

    Written to a temporary file and renamed, so a reader never sees a half-written image.
    Returns the path, or None when ``records`` is empty.
    """
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    loss_names, grad_names = curve_names(records)
    names = loss_names + [n for n in grad_names if n not in loss_names]
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}  # a loss keeps its colour in both panels
    iters = [r.get("iter", i) for i, r in enumerate(records)]

    ratios = [3, 2, 1] if grad_names else [3, 1]
    fig, axes = plt.subplots(
        len(ratios), 1, figsize=(8, 2 + sum(ratios)), sharex=True,
        gridspec_kw={"height_ratios": ratios},
    )
    ax_loss, ax_lr = axes[0], axes[-1]
    for name in loss_names:
        pts = [(it, r[name]) for it, r in zip(iters, records) if isinstance(r.get(name), (int, float))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax_loss.plot(xs, ys, label=name, color=colors[name], linewidth=2.0 if name == "total" else 1.2)
    positive = all(
        r[n] > 0 for r in records for n in loss_names if isinstance(r.get(n), (int, float))
    )
    if positive:
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (weighted)")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend(fontsize=8)
    if grad_names:
        in_loss_order = [n for n in names if n in grad_names]  # (DDP's all-reduce sorts the keys)
        _plot_feature_grad_norms(axes[1], records, iters, in_loss_order, colors)
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


def _plot_feature_grad_norms(ax: Any, records: Sequence[Dict[str, Any]], iters: Sequence[int],
                             names: Sequence[str], colors: Dict[str, str]) -> None:
    """One line per ``grad_norm/<name>`` on a log axis; zeros (a loss that does not reach the
    features) and nulls (non-finite norms) have no place on it and are left out."""
    for name in names:
        key = FEATURE_GRAD_PREFIX + name
        pts = [(it, r[key]) for it, r in zip(iters, records)
               if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and r[key] > 0]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=name, color=colors[name], linewidth=1.2)
    ax.set_yscale("log")
    ax.set_ylabel("grad norm into shared features", fontsize=8)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=8)
