"""GloVe training (`train.model = "glove"`) on the `cooccur` table, with the sgns machinery.

Data order. The `cooccur` shards are sorted by row, so reading them in order would feed
the optimiser one narrow band of words at a time. Each rank takes its share of the shards
(`data.cooccur_chunks`: whole shards k with k % world == rank, or a split of the rows
when there are fewer shards than ranks) as chunks of one row group each, visits them in a
random order drawn from (seed, epoch, rank), and shuffles `POOL_CHUNKS` chunks at a time
together (about 2M entries, 40 MB) before cutting them into batches of `batch_size`
entries: a near-global shuffle, as the Stanford tool's `shuffle`, in bounded memory.

The step (`glove.glove_step`) is the Stanford tool's AdaGrad, entry by entry on copies of
the rows the batch touches (on CPU; Hogwild threads with `train.threads` > 1). The ranks
then sum their changes to the four tables and to their AdaGrad sums with one
`SparseRowsExchange` (row-sparse all-reduce over the union of the rows touched: traffic
is bounded by the batch, never the vocabulary), and every rank applies the same sum, so
the replicas stay identical. A rank misses the other ranks' updates of the current step:
bigger batches mean fewer exchanges but staler rows. Ranks agree per pool on their step
count (`agree`) as in the skip-gram trainer, so an epoch ends for everyone when one
rank's share is done (with unevenly sized shards, a few entries of the larger shares go
unseen that epoch).

The learning rate is constant (`train.glove_lr`, default 0.05 as the Stanford tool;
`train.lr` / `min_lr` are not used). The sums are part of the state: checkpoints hold the
four tables, their AdaGrad sums, and W + C under "input" (the published vectors), so a
resumed run repeats exactly. "words" in logs and the summary are co-occurrence entries.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from embedpipe.config import TrainConfig, to_dict
from embedpipe.train.checkpoint import latest_checkpoint, resume_checkpoint, save_checkpoint
from embedpipe.train.data import Chunk, CooccurReader, Prefetcher, cooccur_chunks, count_rows
from embedpipe.train.glove import TABLES, GloVe, glove_step
from embedpipe.train.trainer import (
    METRICS,
    PREFETCH,
    SUMMARY,
    Batch,
    SparseRowsExchange,
    agree,
    chunk_seed,
    gather_cursors,
    log_progress,
    set_kernel_threads,
    setup_cluster,
    training_fingerprint,
    write_loss_curve,
)
from embedpipe.train.windows import RowCompactor
from embedpipe.workdir import Workdir

POOL_CHUNKS = 256  # chunks (row groups of 8,192 entries) shuffled together: ~2M entries


def pool_order(config: TrainConfig, n_chunks: int, epoch: int, rank: int) -> list[list[int]]:
    """A rank's chunks for one epoch, in a random order of (seed, epoch, rank), in pools."""
    order = np.random.default_rng([config.seed, epoch, rank]).permutation(n_chunks).tolist()
    return [order[i : i + POOL_CHUNKS] for i in range(0, n_chunks, POOL_CHUNKS)]


def iter_glove_batches(
    config: TrainConfig, chunks: list[Chunk], epoch: int, rank: int, first: tuple[int, int]
) -> Iterator[list[Batch]]:
    """A rank's batches of one epoch from cursor `first` = (pool, batch) on, by pool."""
    read = CooccurReader()
    try:
        first_pool, first_batch = first
        pools = pool_order(config, len(chunks), epoch, rank)
        for index in range(first_pool, len(pools)):
            # Read in table order (chunks sharing a row group read it once); shuffled next.
            parts = [read(chunks[c]) for c in sorted(pools[index])]
            rows, cols, x = (np.concatenate(column) for column in zip(*parts, strict=True))
            if len(rows) == 0:
                continue
            rng = np.random.default_rng(chunk_seed(config.seed, epoch, rank, index))
            order = rng.permutation(len(rows))
            rows, cols, x = rows[order], cols[order], x[order]
            n_batches = max(1, math.ceil(len(rows) / config.batch_size))
            batches = []
            for b in range(first_batch if index == first_pool else 0, n_batches):
                sl = slice(b * config.batch_size, (b + 1) * config.batch_size)
                batches.append(
                    Batch(
                        (rows[sl], cols[sl], x[sl]),
                        len(rows[sl]),
                        len(rows) / n_batches,
                        n_batches - b,
                        (index, b + 1) if b + 1 < n_batches else (index + 1, 0),
                    )
                )
            yield batches
    finally:
        read.close()


def apply_changes(
    params: list[torch.Tensor],
    rows: list[torch.Tensor],
    changes: list[torch.Tensor],
    exchange: SparseRowsExchange | None,
    bound: int,
) -> None:
    """Add every rank's changes of a step to `params` (the same sum on every rank)."""
    if exchange is not None:
        local = [
            torch.sparse_coo_tensor(
                r.unsqueeze(0), c, p.shape, check_invariants=False, is_coalesced=True
            )
            for p, r, c in zip(params, rows, changes, strict=True)
        ]
        summed = exchange.exchange([(g, bound) for g in local])
        rows = [g._indices()[0] for g in summed]  # averages over ranks: scale back to sums
        changes = [g._values().mul_(exchange.world) for g in summed]
    for p, r, c in zip(params, rows, changes, strict=True):
        p.index_add_(0, r, c)


def train_glove(config: TrainConfig, workdir: str, out: Path) -> dict[str, Any]:
    """Train GloVe on `<workdir>/cooccur`; checkpoints and a summary go to `out`."""
    cluster = setup_cluster()
    set_kernel_threads(cluster, config.threads)
    wd = Workdir(workdir)
    cooccur, vocab_manifest = wd.require("cooccur"), wd.require("vocab")
    run_fingerprint = training_fingerprint(config, wd)
    vocab_size = count_rows(wd.path("vocab"))
    chunks = cooccur_chunks(wd.path("cooccur"), cluster.rank, cluster.world)
    entries = sum(c.stop - c.start for c in cooccur_chunks(wd.path("cooccur"), 0, 1))
    checkpoints = out / "checkpoints"

    model = GloVe(vocab_size, config.dim, config.seed).to(cluster.device)
    params = model.tables()
    sums = [torch.ones_like(p) for p in params]
    state: dict[str, Any] = {"epoch": 0, "cursors": [[0, 0]] * cluster.world, "words": 0, "step": 0}
    resumed = resume_checkpoint(checkpoints, run_fingerprint, cluster.world)
    if resumed is not None:
        _, tensors, state = resumed
        with torch.no_grad():
            for name, p, s in zip(TABLES, params, sums, strict=True):
                p.copy_(tensors[name])
                s.copy_(tensors[f"adagrad.{name}"])
    exchange = SparseRowsExchange({}, cluster.world) if cluster.world > 1 else None
    compact = RowCompactor(vocab_size)

    out.mkdir(parents=True, exist_ok=True)
    metrics = (out / METRICS).open("a") if cluster.is_main else None
    step, done = state["step"], state["words"]
    total = max(1, entries * config.epochs)
    start_time, start_done = time.time(), done
    loss_sum, count = 0.0, 0

    def snapshot(epoch: int, cursor: tuple[int, int]) -> None:
        cursors = gather_cursors(cursor, cluster)
        if cluster.is_main:
            tensors = {"input": model.vectors()}
            for name, p, s in zip(TABLES, params, sums, strict=True):
                tensors[name], tensors[f"adagrad.{name}"] = p, s
            save_checkpoint(
                checkpoints,
                step,
                tensors,
                {
                    "epoch": epoch,
                    "cursors": cursors,
                    "words": done,
                    "world": cluster.world,
                    "config": to_dict(config),
                    "fingerprint": run_fingerprint,
                },
                config.keep_checkpoints,
            )

    for epoch in range(state["epoch"], config.epochs):
        first = tuple(state["cursors"][cluster.rank]) if epoch == state["epoch"] else (0, 0)
        batches = iter_glove_batches(config, chunks, epoch, cluster.rank, first)
        with Prefetcher(batches, depth=PREFETCH) as ahead:
            stream = Prefetcher(itertools.chain.from_iterable(ahead), depth=0)
            while True:
                agreed, step_entries = agree(stream.peek(), cluster)
                if agreed == 0:
                    break
                for _ in range(agreed):
                    batch = next(stream)
                    with torch.no_grad():
                        result = glove_step(
                            params, sums, *batch.tensors(), config.x_max, config.alpha,
                            config.glove_lr, config.threads, compact,
                        )  # fmt: skip
                        apply_changes(
                            [*params, *sums], result.rows, result.changes, exchange,
                            config.batch_size,
                        )  # fmt: skip
                    step += 1
                    done += step_entries
                    loss_sum += result.loss
                    count += batch.pairs
                    if cluster.is_main and step % config.log_every == 0:
                        log_progress(
                            metrics, step, epoch, min(1.0, done / total), loss_sum / max(count, 1),
                            config.glove_lr,
                            rate=(done - start_done) / max(time.time() - start_time, 1e-9),
                            remaining=total - done, unit="entries",
                        )  # fmt: skip
                        loss_sum, count = 0.0, 0
                    if config.checkpoint_every and step % config.checkpoint_every == 0:
                        snapshot(epoch, batch.cursor)
        done = (epoch + 1) * entries
        snapshot(epoch + 1, (0, 0))

    elapsed = time.time() - start_time
    summary = {
        "model": config.model,
        "config": to_dict(config),
        "fingerprint": run_fingerprint,
        "world_size": cluster.world,
        "device": cluster.device.type,
        "steps": step,
        "seconds": round(elapsed, 3),
        "corpus_words": entries,  # co-occurrence entries per epoch
        "words_per_sec": round((done - start_done) / max(elapsed, 1e-9)),
        "bytes_per_step": exchange.bytes_per_step if exchange else 0,
        "checkpoint": latest_checkpoint(checkpoints).name if cluster.is_main else None,
        "inputs": {"cooccur": cooccur["fingerprint"], "vocab": vocab_manifest["fingerprint"]},
    }
    if cluster.is_main:
        metrics.close()
        write_loss_curve(out)
        (out / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True))
        print(
            json.dumps({k: summary[k] for k in ("steps", "seconds", "words_per_sec")}), flush=True
        )
    if cluster.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary
