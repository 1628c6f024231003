"""The process group and the loop's small collectives: step counts and cursors.

`agree` makes ranks take the same number of steps per chunk, so they stop an epoch
together and share one learning-rate schedule; `sync_group` is the separate group on which
`sync.RowSync` exchanges the rows ranks changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist


class Cursor(Protocol):
    """What `agree` reads of a batch: batches left in its chunk, corpus words it stands for."""

    remaining: int
    words: float


@dataclass(frozen=True)
class Cluster:
    """Where this process sits: rank, world size and device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_cluster(gpu_backend: str = "gloo") -> Cluster:
    """Join the process group torchrun describes, if any: gloo on CPU; on GPUs `gpu_backend`.

    Sparse tables stay on gloo everywhere (NCCL cannot all-reduce sparse gradients); a dense
    model asks for "cpu:gloo,cuda:nccl": NCCL for its CUDA gradients, gloo for the small
    CPU collectives (`agree`, the cursors).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=gpu_backend if device.type == "cuda" else "gloo")
    return Cluster(rank, world, local_rank, device)


def sync_group(cluster: Cluster) -> dist.ProcessGroup:
    """A process group of its own for the row exchange (`sync.RowSync`), which runs on a
    background thread: NCCL for tables on GPUs, gloo on CPU. Every rank must call it."""
    return dist.new_group(backend="nccl" if cluster.device.type == "cuda" else "gloo")


def set_kernel_threads(cluster: Cluster, threads: int) -> None:
    """Torch's intra-op threads beside compiled kernels: 1 on CPU, where the kernels run their
    own `threads` threads and torch only does small index operations (its spin-waiting
    OpenMP workers would take the cores from the kernel threads); `threads` on GPUs."""
    torch.set_num_threads(1 if cluster.device.type == "cpu" else threads)


def agree(batch: Cursor | None, cluster: Cluster) -> tuple[int, float]:
    """(steps every rank can take, corpus words one such step covers over all ranks).

    Each rank offers the batches left in its current chunk (0 when its share is done); a
    rank's words per batch are constant within a chunk, so the words of the agreed steps
    are known exactly everywhere. One small all-reduce per chunk instead of one per step.
    """
    mine = (batch.remaining, batch.words) if batch is not None else (0, 0.0)
    if cluster.world == 1:
        return mine
    table = torch.zeros(cluster.world, 2, dtype=torch.float64)
    table[cluster.rank] = torch.tensor(mine, dtype=torch.float64)
    dist.all_reduce(table)
    steps = int(table[:, 0].min().item())
    return steps, float(table[:, 1].sum().item()) if steps else 0.0


def gather_cursors(cursor: tuple[int, int], cluster: Cluster) -> list[list[int]]:
    """Every rank's data cursor, in rank order (for a checkpoint)."""
    if cluster.world == 1:
        return [list(cursor)]
    mine = torch.tensor(list(cursor), dtype=torch.int64)
    every = [torch.zeros(2, dtype=torch.int64) for _ in range(cluster.world)]
    dist.all_gather(every, mine)
    return [t.tolist() for t in every]
