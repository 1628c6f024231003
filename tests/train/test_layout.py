"""The layout `auto` picks: one process per GPU, or one process with a thread per core."""

from __future__ import annotations

import pytest

from embedpipe.config import load_config
from embedpipe.train import layout
from embedpipe.train.layout import describe_layout, resolve_layout, resolve_threads


def machine(monkeypatch: pytest.MonkeyPatch, cores: int, gpus: int) -> None:
    monkeypatch.setattr(layout, "cpu_cores", lambda: cores)
    monkeypatch.setattr(layout, "gpu_count", lambda: gpus)


def test_a_cpu_node_runs_one_process_with_a_thread_per_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine(monkeypatch, cores=16, gpus=0)
    train = resolve_layout(load_config(None)).train
    assert (train.nproc, train.threads) == (1, 16)
    assert "1 process(es) x 16 thread(s) on 16 CPU cores" in describe_layout(
        resolve_layout(load_config(None))
    )


def test_a_gpu_node_runs_one_process_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cores=16, gpus=4)
    train = resolve_layout(load_config(None)).train
    assert (train.nproc, train.threads) == (4, 4)


def test_numbers_given_are_kept_and_auto_threads_share_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine(monkeypatch, cores=8, gpus=0)
    train = resolve_layout(load_config(None, ["train.nproc=2"])).train
    assert (train.nproc, train.threads) == (2, 4)
    train = resolve_layout(load_config(None, ["train.nproc=2", "train.threads=3"])).train
    assert (train.nproc, train.threads) == (2, 3)
    # A rank started by torchrun with 4 processes on its node, config left "auto".
    train = resolve_threads(load_config(None).train, local_world=4)
    assert (train.nproc, train.threads) == (4, 2)


def test_auto_and_numbers_only_are_accepted() -> None:
    from embedpipe.config import ConfigError

    assert load_config(None, ["train.threads=auto"]).train.threads == "auto"
    with pytest.raises(ConfigError, match="train.nproc"):
        load_config(None, ["train.nproc=many"])
    with pytest.raises(ConfigError, match="train.threads must be >= 1"):
        load_config(None, ["train.threads=0"])
