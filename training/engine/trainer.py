"""The training loop: iteration-based SGD over an epoch-ordered loader, exact to resume.

Progress is ``TrainState(iteration, epoch, batch_in_epoch)``. The loader's order and
augmentations are a pure function of ``(seed, epoch)`` (:mod:`training.data.loader`), the
learning rate a function of ``iteration`` (:mod:`training.engine.lr_schedule`), and checkpoints
carry every RNG state, so a run resumed from a checkpoint computes bit-for-bit what the
uninterrupted run computes (on CPU; on GPU up to non-deterministic kernels).

Per update: move the batch to the device, set ``lr(iteration)``, forward under autocast (AMP on
CUDA only), sum the weighted loss dict, stop with :class:`NonFiniteLossError` on a NaN/inf loss
(before touching the weights, so the last checkpoint stays the latest good state), backward
through the GradScaler, optionally clip the gradient norm, step.

On logging updates only, before the backward pass, each loss's gradient norm into the shared
features (the last neck's outputs) is measured with :mod:`training.tools.grad_balance` and logged
as ``grad_norm/<loss>``: the objective-level balance that Balanced L1 changes. It differentiates
with respect to activations only (no parameter ``.grad`` is written, no random number is drawn),
so training computes the same updates whether or not it logs.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from tqdm import tqdm

from training.engine.checkpointer import Checkpointer, capture_rng_state, restore_rng_state
from training.engine.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    unwrap_model,
)
from training.engine.lr_schedule import LrSchedule, set_lr
from training.engine.metrics_log import MetricsLog
from training.tools.grad_balance import FeatureTap, grad_norm_records, loss_grad_norms, shared_features_module

__all__ = ["TrainState", "NonFiniteLossError", "Trainer", "build_optimizer", "DEBUG_PAUSE_ENV"]

logger = logging.getLogger(__name__)

# Test hook: ``LIBRA_TRAIN_DEBUG_PAUSE_AT_ITER=N`` makes update N (1-based) print a line to stderr
# after its backward pass and sleep until the process is killed, so a test can SIGKILL a run at a
# known point mid-iteration (see tests/engine/test_resume.py).
DEBUG_PAUSE_ENV = "LIBRA_TRAIN_DEBUG_PAUSE_AT_ITER"


@dataclass
class TrainState:
    """Where training stands: ``iteration`` updates done; the next batch is batch
    ``batch_in_epoch`` (0-based) of epoch ``epoch``."""

    iteration: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the message holds the iteration and the loss dict."""


def build_optimizer(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the trainable parameters of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _to_device(target: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
        for k, v in target.items()
    }


def _memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # POSIX only
    except ImportError:
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _format_losses(values: Dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:.6g}" for k, v in values.items()) + "}"


def _debug_pause_iter() -> Optional[int]:
    raw = os.environ.get(DEBUG_PAUSE_ENV)
    return int(raw) if raw else None


def _pause_until_killed(iteration: int) -> None:
    """The test hook of :data:`DEBUG_PAUSE_ENV`: announce the pause (with the pid, for the test
    to kill) and wait; exit if orphaned, so a failed test leaves no process behind."""
    parent = os.getppid()
    print(f"debug: paused in iteration {iteration} (pid {os.getpid()})", file=sys.stderr, flush=True)
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


class _Window:
    """Sums of the values logged over one log interval."""

    def __init__(self) -> None:
        self.sums: Dict[str, float] = {}
        self.count = 0
        self.time = 0.0
        self.data_time = 0.0

    def add(self, values: Dict[str, float], iter_time: float, data_time: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.time += iter_time
        self.data_time += data_time

    def means(self) -> Dict[str, float]:
        n = max(self.count, 1)
        out = {k: v / n for k, v in self.sums.items()}
        out["time"] = self.time / n
        out["data_time"] = self.data_time / n
        return out


def _feature_tap(model: nn.Module) -> Optional[FeatureTap]:
    """A tap on the features every head reads (the last neck), or None for a model without necks."""
    try:
        return FeatureTap(shared_features_module(model))  # unwraps DDP itself
    except ValueError:
        return None


class Trainer:
    """Runs the schedule's updates from a :class:`TrainState`, logging and checkpointing.

    Args:
        model: the detector (maybe DDP-wrapped); ``model(images [B,3,H,W], targets)`` returns a
            dict of weighted scalar losses; the plain module has ``loss_weights``.
        optimizer: built over ``model``'s parameters.
        schedule: gives the rate per update and ``max_iters``.
        data_loader: yields ``(images [B,3,H,W], list of target dicts)``; its ``batch_sampler``
            has ``set_epoch(epoch, start_batch=k)`` and ``len(data_loader)`` is batches per epoch.
        device: where the model lives.
        checkpointer: writes ``latest.pth`` every ``checkpoint_interval`` updates, at each epoch
            end and at the last update; ``checkpoint_extra`` (``config``, ``meta``) is added to it.
        metrics: receives a record every ``log_interval`` updates (and at the last one);
            ``curves_path``: loss-curve PNG redrawn at each checkpoint.
        amp: mixed precision (honoured on CUDA only). ``grad_clip``: max gradient L2 norm.
        dist: this process's rank; ranks > 0 must get disabled checkpointer/metrics.
        progress: show a tqdm bar (rank 0 only).

    A model whose plain module has ``necks`` (an ``nn.ModuleList``) gets its per-loss gradient
    norms into ``necks[-1]``'s outputs logged as ``grad_norm/<loss>``; other models log none.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LrSchedule,
        data_loader: Any,
        device: torch.device,
        checkpointer: Checkpointer,
        checkpoint_extra: Optional[Dict[str, Any]] = None,
        metrics: Optional[MetricsLog] = None,
        curves_path: Optional[Path] = None,
        amp: bool = False,
        grad_clip: Optional[float] = None,
        log_interval: int = 20,
        checkpoint_interval: int = 500,
        dist: DistInfo = DistInfo(),
        progress: bool = True,
    ) -> None:
        if log_interval < 1 or checkpoint_interval < 1:
            raise ValueError(
                f"log_interval and checkpoint_interval must be >= 1, got {log_interval}, {checkpoint_interval}"
            )
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 (or None), got {grad_clip}")
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.data_loader = data_loader
        self.device = device
        self.checkpointer = checkpointer
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.metrics = metrics
        self.curves_path = curves_path
        self.amp = bool(amp) and device.type == "cuda"
        self.grad_clip = grad_clip
        self.log_interval = int(log_interval)
        self.checkpoint_interval = int(checkpoint_interval)
        self.dist = dist
        self.progress = progress
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._feature_tap = _feature_tap(model)

    # ------------------------------------------------------------------ state

    def state_dict(self, state: TrainState) -> Dict[str, Any]:
        """Everything needed to resume at ``state`` (collective: every rank must call it)."""
        rng = all_gather_object(capture_rng_state())
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.amp else None,
            "scheduler": self.schedule.state_dict(),
            **asdict(state),
            "rng": rng,
        }

    def load_state_dict(self, ckpt: Dict[str, Any]) -> TrainState:
        """Restore weights, optimizer, scaler and this rank's RNG states; returns the position.

        Call it last before :meth:`train`: anything that draws random numbers afterwards would
        shift the restored RNG streams.
        """
        unwrap_model(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        rng: List[Dict[str, Any]] = ckpt["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            logger.warning(
                "checkpoint holds RNG states of %d process(es), this run has %d: RNG streams "
                "restart from the seed, so the resumed run is not bit-identical",
                len(rng), self.dist.world_size,
            )
        return TrainState(
            iteration=int(ckpt["iteration"]),
            epoch=int(ckpt["epoch"]),
            batch_in_epoch=int(ckpt["batch_in_epoch"]),
        )

    def save_checkpoint(self, state: TrainState) -> None:
        """Write ``latest.pth`` (rank 0) and redraw the loss curves."""
        payload = {**self.checkpoint_extra, **self.state_dict(state)}
        self.checkpointer.save_latest(payload)
        if self.metrics is not None and self.curves_path is not None:
            self.metrics.plot(self.curves_path)

    # ------------------------------------------------------------------ one update

    def _forward(self, images: torch.Tensor, targets: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            losses = self.model(images, targets)
        if not isinstance(losses, dict) or not losses:
            raise TypeError(
                f"the model must return a non-empty dict of losses in train mode, got {type(losses).__name__}"
            )
        return losses

    def _logs_after(self, iteration: int) -> bool:
        """Whether :meth:`train` writes a record after update ``iteration`` (1-based)."""
        return iteration % self.log_interval == 0 or iteration >= self.schedule.max_iters

    def run_step(
        self, images: torch.Tensor, targets: List[Dict[str, Any]], state: TrainState
    ) -> Tuple[Dict[str, float], Optional[float], Dict[str, float]]:
        """One update at ``state.iteration``; returns the loss values (and ``total``), the
        gradient norm before clipping (None without clipping) and, on a logging update of a
        model with necks, ``{"grad_norm/<loss>": norm of d(weighted loss)/d(shared features)}``
        (empty otherwise).

        Raises:
            NonFiniteLossError: the total loss is NaN/inf (on any rank); nothing was updated.
        """
        images = images.to(self.device, non_blocking=True)
        targets = [_to_device(t, self.device) for t in targets]
        set_lr(self.optimizer, self.schedule.lr_at(state.iteration))
        tap = self._feature_tap if self._logs_after(state.iteration + 1) else None
        if tap is not None:
            tap.arm()

        losses = self._forward(images, targets)
        total = sum(v.float() for v in losses.values())
        values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
        values["total"] = float(total.detach())
        # A sum over ranks is NaN/inf when any rank's is: every rank stops at the same update.
        global_total = all_reduce_sum({"total": values["total"]}, self.device)["total"]
        if not torch.isfinite(torch.tensor(global_total)):
            where = f" on rank {self.dist.rank}" if self.dist.distributed else ""
            raise NonFiniteLossError(
                f"non-finite loss at iteration {state.iteration + 1} (epoch {state.epoch}, batch "
                f"{state.batch_in_epoch}){where}: {_format_losses(values)}; training stopped, "
                f"{self.checkpointer.latest_path} still holds the last good checkpoint"
            )

        feature_grad_norms: Dict[str, float] = {}
        if tap is not None:  # before backward(): the norms need the graph, which it frees
            norms = loss_grad_norms(
                self.model, losses, tap.take(), losses_are_weighted=True,
                scale=self.scaler.get_scale() if self.amp else 1.0,
            )
            feature_grad_norms = grad_norm_records(norms)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        grad_norm = None
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip))
        if _debug_pause_iter() == state.iteration + 1:
            _pause_until_killed(state.iteration + 1)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return values, grad_norm, feature_grad_norms

    # ------------------------------------------------------------------ the loop

    def _record(self, window: _Window, state: TrainState, epoch: int, lr: float,
                grad_norm: Optional[float], feature_grad_norms: Dict[str, float]) -> Dict[str, Any]:
        """The metrics record after update ``state.iteration``: the window's means over updates
        and ranks; ``feature_grad_norms`` (of this update only) averaged over ranks."""
        means = all_reduce_mean(window.means(), self.device)
        weights = getattr(unwrap_model(self.model), "loss_weights", {}) or {}
        record: Dict[str, Any] = {"iter": state.iteration, "epoch": epoch, "lr": lr}
        loss_names = [k for k in window.sums if k != "total"]
        for name in loss_names:
            record[name] = means[name]
        record["total"] = means["total"]
        for name in loss_names:
            w = float(weights.get(name, 1.0))
            if w != 0.0:
                record[f"{name}_unweighted"] = means[name] / w
        record["time"] = means["time"]
        record["data_time"] = means["data_time"]
        record["memory"] = _memory_mib(self.device)
        record["eta_s"] = means["time"] * (self.schedule.max_iters - state.iteration)
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        # Every rank logs on the same update of the same model, so the keys agree across ranks.
        record.update(all_reduce_mean(feature_grad_norms, self.device))
        return record

    def train(self, state: Optional[TrainState] = None) -> TrainState:
        """Run updates from ``state`` (default: the start) to ``schedule.max_iters``."""
        state = TrainState(**asdict(state)) if state is not None else TrainState()
        loader = self.data_loader
        iters_per_epoch = len(loader)
        if iters_per_epoch == 0:
            raise ValueError("the training data loader yields no batches (empty dataset?)")
        max_iters = self.schedule.max_iters
        if state.batch_in_epoch >= iters_per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        self.model.train()
        bar = tqdm(
            total=max_iters,
            initial=state.iteration,
            desc="train",
            dynamic_ncols=True,
            disable=not (self.progress and self.dist.is_main),
        )
        window = _Window()
        try:
            while state.iteration < max_iters:
                loader.batch_sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
                tick = time.perf_counter()
                for images, targets in loader:
                    data_time = time.perf_counter() - tick
                    epoch, lr = state.epoch, self.schedule.lr_at(state.iteration)
                    values, grad_norm, feature_grad_norms = self.run_step(images, targets, state)
                    state.iteration += 1
                    state.batch_in_epoch += 1
                    window.add(values, time.perf_counter() - tick, data_time)
                    bar.set_postfix_str(
                        " ".join(f"{k}={v:.3f}" for k, v in values.items()) + f" lr={lr:.2e}",
                        refresh=False,
                    )
                    bar.update(1)
                    last = state.iteration >= max_iters
                    epoch_end = state.batch_in_epoch >= iters_per_epoch
                    if epoch_end:
                        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    if self._logs_after(state.iteration):
                        record = self._record(window, state, epoch, lr, grad_norm, feature_grad_norms)
                        if self.metrics is not None:
                            self.metrics.write(record)
                        window = _Window()
                    if state.iteration % self.checkpoint_interval == 0 or epoch_end or last:
                        self.save_checkpoint(state)
                    if last or epoch_end:
                        break
                    tick = time.perf_counter()
                else:
                    # The loader ran out before len(loader) batches: count the epoch as done.
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        finally:
            bar.close()
        return state
