"""GloVe training (`train.model = "glove"`) on the `cooccur` table, with the sgns machinery.

Each rank streams its share of the shards (`data.cooccur_chunks`: whole shards k with
k % world == rank, or a split of the rows when there are fewer shards than ranks) in
chunks of rows; a chunk's entries are shuffled by its own generator seeded by (seed,
epoch, rank, chunk), and cut into batches of `batch_size` entries. The four tables are
sparse embeddings, so DDP reduces the rows a step touched through `SparseRowsExchange`;
ranks agree per chunk on their step count (`agree`) as in the skip-gram trainer, so an
epoch ends for everyone when one rank's share is done (with unevenly sized shards, a few
entries of the larger shares go unseen that epoch).

The update is AdaGrad, hand-written on the touched rows: sums of squared gradients start
at 1 (as the Stanford tool and `torch.optim.Adagrad(initial_accumulator_value=1)`), each
step adds the squared gradient, then moves by -glove_lr * g / sqrt(sum) (torch's order).
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
from torch.nn.parallel import DistributedDataParallel

from embedpipe.config import TrainConfig, to_dict
from embedpipe.corpus.stage import Workdir
from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from embedpipe.train.data import Chunk, CooccurReader, Prefetcher, cooccur_chunks, count_rows
from embedpipe.train.glove import GloVe
from embedpipe.train.trainer import (
    METRICS,
    PREFETCH,
    SUMMARY,
    Batch,
    SparseRowsExchange,
    agree,
    chunk_seed,
    coalesced,
    gather_cursors,
    log_progress,
    setup_cluster,
    sparse_rows_hook,
    training_fingerprint,
    write_loss_curve,
)

TABLES = ("word", "context", "word_bias", "context_bias")


def adagrad_(param: torch.Tensor, sums: torch.Tensor, lr: float) -> None:
    """One AdaGrad step on the rows of `param`'s sparse gradient (then cleared)."""
    grad = coalesced(param.grad)
    rows, values = grad._indices()[0], grad._values()
    total = sums.index_select(0, rows).addcmul_(values, values)
    sums.index_copy_(0, rows, total)
    param.index_add_(0, rows, values.div(total.sqrt_()).mul_(-lr))
    param.grad = None


def iter_glove_batches(
    config: TrainConfig, chunks: list[Chunk], epoch: int, rank: int, first: tuple[int, int]
) -> Iterator[list[Batch]]:
    """A rank's batches of one epoch from cursor `first` = (chunk, batch) on, by chunk."""
    read = CooccurReader()
    first_chunk, first_batch = first
    for index in range(first_chunk, len(chunks)):
        rows, cols, x = read(chunks[index])
        if len(rows) == 0:
            continue
        rng = np.random.default_rng(chunk_seed(config.seed, epoch, rank, index))
        order = rng.permutation(len(rows))
        rows, cols, x = rows[order], cols[order], x[order]
        n_batches = max(1, math.ceil(len(rows) / config.batch_size))
        batches = []
        for b in range(first_batch if index == first_chunk else 0, n_batches):
            sl = slice(b * config.batch_size, (b + 1) * config.batch_size)
            batches.append(
                Batch(
                    (
                        torch.from_numpy(rows[sl]),
                        torch.from_numpy(cols[sl]),
                        torch.from_numpy(x[sl]),
                    ),
                    len(rows[sl]),
                    len(rows) / n_batches,
                    n_batches - b,
                    (index, b + 1) if b + 1 < n_batches else (index + 1, 0),
                )
            )
        yield batches


def train_glove(config: TrainConfig, workdir: str, out: Path) -> dict[str, Any]:
    """Train GloVe on `<workdir>/cooccur`; checkpoints and a summary go to `out`."""
    cluster = setup_cluster()
    torch.set_num_threads(config.threads)
    wd = Workdir(workdir)
    cooccur, vocab_manifest = wd.require("cooccur"), wd.require("vocab")
    run_fingerprint = training_fingerprint(config, wd)
    vocab_size = count_rows(wd.path("vocab"))
    chunks = cooccur_chunks(wd.path("cooccur"), cluster.rank, cluster.world)
    entries = sum(c.stop - c.start for c in cooccur_chunks(wd.path("cooccur"), 0, 1))
    checkpoints = out / "checkpoints"

    model = GloVe(vocab_size, config.dim, config.seed).to(cluster.device)
    params = [getattr(model, name).weight for name in TABLES]
    sums = [torch.ones_like(p) for p in params]
    state: dict[str, Any] = {"epoch": 0, "cursors": [[0, 0]] * cluster.world, "words": 0, "step": 0}
    resume_from = latest_checkpoint(checkpoints)
    if resume_from is not None:
        tensors, state = load_checkpoint(resume_from)
        if state.get("fingerprint") != run_fingerprint:
            raise RuntimeError(
                f"{resume_from} belongs to another training run (fingerprint "
                f"{state.get('fingerprint')}, this run's is {run_fingerprint}: the config or "
                f"the input tables changed); clear {checkpoints} to start afresh"
            )
        if state["world"] != cluster.world:
            raise RuntimeError(
                f"{resume_from} was written by {state['world']} ranks; resume with as many"
            )
        with torch.no_grad():
            for name, p, s in zip(TABLES, params, sums, strict=True):
                p.copy_(tensors[name])
                s.copy_(tensors[f"adagrad.{name}"])
    ddp, exchange = model, None
    if cluster.world > 1:
        ddp = DistributedDataParallel(model)
        bounds = {p: config.batch_size for p in params}
        exchange = SparseRowsExchange(bounds, cluster.world)
        ddp.register_comm_hook(exchange, sparse_rows_hook)

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
                    rows, cols, x = (t.to(cluster.device) for t in batch.tensors())
                    loss = ddp(rows, cols, x, config.x_max, config.alpha)
                    (loss * cluster.world).backward()
                    with torch.no_grad():
                        for p, s in zip(params, sums, strict=True):
                            adagrad_(p, s, config.glove_lr)
                    step += 1
                    done += step_entries
                    loss_sum += loss.item()
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
