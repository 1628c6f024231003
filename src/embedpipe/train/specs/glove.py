"""GloVe (`train.model = "glove"`) on the `cooccur` table: the Stanford tool's AdaGrad.

Data order. The `cooccur` shards are sorted by row, so reading them in order would feed
the optimiser one narrow band of words at a time. Each rank takes its share of the shards
(`data.cooccur_chunks`: whole shards k with k % world == rank, or a split of the rows
when there are fewer shards than ranks) as chunks of one row group each, visits them in a
random order drawn from (seed, epoch, rank), and shuffles `POOL_CHUNKS` chunks at a time
together before cutting them into batches of `batch_size` entries: a near-global
shuffle, as the Stanford tool's `shuffle`, in bounded memory.

The step (`glove.glove_step`) is AdaGrad entry by entry on copies of the rows the batch
touches (on CPU; Hogwild threads with `train.threads` > 1), added to this rank's tables.
Across ranks, `sync.RowSync` sums the ranks' changes to the four tables and their AdaGrad
sums every `sync_every` entries a rank, overlapped with the next interval's training.
With unevenly sized shards, a few entries of the larger shares go unseen in an epoch (the
loop's agreement ends it for everyone when one rank's share is done).

The learning rate is constant (`train.glove.lr`). The AdaGrad sums are part of the state:
checkpoints hold the four tables, their sums, and W + C under "input" (the published
vectors). "words" in logs and the summary are co-occurrence entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from embedpipe.config import TrainConfig
from embedpipe.train.data import (
    Batch,
    Chunk,
    CooccurReader,
    chunk_seed,
    cooccur_chunks,
    count_rows,
)
from embedpipe.train.distributed import Cluster, set_kernel_threads, sync_group
from embedpipe.train.glove import TABLES, GloVe, glove_step
from embedpipe.train.init import Parent
from embedpipe.train.loop import ModelRun, Resumed
from embedpipe.train.registry import GloVeConfig
from embedpipe.train.sync import RowSync
from embedpipe.train.windows import RowCompactor
from embedpipe.workdir import Workdir

POOL_CHUNKS = 256  # chunks (row groups of 8,192 entries) shuffled together


class GloVeRun(ModelRun):
    """GloVe's four tables and their AdaGrad sums, trained on this rank's `cooccur` share."""

    unit = "entries"
    continues = True

    def __init__(
        self,
        config: TrainConfig,
        workdir: Workdir,
        cluster: Cluster,
        resumed: Resumed | None,
        parent: Parent | None = None,
    ) -> None:
        options: GloVeConfig = config.options
        self.options, self.seed, self.threads, self.cluster = (
            options, config.seed, config.threads, cluster,
        )  # fmt: skip
        set_kernel_threads(cluster, config.threads)
        vocab_size = count_rows(workdir.table_path("vocab"))
        cooccur = workdir.table_path("cooccur")
        self.chunks = cooccur_chunks(cooccur, cluster.rank, cluster.world)
        every = cooccur_chunks(cooccur, 0, 1)
        self.corpus_words = sum(c.stop - c.start for c in every)  # entries per epoch
        self.epoch_words = self.corpus_words
        self.model = GloVe(vocab_size, options.dim, config.seed).to(cluster.device)
        self.params = self.model.tables()
        self.sums = [torch.ones_like(p) for p in self.params]
        if resumed is not None:
            with torch.no_grad():
                for name, p, s in zip(TABLES, self.params, self.sums, strict=True):
                    p.copy_(resumed[0][name])
                    s.copy_(resumed[0][f"adagrad.{name}"])
        if parent is not None:  # W = C = half the published W + C; biases, sums fresh
            parent.check_dim(options.dim, "train.glove.dim")
            for table in (self.model.word.weight, self.model.context.weight):
                parent.copy_rows(table, parent.emb.vectors, scale=0.5)
        self.compact = RowCompactor(vocab_size)
        self.sync = None
        if cluster.world > 1:
            payload = getattr(torch, options.sync_payload)
            tables = [*self.params, *self.sums]
            self.sync = RowSync(tables, sync_group(cluster), cluster.world, payload)
            self.sync_every = options.sync_every * cluster.world
            self.sync_overlap = options.sync_overlap

    def batches(self, epoch: int, cursor: tuple[int, int]) -> Iterator[list[Batch]]:
        return iter_glove_batches(
            self.options.batch_for(self.cluster.device.type),
            self.seed,
            self.chunks,
            epoch,
            self.cluster.rank,
            cursor,
        )

    def learning_rate(self, step: int, progress: float) -> float:
        return self.options.lr

    def train_step(self, batch: Batch, lr: float, step: int) -> tuple[float, int]:
        o = self.options
        with torch.no_grad():
            result = glove_step(
                self.params, self.sums, *batch.tensors(), o.x_max, o.alpha, lr, self.threads,
                self.compact,
            )  # fmt: skip
            for i, (p, rows, change) in enumerate(
                zip([*self.params, *self.sums], result.rows, result.changes, strict=True)
            ):
                p.index_add_(0, rows, change)
                if self.sync is not None:
                    self.sync.mark(i, rows.cpu().numpy())
        return result.loss, batch.pairs

    def exchange(self) -> None:
        assert self.sync is not None
        self.sync.boundary()

    def settle(self) -> None:
        assert self.sync is not None
        self.sync.settle()

    def drain(self) -> float:
        if self.sync is not None:
            self.sync.finish()
        return 0.0

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"input": self.model.vectors()}
        for name, p, s in zip(TABLES, self.params, self.sums, strict=True):
            tensors[name], tensors[f"adagrad.{name}"] = p, s
        return tensors

    def summary(self) -> dict[str, Any]:
        return self.sync.summary() if self.sync is not None else {}


def pool_order(seed: int, n_chunks: int, epoch: int, rank: int) -> list[list[int]]:
    """A rank's chunks for one epoch, in a random order of (seed, epoch, rank), in pools."""
    order = np.random.default_rng([seed, epoch, rank]).permutation(n_chunks).tolist()
    return [order[i : i + POOL_CHUNKS] for i in range(0, n_chunks, POOL_CHUNKS)]


def iter_glove_batches(
    size: int,
    seed: int,
    chunks: list[Chunk],
    epoch: int,
    rank: int,
    first: tuple[int, int],
) -> Iterator[list[Batch]]:
    """A rank's batches of `size` entries for one epoch from cursor `first` = (pool, batch) on."""
    read = CooccurReader()
    try:
        first_pool, first_batch = first
        pools = pool_order(seed, len(chunks), epoch, rank)
        for index in range(first_pool, len(pools)):
            # Read in table order (chunks sharing a row group read it once); shuffled next.
            parts = [read(chunks[c]) for c in sorted(pools[index])]
            rows, cols, x = (np.concatenate(column) for column in zip(*parts, strict=True))
            if len(rows) == 0:
                continue
            rng = np.random.default_rng(chunk_seed(seed, epoch, rank, index))
            order = rng.permutation(len(rows))
            rows, cols, x = rows[order], cols[order], x[order]
            n_batches = max(1, math.ceil(len(rows) / size))
            batches = []
            for b in range(first_batch if index == first_pool else 0, n_batches):
                sl = slice(b * size, (b + 1) * size)
                after = (index, b + 1) if b + 1 < n_batches else (index + 1, 0)
                batches.append(
                    Batch((rows[sl], cols[sl], x[sl]), len(rows[sl]), len(rows) / n_batches,
                          n_batches - b, after)
                )  # fmt: skip
            yield batches
    finally:
        read.close()
