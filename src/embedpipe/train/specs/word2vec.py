"""Skip-gram (`train.model = "sgns"`) and CBOW (`"cbow"`) on the `sequences` table.

Each rank streams its own row range of `sequences`; the loop's data thread turns the next
chunk into window batches (`windows`: subsampling, dynamic windows, negatives, the rows
each batch touches) while the current one trains. One process on CPU trains the tables in
place (`SkipGram.train_in_place`, word2vec.c's way) from batches over global ids
(`windows.SpanBatch`: no compaction), its `train.threads` threads taking whole batches at
once (`InPlaceTrainer`). Across ranks or on GPUs the step works on copies of the touched
rows (a compiled kernel on CPU, blocked tensor operations on GPUs) and returns
(rows before - rows after) / lr as coalesced sparse gradients, which
DistributedDataParallel reduces through `SparseRowsExchange` (one all-reduce over the
union of the rows the ranks touched: traffic grows with the batch, never with the
vocabulary). The loss is multiplied by the world size so each rank's updates count fully
(DDP averages), and every rank applies the same plain SGD update: the sum of all ranks'
updates of the step, as word2vec's threads each apply their own. A rank misses the other
ranks' updates of the current step: bigger batches mean fewer exchanges but staler rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.nn.parallel import DistributedDataParallel

from embedpipe import schemas as S
from embedpipe.config import TrainConfig
from embedpipe.train.cbow import CBOW
from embedpipe.train.data import Batch, Chunk, ChunkReader, chunk_seed, rank_chunks
from embedpipe.train.distributed import (
    Cluster,
    SparseRowsExchange,
    set_kernel_threads,
    sparse_rows_hook,
)
from embedpipe.train.loop import ModelRun, Resumed
from embedpipe.train.registry import Word2VecConfig
from embedpipe.train.sgns import InPlaceTrainer, SkipGram
from embedpipe.train.windows import (
    RowCompactor,
    WindowBatch,
    alias_table,
    batch_count,
    chunk_windows,
    span_batches,
    window_batches,
)
from embedpipe.workdir import Workdir


class SkipGramRun(ModelRun):
    """Skip-gram: each context word predicts the centre word (`sgns.SkipGram`)."""

    table_class: type[SkipGram] = SkipGram

    def __init__(
        self, config: TrainConfig, workdir: Workdir, cluster: Cluster, resumed: Resumed | None
    ) -> None:
        options: Word2VecConfig = config.options
        self.options, self.seed, self.cluster = options, config.seed, cluster
        set_kernel_threads(cluster, config.threads)
        # Subsampling and the noise distribution come with the vocabulary (vocab.sample,
        # vocab.noise_power), computed by the build_vocab stage.
        vocab = pq.read_table(workdir.path("vocab"), columns=[S.ID, S.KEEP_PROB, S.NOISE_PROB])
        vocab = vocab.sort_by(S.ID)
        self.keep_prob = vocab.column(S.KEEP_PROB).to_numpy()
        self.noise = alias_table(vocab.column(S.NOISE_PROB).to_numpy())
        self.corpus_words = workdir.require("sequences")["counts"]["tokens"]
        self.epoch_words = self.corpus_words
        self.chunks = rank_chunks(workdir.path("sequences"), cluster.rank, cluster.world)
        model = self.table_class(len(self.keep_prob), options.dim, config.seed, config.threads)
        self.model = model.to(cluster.device)
        if resumed is not None:
            with torch.no_grad():
                self.model.input.weight.copy_(resumed[0]["input"])
                self.model.output.weight.copy_(resumed[0]["output"])
        self.ddp, self.exchange = self.model, None
        if cluster.world > 1:
            self.ddp = DistributedDataParallel(self.model)
            # Rows a batch can touch: its span of tokens (input), centres and negatives (output).
            bounds = {
                self.model.input.weight: options.batch_size + 2 * options.window,
                self.model.output.weight: options.batch_size * (1 + options.negatives),
            }
            self.exchange = SparseRowsExchange(bounds, cluster.world)
            self.ddp.register_comm_hook(self.exchange, sparse_rows_hook)
        self.params = [self.model.input.weight, self.model.output.weight]
        # One process on CPU: the kernel trains the tables in place (nothing to exchange).
        self.in_place = cluster.world == 1 and cluster.device.type == "cpu"
        self.runner = InPlaceTrainer(self.model, config.threads) if self.in_place else None

    def batches(self, epoch: int, cursor: tuple[int, int]) -> Iterator[list[Batch]]:
        return iter_batches(
            self.options, self.seed, self.chunks, epoch, self.cluster.rank, cursor,
            self.keep_prob, self.noise, compact=not self.in_place,
        )  # fmt: skip

    def learning_rate(self, step: int, progress: float) -> float:
        """Linear decay from lr to min_lr over the whole run."""
        o = self.options
        return max(o.min_lr, o.lr - (o.lr - o.min_lr) * progress)

    def train_step(self, batch: Batch, lr: float, step: int) -> tuple[float, int]:
        if self.runner is not None:
            return self.runner.submit(batch.data, lr), batch.pairs
        data = WindowBatch(*(t.to(self.cluster.device) for t in batch.tensors()))
        loss = self.ddp(data, lr)
        # DDP averages gradients over ranks; scale so each rank's pairs count fully, as
        # word2vec's threads each apply their own updates.
        (loss * self.cluster.world).backward()
        with torch.no_grad():
            for p in self.params:  # plain SGD on the rows the step touched
                # (index_add_ is slower with an alpha: scale first)
                step_rows = p.grad._values().mul_(-lr)
                p.index_add_(0, p.grad._indices()[0], step_rows)
                p.grad = None
        return loss.item(), batch.pairs

    def drain(self) -> float:
        return self.runner.drain() if self.runner is not None else 0.0

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"input": self.model.input.weight, "output": self.model.output.weight}

    def summary(self) -> dict[str, Any]:
        return {"bytes_per_step": self.exchange.bytes_per_step if self.exchange else 0}


class CBOWRun(SkipGramRun):
    """CBOW: the mean of the context vectors predicts the centre word (`cbow.CBOW`)."""

    table_class = CBOW


def iter_batches(
    options: Word2VecConfig,
    seed: int,
    chunks: list[Chunk],
    epoch: int,
    rank: int,
    cursor: tuple[int, int],
    keep_prob: np.ndarray,
    noise: tuple[np.ndarray, np.ndarray],
    compact: bool = True,
) -> Iterator[list[Batch]]:
    """The batches of one rank and epoch from `cursor` = (chunk, batch) on, by chunk:
    `WindowBatch`es, or with `compact=False` `SpanBatch`es (the in-place path).

    Everything random about a chunk (subsampling, windows, negatives) comes from its own
    generator seeded by (seed, epoch, rank, chunk), so any batch can be rebuilt.
    """
    read = ChunkReader()
    compactor = RowCompactor(len(keep_prob))
    first_chunk, first_batch = cursor
    for index in range(first_chunk, len(chunks)):
        flat, offsets = read(chunks[index])
        rng = np.random.default_rng(chunk_seed(seed, epoch, rank, index))
        windows = chunk_windows(
            flat, offsets, keep_prob, options.window, options.negatives, noise, rng
        )
        n_batches = batch_count(windows, options.batch_size)
        words_per_batch = len(flat) / n_batches
        first = first_batch if index == first_chunk else 0
        batches = [
            Batch(
                data,
                examples,
                words_per_batch,
                n_batches - b,
                (index, b + 1) if b + 1 < n_batches else (index + 1, 0),
            )
            for b, (data, examples) in enumerate(
                window_batches(windows, options.batch_size, first, compactor)
                if compact
                else span_batches(windows, options.batch_size, first),
                start=first,
            )
        ]
        if batches:
            yield batches
