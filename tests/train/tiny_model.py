"""A model of the tests' own, registered from outside the package (`train.plugins`).

"tiny" pulls each token's vector towards a fixed random target of its own, by SGD on
shuffled batches of the `sequences` table's tokens, under a learning rate that decays over
the run. Everything the loop offers is exercised: chunked batches with a cursor, a
schedule, a dense DDP model across ranks, checkpoint tensors and state, a summary extra.
This file is the whole model: its config section, its spec and its registry entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from embedpipe.config import ConfigError, TrainConfig
from embedpipe.train.data import Batch, ChunkReader, chunk_seed, count_rows, rank_chunks
from embedpipe.train.distributed import Cluster
from embedpipe.train.loop import ModelRun, Resumed
from embedpipe.train.registry import ModelSpec, register_model
from embedpipe.workdir import Workdir


@dataclass(frozen=True)
class TinyConfig:
    """`[train.tiny]`."""

    dim: int = 4
    lr: float = 0.05
    batch_size: int = 32  # tokens per step and rank

    def __post_init__(self) -> None:
        if self.dim < 1 or self.batch_size < 1:
            raise ConfigError("dim and batch_size must be >= 1")


def targets(vocab_size: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(vocab_size, dim, generator=torch.Generator().manual_seed(seed + 1))


class TinyRun(ModelRun):
    """One embedding table; the loss is the squared distance of each token's row to its target."""

    def __init__(
        self, config: TrainConfig, workdir: Workdir, cluster: Cluster, resumed: Resumed | None
    ) -> None:
        self.options: TinyConfig = config.options
        self.seed, self.cluster = config.seed, cluster
        vocab_size = count_rows(workdir.table_path("vocab"))
        sequences = workdir.require("sequences")
        table = workdir.table_path("sequences", manifest=sequences)
        self.chunks = rank_chunks(table, cluster.rank, cluster.world, 64)
        self.corpus_words = sequences["counts"]["tokens"]
        self.epoch_words = self.corpus_words
        self.table = torch.nn.Embedding(vocab_size, self.options.dim)
        torch.nn.init.normal_(self.table.weight, generator=torch.Generator().manual_seed(self.seed))
        self.target = targets(vocab_size, self.options.dim, self.seed)
        self.moves = 0
        if resumed is not None:
            with torch.no_grad():
                self.table.weight.copy_(resumed[0]["input"])
            self.moves = resumed[1]["moves"]
        self.ddp = DistributedDataParallel(self.table) if cluster.world > 1 else self.table

    def batches(self, epoch: int, cursor: tuple[int, int]) -> Iterator[list[Batch]]:
        read, size = ChunkReader(), self.options.batch_size
        for index in range(cursor[0], len(self.chunks)):
            flat, _ = read(self.chunks[index])
            rng = np.random.default_rng(chunk_seed(self.seed, epoch, self.cluster.rank, index))
            ids = torch.from_numpy(rng.permutation(flat).astype(np.int64))
            n = max(1, -(-len(ids) // size))
            first = cursor[1] if index == cursor[0] else 0
            yield [
                Batch((ids[b * size : (b + 1) * size],), len(ids[b * size : (b + 1) * size]),
                      len(ids) / n, n - b, (index, b + 1) if b + 1 < n else (index + 1, 0))
                for b in range(first, n)
            ]  # fmt: skip

    def learning_rate(self, step: int, progress: float) -> float:
        return self.options.lr * (1.0 - 0.9 * progress)

    def train_step(self, batch: Batch, lr: float, step: int) -> tuple[float, int]:
        (ids,) = batch.data
        loss = ((self.ddp(ids) - self.target[ids]) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            self.table.weight.add_(self.table.weight.grad, alpha=-lr)
            self.table.weight.grad = None
        self.moves += len(ids)
        return loss.item(), len(ids)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"input": self.table.weight}

    def state(self) -> dict[str, Any]:
        return {"moves": self.moves}

    def summary(self) -> dict[str, Any]:
        return {"moves": self.moves}


register_model(ModelSpec("tiny", TinyConfig, "sequences", TinyRun))
