"""The process group and what ranks exchange: rows of sparse tables, cursors, step counts.

`SparseRowsExchange` sums sparse tables over the union of the rows the ranks touched (one
all-gather of row ids, one dense all-reduce of values): traffic grows with the batch, never
with the vocabulary. `agree` makes ranks take the same number of steps per chunk, so they
stop an epoch together and share one learning-rate schedule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
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


class SparseRowsExchange:
    """One all-reduce per step for all sparse tables, over the union of the rows ranks touched.

    State of `sparse_rows_hook`, a DDP communication hook (GloVe, which exchanges changes
    rather than gradients, calls `exchange` itself). Gloo's own sparse all-reduce
    costs three all-gathers per table (sizes, indices, values) and a re-sort of the
    gathered rows; here the ranks all-gather every table's row ids at once (int32, padded
    to a per-table bound known in advance: rows a batch can touch), each takes the sorted
    union, and one dense all-reduce sums the values over those union rows. Two collectives
    a step, volume (union rows x dim), never the vocabulary. Buckets are collected until
    the last one; their futures complete together. Tables may differ in width (GloVe's
    biases): their values share one flat buffer. Results are averages over ranks, as
    DDP's default all-reduce gives.
    """

    def __init__(self, bounds: dict[torch.Tensor, int], world: int) -> None:
        self.bounds = {id(p): min(bound, p.shape[0]) for p, bound in bounds.items()}
        self.world = world
        self.pending: list[tuple[torch.Tensor, int, torch.futures.Future]] = []
        self.steps = 0
        self.bytes = 0  # payload this rank contributed: row ids gathered + values reduced

    @property
    def bytes_per_step(self) -> int:
        return round(self.bytes / max(self.steps, 1))

    def add(self, bucket: dist.GradBucket) -> torch.futures.Future:
        (param,) = bucket.parameters()
        future: torch.futures.Future = torch.futures.Future()
        self.pending.append((bucket.buffer(), self.bounds[id(param)], future))
        if bucket.is_last():
            pending, self.pending = self.pending, []
            results = self.exchange([(grad, bound) for grad, bound, _ in pending])
            for (*_, done), result in zip(pending, results, strict=True):
                done.set_result(result)
        return future

    def exchange(self, grads: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        grads = [(coalesced(g), bound) for g, bound in grads]
        starts = np.cumsum([0] + [bound for _, bound in grads]).tolist()
        device = grads[0][0].device
        mine = torch.full((starts[-1],), -1, dtype=torch.int32, device=device)
        for (g, bound), start in zip(grads, starts, strict=False):
            rows = g._indices()[0]
            if len(rows) > bound:
                raise ValueError(
                    f"a gradient touches {len(rows)} rows, more than its bound {bound}"
                )
            mine[start : start + len(rows)] = rows
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        every_rows = torch.stack(every)
        unions, positions = [], []
        for (g, _), start, stop in zip(grads, starts, starts[1:], strict=False):
            # Padding (-1) lands in an extra last slot of `seen`, which is never a row.
            seen = torch.zeros(g.shape[0] + 1, dtype=torch.bool, device=device)
            seen[every_rows[:, start:stop].reshape(-1).long()] = True
            union = seen[:-1].nonzero().squeeze(1)
            where = torch.empty(g.shape[0], dtype=torch.int64, device=device)
            where[union] = torch.arange(len(union), device=device)
            unions.append(union)
            positions.append(where[g._indices()[0]])
        # Tables may differ in width (GloVe's biases): one flat buffer, a slice per table.
        sizes = [len(u) * g[0].shape[1] for g, u in zip(grads, unions, strict=True)]
        offsets = np.cumsum([0] + sizes).tolist()
        values = torch.zeros(offsets[-1], dtype=grads[0][0].dtype, device=device)
        views = []
        for (g, _), union, offset, position in zip(grads, unions, offsets, positions, strict=False):
            view = values[offset : offset + len(union) * g.shape[1]].view(len(union), g.shape[1])
            view.index_copy_(0, position, g._values())
            views.append(view)
        dist.all_reduce(values)
        values.div_(self.world)
        self.steps += 1
        self.bytes += mine.numel() * mine.element_size() + values.numel() * values.element_size()
        return [
            torch.sparse_coo_tensor(
                union.unsqueeze(0), view, g.shape, check_invariants=False, is_coalesced=True
            )
            for (g, _), union, view in zip(grads, unions, views, strict=True)
        ]


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """`grad` marked coalesced when its rows are already sorted and distinct, else coalesced.

    Autograd drops the flag of the gradients `SkipGram` returns; checking is O(rows).
    """
    if grad.is_coalesced():
        return grad
    rows = grad._indices()[0]
    if bool((rows[1:] > rows[:-1]).all()):
        return torch.sparse_coo_tensor(
            grad._indices(), grad._values(), grad.shape, check_invariants=False, is_coalesced=True
        )
    return grad.coalesce()


def sparse_rows_hook(state, bucket):  # noqa: ANN001, ANN201 - DDP checks the annotations
    """DDP communication hook: see `SparseRowsExchange`."""
    return state.add(bucket)


def gather_cursors(cursor: tuple[int, int], cluster: Cluster) -> list[list[int]]:
    """Every rank's data cursor, in rank order (for a checkpoint)."""
    if cluster.world == 1:
        return [list(cursor)]
    mine = torch.tensor(list(cursor), dtype=torch.int64)
    every = [torch.zeros(2, dtype=torch.int64) for _ in range(cluster.world)]
    dist.all_gather(every, mine)
    return [t.tolist() for t in every]
