"""Distributed helpers outside torchrun: environment parsing, device choice, single-process no-ops."""
from __future__ import annotations

import pytest
import torch

from training.engine.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    dist_info_from_env,
    select_device,
    unwrap_model,
    wrap_model,
)


def test_env_without_torchrun_is_a_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = dist_info_from_env()
    assert info == DistInfo() and info.is_main and not info.distributed


def test_env_of_torchrun_worker(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info_from_env()
    assert (info.rank, info.world_size, info.local_rank) == (3, 4, 1)
    assert info.distributed and not info.is_main


@pytest.mark.parametrize("env, message", [({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2"),
                                          ({"WORLD_SIZE": "two"}, "WORLD_SIZE")])
def test_bad_env_names_the_variable(monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        dist_info_from_env()


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    with pytest.raises(ValueError, match="train.device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            select_device("cuda")


def test_single_process_collectives_are_identities():
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, DistInfo(), torch.device("cpu")) is model
    assert unwrap_model(model) is model
    assert all_gather_object({"a": 1}) == [{"a": 1}]
    assert all_reduce_mean({"x": 2.0}, torch.device("cpu")) == {"x": 2.0}
    assert all_reduce_sum({"x": 2.0}, torch.device("cpu")) == {"x": 2.0}
