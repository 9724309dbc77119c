"""Collate, aspect-ratio grouped batching and the deterministic DataLoader."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.loader import (
    AspectRatioGroupedBatchSampler,
    Collate,
    EpochSampler,
    aspect_ratio_group_ids,
    build_dataloader,
    collate,
)
from training.data.transforms import build_transforms


class FakeDetection:
    """Same contract as CocoDetection: PIL RGB image + numpy target, passed through transforms."""

    def __init__(self, sizes, transforms=None, empty=()):
        self.sizes = list(sizes)  # (w, h) per image
        self.transforms = transforms
        self.empty = set(empty)  # indices without boxes

    def __len__(self):
        return len(self.sizes)

    def aspect_ratios(self):
        return [h / w for w, h in self.sizes]

    def __getitem__(self, index):
        w, h = self.sizes[index]
        arr = np.full((h, w, 3), index % 256, dtype=np.uint8)
        n = 0 if index in self.empty else 1 + index % 3
        boxes = [[1 + i, 2, w - 1 - i, h - 2] for i in range(n)]
        boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": np.arange(n, dtype=np.int64),
            "ignore_boxes": np.zeros((0, 4), dtype=np.float32),
            "image_id": 1000 + index,
            "file_name": f"{index:04d}.jpg",
            "orig_size": (h, w),
        }
        image = Image.fromarray(arr, "RGB")
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target


def _sizes(n, seed=0):
    rng = random.Random(seed)
    return [(rng.randint(20, 60), rng.randint(20, 60)) for _ in range(n)]


def _tfm(train=True, scale=(32, 64), train_scales=None):
    return build_transforms(
        scale=scale,
        flip_prob=0.5,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        to_rgb=True,
        train=train,
        train_scales=train_scales,
    )


# ----------------------------------------------------------------------------------- collate
def test_collate_shapes_dtypes_and_empty_boxes():
    ds = FakeDetection([(40, 30), (25, 50), (33, 33)], transforms=_tfm(train=False), empty={1})
    images, targets = Collate(divisor=16)([ds[i] for i in range(3)])
    # sizes after Resize((32, 64)): 43x32, 32x64, 32x32 -> max 43x64 -> padded to 48x64
    assert images.dtype == torch.float32 and tuple(images.shape) == (3, 3, 64, 48)
    assert [t["img_size"] for t in targets] == [(32, 43), (64, 32), (32, 32)]
    assert [t["orig_size"] for t in targets] == [(30, 40), (50, 25), (33, 33)]
    for t, n in zip(targets, [1, 0, 3]):
        assert t["boxes"].dtype == torch.float32 and tuple(t["boxes"].shape) == (n, 4)
        assert t["labels"].dtype == torch.int64 and tuple(t["labels"].shape) == (n,)
        assert t["ignore_boxes"].dtype == torch.float32 and tuple(t["ignore_boxes"].shape) == (0, 4)
        assert isinstance(t["image_id"], int) and isinstance(t["file_name"], str)
        assert t["flipped"] is False
    assert targets[0]["scale_factor"] == (43 / 40, 32 / 30)
    assert targets[1]["image_id"] == 1001 and targets[1]["file_name"] == "0001.jpg"
    # image content at top-left, padding zero
    assert (images[0, :, :32, :43] == 0).all() and (images[1, :, :64, :32] == 1).all()
    assert (images[1, :, :, 32:] == 0).all()


def test_collate_default_divisor_and_derived_scale_factor():
    img = torch.ones(3, 10, 20)
    tgt = {"image_id": 1, "file_name": "a.jpg", "orig_size": (5, 10), "boxes": np.zeros((0, 4))}
    images, (out,) = collate([(img, tgt)])
    assert tuple(images.shape) == (1, 3, 32, 32)
    assert out["scale_factor"] == (2.0, 2.0) and out["img_size"] == (10, 20)
    assert tuple(out["boxes"].shape) == (0, 4) and tuple(out["labels"].shape) == (0,)


def test_collate_bad_input_names_the_file():
    with pytest.raises(TypeError, match="0000.jpg.*tensor image"):
        collate([FakeDetection([(10, 10)])[0]])
    with pytest.raises(KeyError, match="x.jpg.*orig_size"):
        collate([(torch.zeros(3, 4, 4), {"file_name": "x.jpg", "image_id": 3})])


# ---------------------------------------------------------------------------------- samplers
def _grouped(n_landscape, n_portrait, batch_size, seed=0, drop_last=False, **kw):
    ratios = [0.5] * n_landscape + [1.5] * n_portrait
    order = list(range(len(ratios)))
    random.Random(99).shuffle(order)
    ratios = [ratios[i] for i in order]  # groups interleaved in index space
    sampler = AspectRatioGroupedBatchSampler(
        sampler=EpochSampler(size=len(ratios), shuffle=True, seed=seed),
        group_ids=aspect_ratio_group_ids(ratios),
        batch_size=batch_size,
        drop_last=drop_last,
        **kw,
    )
    return sampler, aspect_ratio_group_ids(ratios)


def _epoch(sampler, epoch, **kw):
    sampler.set_epoch(epoch, **kw)
    return [list(b) for b in sampler]


def test_group_ids_from_aspect_ratio():
    assert aspect_ratio_group_ids([0.5, 1.0, 1.7, 0.99]) == [0, 1, 1, 0]


def test_grouped_batches_homogeneous_complete_and_deterministic():
    sampler, groups = _grouped(23, 14, batch_size=4, seed=3)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == 6 + 4  # ceil(23/4) + ceil(14/4)
    for b in batches:
        assert 1 <= len(b) <= 4 and len({groups[i] for i in b}) == 1
    assert sorted(i for b in batches for i in b) == list(range(37))
    assert sum(len(b) < 4 for b in batches) == 2  # one partial batch per group

    again, _ = _grouped(23, 14, batch_size=4, seed=3)
    assert _epoch(again, 0) == batches  # pure function of (seed, epoch)
    assert _epoch(sampler, 1) != batches
    assert _epoch(sampler, 0) == batches
    other_seed, _ = _grouped(23, 14, batch_size=4, seed=4)
    assert _epoch(other_seed, 0) != batches


def test_grouped_drop_last_and_start_batch():
    sampler, groups = _grouped(23, 14, batch_size=4, drop_last=True)
    batches = _epoch(sampler, 2)
    assert len(batches) == len(sampler) == 5 + 3
    assert all(len(b) == 4 for b in batches)
    assert _epoch(sampler, 2, start_batch=3) == batches[3:]
    assert len(sampler) == 8  # len is the full epoch even when resuming


def test_grouped_distributed_shards_equal_and_cover():
    world = 3
    shards = []
    for rank in range(world):
        sampler, groups = _grouped(23, 14, batch_size=4, num_replicas=world, rank=rank)
        shards.append(_epoch(sampler, 5))
        assert len(sampler) == len(shards[-1])
    assert len({len(s) for s in shards}) == 1  # same batch count on every rank: no DDP stall
    assert len(shards[0]) == 4  # ceil(10 global batches / 3 ranks)
    seen = [i for s in shards for b in s for i in b]
    assert set(seen) == set(range(37))
    for s in shards:
        for b in s:
            assert len({groups[i] for i in b}) == 1
    single, _ = _grouped(23, 14, batch_size=4)
    global_batches = _epoch(single, 5)
    padded = global_batches + global_batches[:2]  # 10 -> 12 batches, repeating the first ones
    assert shards[1] == padded[1::3]  # rank r takes global batches r, r + world, ...


def test_grouped_sampler_wraps_distributed_sampler():
    from torch.utils.data import DistributedSampler

    ds = list(range(10))
    base = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    sampler = AspectRatioGroupedBatchSampler(sampler=base, group_ids=[0, 1] * 5, batch_size=2)
    batches = _epoch(sampler, 1)
    base.set_epoch(1)
    assert sorted(i for b in batches for i in b) == sorted(base)
    assert all(len({i % 2 for i in b}) == 1 for b in batches)


def test_epoch_sampler_sequential_when_not_shuffled():
    s = EpochSampler(size=5, shuffle=False, seed=1)
    s.set_epoch(3)
    assert list(s) == [0, 1, 2, 3, 4]


# -------------------------------------------------------------------------------- dataloader
def _batches(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return [(images, targets) for images, targets in loader]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (ia, ta), (ib, tb) in zip(a, b):
        assert torch.equal(ia, ib)
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        assert [t["flipped"] for t in ta] == [t["flipped"] for t in tb]
        for x, y in zip(ta, tb):
            assert torch.equal(x["boxes"], y["boxes"])


def test_build_dataloader_same_batches_with_and_without_workers():
    ds = FakeDetection(_sizes(14), transforms=_tfm(train_scales=[(24, 64), (32, 64)]), empty={3})
    kw = dict(batch_size=3, shuffle=True, seed=11, divisor=16)
    loader0 = build_dataloader(ds, num_workers=0, **kw)
    loader1 = build_dataloader(ds, num_workers=1, **kw)
    assert loader1.persistent_workers and not loader0.persistent_workers
    e0, e1 = _batches(loader0, 0), _batches(loader1, 0)
    _assert_same(e0, e1)
    _assert_same(_batches(loader0, 1), _batches(loader1, 1))

    flips = [t["flipped"] for _, ts in e0 for t in ts]
    assert any(flips) and not all(flips)  # the augmentation is random, yet reproduced
    ids = sorted(t["image_id"] for _, ts in e0 for t in ts)
    assert ids == [1000 + i for i in range(14)]
    groups = aspect_ratio_group_ids(ds.aspect_ratios())
    for images, targets in e0:
        assert images.shape[-1] % 16 == 0 and images.shape[-2] % 16 == 0
        assert len({groups[t["image_id"] - 1000] for t in targets}) == 1

    # resuming mid-epoch reproduces the tail of the epoch, augmentations included
    loader0.batch_sampler.set_epoch(0, start_batch=2)
    _assert_same(list(loader0), e0[2:])


def test_build_dataloader_does_not_disturb_global_rngs():
    ds = FakeDetection(_sizes(4), transforms=_tfm())
    loader = build_dataloader(ds, batch_size=2, num_workers=0, shuffle=True, seed=0)
    random.seed(5)
    np.random.seed(5)
    list(loader)
    assert random.random() == random.Random(5).random()
    assert np.random.rand() == np.random.RandomState(5).rand()


def test_build_dataloader_forwards_dataset_attributes_and_validates():
    ds = FakeDetection(_sizes(4), transforms=_tfm())
    loader = build_dataloader(
        ds, batch_size=2, num_workers=0, shuffle=False, seed=0, aspect_ratio_grouping=False
    )
    assert loader.dataset.dataset is ds and loader.dataset.sizes == ds.sizes
    assert [t["image_id"] for _, ts in loader for t in ts] == [1000, 1001, 1002, 1003]

    class NoRatios:
        def __len__(self):
            return 1

    with pytest.raises(TypeError, match="NoRatios has no aspect_ratios"):
        build_dataloader(NoRatios(), batch_size=1, num_workers=0, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="without distributed=True"):
        build_dataloader(ds, batch_size=1, num_workers=0, shuffle=False, seed=0, world_size=2)


def test_build_dataloader_distributed_ranks_partition_the_epoch():
    ds = FakeDetection(_sizes(10))
    ds.transforms = _tfm(train=False)
    per_rank, counts = [], []
    for rank in range(2):
        loader = build_dataloader(
            ds, batch_size=2, num_workers=0, shuffle=True, seed=1,
            distributed=True, rank=rank, world_size=2,
        )
        batches = _batches(loader, 0)
        per_rank.append([t["image_id"] for _, ts in batches for t in ts])
        counts.append(len(batches))
        assert len(loader) == len(batches)
    assert counts[0] == counts[1]
    assert len(set(per_rank[0]) & set(per_rank[1])) <= 2  # only padding repeats
    assert set(per_rank[0]) | set(per_rank[1]) == {1000 + i for i in range(10)}


def test_loader_parts_pickle_for_spawned_workers():
    import pickle

    ds = FakeDetection(_sizes(3), transforms=_tfm())
    loader = build_dataloader(ds, batch_size=2, num_workers=0, shuffle=True, seed=2)
    wrapped = pickle.loads(pickle.dumps(loader.dataset))
    image, target = wrapped[(1, 4)]
    ref_image, ref_target = loader.dataset[(1, 4)]
    assert torch.equal(image, ref_image) and target["flipped"] == ref_target["flipped"]
    assert pickle.loads(pickle.dumps(loader.collate_fn)).divisor == 32
    pickle.loads(pickle.dumps(loader.worker_init_fn))(0)
