"""Batching for detection: collate with padding, aspect-ratio grouped batches, the DataLoader.

Determinism (what resumable training relies on):

* The sample order of an epoch is a pure function of ``(seed, epoch)``: :class:`EpochSampler`
  permutes ``range(N)`` with a generator seeded from both, and
  :class:`AspectRatioGroupedBatchSampler` builds batches from that order without randomness of
  its own. Call ``loader.batch_sampler.set_epoch(epoch)`` before iterating an epoch;
  ``set_epoch(epoch, start_batch=k)`` skips the first ``k`` batches of that epoch without loading
  them (resume mid-epoch). ``len(loader)`` stays the full epoch length.
* Augmentations are a pure function of ``(seed, epoch, sample index)``: before each
  ``dataset[index]`` call, the loader seeds Python's :mod:`random` and NumPy's global generator
  from those three numbers (and restores the previous state afterwards), so the same sample gets
  the same flip/scale whatever ``num_workers`` is, which worker loads it, or where the epoch was
  resumed. Transforms must draw from :mod:`random` or ``numpy.random``; :mod:`torch` randomness
  in workers is seeded once per worker from ``(seed, rank, worker id)``.
* Distributed training: every rank builds the same global batch list for the epoch and takes
  batches ``rank, rank + world_size, ...``; the list is padded by repeating its first batches
  (or truncated with ``drop_last``) so every rank gets the same number of batches. Wrapping a
  :class:`torch.utils.data.DistributedSampler` in the grouped sampler instead would give ranks
  different batch counts (each rank's last partial batch per group), which stalls DDP.
"""
from __future__ import annotations

import random
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.data.transforms import pad_to_divisor

__all__ = [
    "Collate",
    "collate",
    "EpochSampler",
    "AspectRatioGroupedBatchSampler",
    "build_dataloader",
    "aspect_ratio_group_ids",
]

Target = Dict[str, Any]


def _derive_seed(*values: int) -> int:
    """A 32-bit seed mixing the non-negative integers ``values`` (no collisions like seed + 1)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# Collate
# --------------------------------------------------------------------------------------------
class Collate:
    """Batch ``[(image [3, Hi, Wi], target), ...]`` into ``(images [B, 3, H, W], targets)``.

    Images are padded bottom/right with :func:`pad_to_divisor` (``H``, ``W`` multiples of
    ``divisor``). Each output target has ``boxes`` float32 ``[N, 4]``, ``labels`` int64 ``[N]``,
    ``ignore_boxes`` float32 ``[M, 4]``, ``orig_size`` ``(h, w)``, ``img_size`` ``(h, w)`` (after
    resize, before padding: the image's own size), ``scale_factor`` ``(sx, sy)`` (derived from the
    sizes when no transform set it), ``flipped`` bool, ``image_id`` int, ``file_name`` str, plus
    any other keys the transforms added. A plain class so worker processes can pickle it.
    """

    def __init__(self, *, divisor: int = 32, pad_value: float = 0.0) -> None:
        if divisor < 1:
            raise ValueError(f"Collate: divisor must be >= 1, got {divisor}")
        self.divisor = int(divisor)
        self.pad_value = float(pad_value)

    def __call__(
        self, batch: Sequence[Tuple[torch.Tensor, Target]]
    ) -> Tuple[torch.Tensor, List[Target]]:
        if len(batch) == 0:
            raise ValueError("collate: empty batch")
        images, targets = [], []
        for image, target in batch:
            name = target.get("file_name", target.get("image_id", "<unknown image>"))
            if not (isinstance(image, torch.Tensor) and image.ndim == 3):
                raise TypeError(
                    f"{name}: collate expects a [3, H, W] tensor image (end the transforms with "
                    f"ToTensor/Normalize), got {type(image).__name__}"
                )
            for key in ("orig_size", "image_id", "file_name"):
                if key not in target:
                    raise KeyError(f"{name}: target has no {key!r} (keys: {sorted(target)})")
            images.append(image)
            targets.append(self._target(image, target))
        return pad_to_divisor(images, self.divisor, self.pad_value), targets

    @staticmethod
    def _target(image: torch.Tensor, target: Target) -> Target:
        out = dict(target)
        out["boxes"] = torch.as_tensor(target.get("boxes", ()), dtype=torch.float32).reshape(-1, 4)
        out["labels"] = torch.as_tensor(target.get("labels", ()), dtype=torch.int64).reshape(-1)
        out["ignore_boxes"] = torch.as_tensor(
            target.get("ignore_boxes", ()), dtype=torch.float32
        ).reshape(-1, 4)
        h, w = int(image.shape[1]), int(image.shape[2])
        orig_h, orig_w = (int(v) for v in target["orig_size"])
        out["orig_size"] = (orig_h, orig_w)
        out["img_size"] = (h, w)
        out["scale_factor"] = tuple(
            float(v) for v in target.get("scale_factor", (w / orig_w, h / orig_h))
        )
        out["flipped"] = bool(target.get("flipped", False))
        out["image_id"] = int(target["image_id"])
        out["file_name"] = str(target["file_name"])
        return out

    def __repr__(self) -> str:
        return f"Collate(divisor={self.divisor}, pad_value={self.pad_value})"


collate = Collate()
"""Default :class:`Collate` (divisor 32, pad value 0)."""


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------
class EpochSampler(Sampler[int]):
    """All indices ``0..size-1`` once per epoch; shuffled order is a pure function of (seed, epoch).

    Like :class:`~torch.utils.data.DistributedSampler` with one replica: call :meth:`set_epoch`.
    """

    def __init__(self, *, size: int, shuffle: bool, seed: int = 0) -> None:
        if size < 0 or seed < 0:
            raise ValueError(f"EpochSampler: size and seed must be >= 0, got {size}, {seed}")
        self.size = int(size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        g = torch.Generator().manual_seed(_derive_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


def aspect_ratio_group_ids(aspect_ratios: Sequence[float]) -> List[int]:
    """Group per image from its ``h / w``: 1 portrait or square (``h/w >= 1``), 0 landscape."""
    return [1 if r >= 1.0 else 0 for r in aspect_ratios]


class AspectRatioGroupedBatchSampler(Sampler[List[int]]):
    """Batches of ``batch_size`` indices that share a group id (e.g. aspect-ratio group).

    Walks the base ``sampler``'s order, filling one bucket per group and emitting a bucket when it
    is full (detectron2's AspectRatioGroupedDataset); at the end of the epoch the partial buckets
    are emitted too unless ``drop_last``. Every index of the base sampler lands in exactly one
    batch. With all group ids equal this is plain batching.

    ``num_replicas``/``rank``: shard the batches for distributed training; the base sampler must
    then give the same order on every rank (e.g. :class:`EpochSampler` with a shared seed). See the
    module docstring for the padding rule. :meth:`set_epoch` forwards to the base sampler.
    """

    def __init__(
        self,
        *,
        sampler: Sampler[int],
        group_ids: Sequence[int],
        batch_size: int,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}"
            )
        self.sampler = sampler
        self.group_ids = [int(g) for g in group_ids]
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, *, start_batch: int = 0) -> None:
        """Select the epoch (order) to iterate next, skipping its first ``start_batch`` batches."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _global_batches(self) -> List[List[int]]:
        buckets: Dict[int, List[int]] = {}
        batches: List[List[int]] = []
        for idx in self.sampler:
            try:
                group = self.group_ids[idx]
            except IndexError:
                raise IndexError(
                    f"sampler gave index {idx} but only {len(self.group_ids)} group ids"
                ) from None
            bucket = buckets.setdefault(group, [])
            bucket.append(int(idx))
            if len(bucket) == self.batch_size:
                batches.append(bucket)
                buckets[group] = []
        if not self.drop_last:
            batches.extend(b for b in buckets.values() if b)
        return batches

    def _num_global_batches(self) -> int:
        counts: Dict[int, int] = {}
        for idx in self.sampler:
            group = self.group_ids[idx]
            counts[group] = counts.get(group, 0) + 1
        if self.drop_last:
            return sum(n // self.batch_size for n in counts.values())
        return sum(-(-n // self.batch_size) for n in counts.values())

    def _per_rank(self, num_global: int) -> int:
        if self.drop_last:
            return num_global // self.num_replicas
        return -(-num_global // self.num_replicas)

    def __iter__(self) -> Iterator[List[int]]:
        batches = self._global_batches()
        per_rank = self._per_rank(len(batches))
        total = per_rank * self.num_replicas
        if batches and total > len(batches):
            batches = (batches * (-(-total // len(batches))))[:total]
        mine = batches[self.rank : total : self.num_replicas]
        return iter(mine[self.start_batch :])

    def __len__(self) -> int:
        """Batches in a full epoch for this rank (ignores ``start_batch``)."""
        return self._per_rank(self._num_global_batches())


class _EpochKeyedBatches(Sampler[List[Tuple[int, int]]]):
    """Batches of indices -> batches of ``(index, epoch)`` keys for :class:`_SeededSamples`."""

    def __init__(self, batch_sampler: AspectRatioGroupedBatchSampler) -> None:
        self.batch_sampler = batch_sampler

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    def set_epoch(self, epoch: int, *, start_batch: int = 0) -> None:
        """Select the epoch to iterate next (order and augmentations), skipping ``start_batch``."""
        self.batch_sampler.set_epoch(epoch, start_batch=start_batch)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch = self.batch_sampler.epoch
        for batch in self.batch_sampler:
            yield [(idx, epoch) for idx in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class _SeededSamples(Dataset):
    """``self[(index, epoch)]`` = ``dataset[index]`` with :mod:`random` and ``numpy.random`` seeded
    from ``(seed, epoch, index)``; the caller's generator states are restored afterwards.

    Attribute lookups fall through to the wrapped dataset (``loader.dataset.coco`` etc.).
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        index, epoch = key
        sample_seed = _derive_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __getattr__(self, name: str) -> Any:
        # Dunders (e.g. DataLoader's __getitems__ probe) must not bypass __getitem__; "dataset"
        # is absent while unpickling in a worker, before __dict__ is restored.
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _SeedWorker:
    """``worker_init_fn``: seeds random/numpy/torch in a worker from (seed, rank, worker id)."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed = seed
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        s = _derive_seed(self.seed, self.rank, worker_id)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


# --------------------------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------------------------
def build_dataloader(
    dataset: Any,
    *,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int,
    divisor: int = 32,
    aspect_ratio_grouping: bool = True,
    drop_last: bool = False,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A deterministic detection DataLoader yielding ``(images [B, 3, H, W], targets)``.

    ``dataset[i]`` must return ``(image tensor [3, H, W], target dict)`` (see :class:`Collate`);
    with ``aspect_ratio_grouping`` it must also have ``aspect_ratios() -> list[float]`` (h / w),
    and batches then hold only landscape or only portrait images. ``distributed``: this process
    is ``rank`` of ``world_size`` and gets its share of batches (``batch_size`` is per process).
    Workers are persistent when ``num_workers > 0``.

    Before each epoch call ``loader.batch_sampler.set_epoch(epoch)`` (or
    ``set_epoch(epoch, start_batch=k)`` to resume after ``k`` batches); batches and augmentations
    are then a pure function of ``(seed, epoch)`` -- see the module docstring.
    ``loader.dataset`` is a thin wrapper; ``loader.dataset.dataset`` is ``dataset`` and other
    attributes are forwarded to it.
    """
    if seed < 0:
        raise ValueError(f"build_dataloader: seed must be >= 0, got {seed}")
    if num_workers < 0:
        raise ValueError(f"build_dataloader: num_workers must be >= 0, got {num_workers}")
    if not distributed and (rank != 0 or world_size != 1):
        raise ValueError(
            f"build_dataloader: rank={rank}, world_size={world_size} given without distributed=True"
        )
    if aspect_ratio_grouping:
        if not hasattr(dataset, "aspect_ratios"):
            raise TypeError(
                f"build_dataloader: {type(dataset).__name__} has no aspect_ratios(); "
                "pass aspect_ratio_grouping=False"
            )
        ratios = list(dataset.aspect_ratios())
        if len(ratios) != len(dataset):
            raise ValueError(
                f"build_dataloader: {type(dataset).__name__}.aspect_ratios() has {len(ratios)} "
                f"entries for {len(dataset)} images"
            )
        group_ids = aspect_ratio_group_ids(ratios)
    else:
        group_ids = [0] * len(dataset)

    batch_sampler = AspectRatioGroupedBatchSampler(
        sampler=EpochSampler(size=len(dataset), shuffle=shuffle, seed=seed),
        group_ids=group_ids,
        batch_size=batch_size,
        drop_last=drop_last,
        num_replicas=world_size if distributed else 1,
        rank=rank if distributed else 0,
    )
    return DataLoader(
        _SeededSamples(dataset, seed),
        batch_sampler=_EpochKeyedBatches(batch_sampler),
        num_workers=num_workers,
        collate_fn=Collate(divisor=divisor),
        pin_memory=pin_memory,
        worker_init_fn=_SeedWorker(seed, rank if distributed else 0),
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )
