"""Skip-gram (`train.model = "sgns"`) and CBOW (`"cbow"`) on the `sequences` table.

Each rank streams its own row range of `sequences`; the loop's data thread turns the next
chunk into window batches (`windows`: subsampling, dynamic windows, negatives) while the
current one trains. On CPU every rank trains its tables in place (`SkipGram.train_in_place`,
word2vec.c's way) from batches over global ids (`windows.SpanBatch`), its `train.threads`
threads taking whole batches at once (`InPlaceTrainer`). On GPUs the step runs blocked
tensor operations on copies of the touched rows (`windows.WindowBatch`) and adds the
result to the tables. Across ranks, every rank marks the rows its batches touch and
`sync.RowSync` sums the ranks' changes every `sync_every` words a rank, overlapped with
the next interval's training (see `sync` for what a rank may miss and why that is safe).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from embedpipe import schemas as S
from embedpipe.config import TrainConfig
from embedpipe.train.cbow import CBOW
from embedpipe.train.data import Batch, Chunk, ChunkReader, chunk_seed, rank_chunks
from embedpipe.train.distributed import Cluster, set_kernel_threads, sync_group
from embedpipe.train.init import Parent
from embedpipe.train.loop import ModelRun, Resumed
from embedpipe.train.registry import Word2VecConfig
from embedpipe.train.sgns import InPlaceTrainer, SkipGram
from embedpipe.train.sync import RowSync
from embedpipe.train.windows import (
    RowCompactor,
    WindowBatch,
    batch_count,
    chunk_windows,
    noise_table,
    span_batches,
    window_batches,
)
from embedpipe.workdir import Workdir


class SkipGramRun(ModelRun):
    """Skip-gram: each context word predicts the centre word (`sgns.SkipGram`)."""

    table_class: type[SkipGram] = SkipGram
    continues = True

    def __init__(
        self,
        config: TrainConfig,
        workdir: Workdir,
        cluster: Cluster,
        resumed: Resumed | None,
        parent: Parent | None = None,
    ) -> None:
        options: Word2VecConfig = config.options
        self.options, self.seed, self.cluster = options, config.seed, cluster
        set_kernel_threads(cluster, config.threads)
        # Subsampling comes with the vocabulary (vocab.sample, the build_vocab stage); so
        # does the noise distribution, unless the model sets its own `noise_power`.
        vocab = pq.read_table(
            workdir.table_path("vocab"), columns=[S.ID, S.COUNT, S.KEEP_PROB, S.NOISE_PROB]
        )
        vocab = vocab.sort_by(S.ID)
        self.keep_prob = vocab.column(S.KEEP_PROB).to_numpy()
        self.noise = noise_table(vocab, options.noise_power)
        sequences = workdir.require("sequences")
        self.corpus_words = sequences["counts"]["tokens"]
        self.epoch_words = self.corpus_words
        table = workdir.table_path("sequences", manifest=sequences)
        self.chunks = rank_chunks(table, cluster.rank, cluster.world)
        model = self.table_class(len(self.keep_prob), options.dim, config.seed, config.threads)
        self.model = model.to(cluster.device)
        if resumed is not None:
            with torch.no_grad():
                self.model.input.weight.copy_(resumed[0]["input"])
                self.model.output.weight.copy_(resumed[0]["output"])
        if parent is not None:  # input rows from the published vectors; output fresh
            parent.check_dim(options.dim, f"train.{config.model}.dim")
            parent.copy_rows(self.model.input.weight, parent.emb.vectors)
        self.params = [self.model.input.weight, self.model.output.weight]
        # On CPU the kernel trains the tables in place; GPUs step on copies of the rows.
        self.in_place = cluster.device.type == "cpu"
        self.runner = InPlaceTrainer(self.model, config.threads) if self.in_place else None
        self.sync = None
        if cluster.world > 1:
            payload = getattr(torch, options.sync_payload)
            self.sync = RowSync(
                self.params,
                sync_group(cluster),
                cluster.world,
                payload,
                hot_rows=options.sync_hot_rows or None,
                full_every=options.sync_rare_every,
            )
            self.sync_every = options.sync_every * cluster.world
            self.sync_overlap = options.sync_overlap

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
        if self.sync is not None:
            self.mark(batch.data)
        if self.runner is not None:
            return self.runner.submit(batch.data, lr), batch.pairs
        data = WindowBatch(*(t.to(self.cluster.device) for t in batch.tensors()))
        with torch.no_grad():
            loss, grad_in, grad_out = self.model.step(*self.params, data, lr)
            for p, rows, grad in zip(
                self.params, (data.in_rows, data.out_rows), (grad_in, grad_out), strict=True
            ):  # plain SGD on the rows the step touched (index_add_ is slower with alpha)
                p.index_add_(0, rows, grad.mul_(-lr))
        return float(loss), batch.pairs

    def mark(self, data: Any) -> None:
        """Note the rows a batch touches: its tokens (input), centres and negatives (output)."""
        assert self.sync is not None
        if isinstance(data, WindowBatch):
            self.sync.mark(0, data.in_rows.numpy())
            self.sync.mark(1, data.out_rows.numpy())
        else:  # SpanBatch over global ids
            self.sync.mark(0, data.span)
            self.sync.mark(1, data.centres)
            self.sync.mark(1, data.negatives.reshape(-1))

    def exchange(self) -> None:
        assert self.sync is not None
        self.sync.boundary()

    def settle(self) -> None:
        assert self.sync is not None
        self.sync.settle()

    def drain(self) -> float:
        loss = self.runner.drain() if self.runner is not None else 0.0
        if self.sync is not None:
            self.sync.finish()
        return loss

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"input": self.model.input.weight, "output": self.model.output.weight}

    def summary(self) -> dict[str, Any]:
        return self.sync.summary() if self.sync is not None else {}


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
