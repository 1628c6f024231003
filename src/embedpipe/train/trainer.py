"""The distributed trainer: one script that runs alone or under torchrun (gloo or NCCL).

Each rank streams its own row range of `sequences`; a background thread turns the next
chunk into window batches (`windows`: subsampling, dynamic windows, negatives, the rows
each batch touches) while the current one trains. On CPU the step is a compiled kernel
(`kernels`): word2vec.c's loop, centre word by centre word, on working copies of the
touched rows, with the K negatives of a centre word shared by its contexts; on GPUs the
same batch goes through blocked tensor operations. Either way the step returns
(rows before - rows after) / lr as coalesced sparse gradients over the touched rows. A
single process on CPU skips the copies: the kernel trains the tables in place
(`SkipGram.train_in_place`, word2vec.c's way; measured 442k -> 595k words/s on one core)
from batches over global ids (`windows.SpanBatch`: no compaction, which only ranks and GPUs
need; CBOW on 2 threads 2.61M -> 3.11M words/s), and with `train.threads` > 1 its threads
take whole batches at once (`InPlaceTrainer`).
DistributedDataParallel reduces them through `SparseRowsExchange`, a communication hook
that sums every table over the union of the rows the ranks touched in one all-reduce
(plus one small all-gather of row ids): per-step traffic grows with the batch, never
with the vocabulary. The loss is multiplied by the world size so each rank's updates
count fully (DDP averages), and every rank applies the same plain SGD update to the same
rows: the sum of all ranks' updates of the step, as word2vec's threads each apply their
own.

`train.model` picks the objective: "sgns" (skip-gram: each context predicts the centre
word), "cbow" (the mean of the contexts predicts it, gensim's cbow_mean=1), both over the
same window batches (`batch_size` counts centre words), or "glove"
(`glove_trainer.train_glove`: the Stanford tool's AdaGrad on the `cooccur` table, same
cursor, agreement, row exchange and checkpoint layout).

Ranks agree once per chunk, not per step, on how many steps all of them can take (the
fewest batches left in any rank's current chunk; 0 ends the epoch for everyone) and on the
corpus words those steps cover, so they share one learning-rate schedule exactly and their
replicas stay bit-identical. Only rank 0 logs and writes (metrics.jsonl, loss.png).

All randomness is derived from (seed, epoch, rank, chunk): the cursor (epoch, chunk, batch)
with the weights and the step is the whole state, so a resumed run repeats exactly (tested,
bit for bit). Checkpoints and the `_TRAINED.json` summary carry the run's fingerprint (the
TrainConfig and the upstream manifests' fingerprints); a checkpoint of another run is
refused on resume.

Communication: a rank misses the other ranks' updates of the current step, so
(world - 1) x batch_size centre words are stale when it computes. Bigger batches mean
fewer exchanges (each nearly covers the frequent part of the vocabulary: ~20 MB a step at
16,384 centre words, ~33 MB at 65,536, dim 100, vocabulary 68k) but more staleness.
Figures: bench/train_vs_gensim.py and the README.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from embedpipe import schemas as S
from embedpipe.config import TrainConfig, fingerprint, to_dict
from embedpipe.train.cbow import CBOW
from embedpipe.train.checkpoint import latest_checkpoint, resume_checkpoint, save_checkpoint
from embedpipe.train.data import Chunk, ChunkReader, Prefetcher, rank_chunks
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

SUMMARY = "_TRAINED.json"
METRICS = "metrics.jsonl"  # one JSON record per logged step (rank 0); loss.png plots it
PREFETCH = 1  # chunks the data thread may prepare ahead


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


def setup_cluster() -> Cluster:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # NCCL cannot all-reduce sparse gradients: the word2vec tables stay on gloo.
        dist.init_process_group(backend="gloo")
    return Cluster(rank, world, local_rank, device)


def set_kernel_threads(cluster: Cluster, threads: int) -> None:
    """Torch's intra-op threads for the word2vec and GloVe trainers: 1 on CPU, where the
    compiled kernels run their own `threads` threads and torch only does small index
    operations, whose spin-waiting OpenMP workers took the cores from the kernel threads
    (measured, CBOW on 2 cores: 2 Hogwild threads ran 1.04x one thread with torch at 2
    threads, 2.05x with torch at 1)."""
    torch.set_num_threads(1 if cluster.device.type == "cpu" else threads)


def chunk_seed(seed: int, epoch: int, rank: int, chunk: int) -> list[int]:
    return [seed, epoch, rank, chunk]


def learning_rate(config: TrainConfig, progress: float) -> float:
    """Linear decay from lr to min_lr over the whole run."""
    return max(config.min_lr, config.lr - (config.lr - config.min_lr) * progress)


# The table each model trains on (besides the vocabulary).
DATA_TABLE = {"sgns": "sequences", "cbow": "sequences", "glove": "cooccur", "mlm": "buckets"}


def training_fingerprint(config: TrainConfig, workdir: Workdir) -> str:
    """What a training run depends on: its config and the upstream tables' fingerprints."""
    table = DATA_TABLE[config.model]
    return fingerprint(
        config,
        {
            table: workdir.require(table)["fingerprint"],
            "vocab": workdir.require("vocab")["fingerprint"],
        },
    )


class Batch(NamedTuple):
    """One step's examples, and where the data cursor stands.

    `data`: a `windows.SpanBatch` (sgns, cbow trained in place), a `windows.WindowBatch`
    (sgns, cbow across ranks or on GPUs) or (rows, cols, x) arrays of `cooccur` (glove).
    """

    data: tuple[Any, ...]
    pairs: int  # examples: (context, centre) pairs (sgns) or centre words with contexts (cbow)
    words: float  # corpus words this batch stands for
    remaining: int  # batches left in its chunk, this one included
    cursor: tuple[int, int]  # (chunk, batch) after this one

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.data


def train(config: TrainConfig, workdir: str, out: Path) -> dict[str, Any]:
    """Train on `<workdir>/sequences` (or `cooccur`) and write checkpoints and a summary to `out`."""
    if config.model == "glove":
        from embedpipe.train.glove_trainer import train_glove

        return train_glove(config, workdir, out)
    if config.model == "mlm":
        from embedpipe.train.mlm_trainer import train_mlm

        return train_mlm(config, workdir, out)
    cluster = setup_cluster()
    set_kernel_threads(cluster, config.threads)
    wd = Workdir(workdir)
    sequences, vocab_manifest = wd.require("sequences"), wd.require("vocab")
    run_fingerprint = training_fingerprint(config, wd)
    # Subsampling and the noise distribution come with the vocabulary (vocab.sample,
    # vocab.noise_power), computed by the build_vocab stage.
    vocab = pq.read_table(wd.path("vocab"), columns=[S.ID, S.KEEP_PROB, S.NOISE_PROB]).sort_by(S.ID)
    keep_prob = vocab.column(S.KEEP_PROB).to_numpy()
    noise = alias_table(vocab.column(S.NOISE_PROB).to_numpy())
    corpus_words = sequences["counts"]["tokens"]
    total_words = max(1, corpus_words * config.epochs)
    chunks = rank_chunks(wd.path("sequences"), cluster.rank, cluster.world)
    checkpoints = out / "checkpoints"

    table = CBOW if config.model == "cbow" else SkipGram
    model = table(len(keep_prob), config.dim, config.seed, config.threads).to(cluster.device)
    state: dict[str, Any] = {"epoch": 0, "cursors": [[0, 0]] * cluster.world, "words": 0, "step": 0}
    resumed = resume_checkpoint(checkpoints, run_fingerprint, cluster.world)
    if resumed is not None:
        _, tensors, state = resumed
        with torch.no_grad():
            model.input.weight.copy_(tensors["input"])
            model.output.weight.copy_(tensors["output"])
    ddp, exchange = model, None
    if cluster.world > 1:
        ddp = DistributedDataParallel(model)
        # Rows a batch can touch: its span of tokens (input), centres and negatives (output).
        bounds = {
            model.input.weight: config.batch_size + 2 * config.window,
            model.output.weight: config.batch_size * (1 + config.negatives),
        }
        exchange = SparseRowsExchange(bounds, cluster.world)
        ddp.register_comm_hook(exchange, sparse_rows_hook)
    params = [model.input.weight, model.output.weight]
    # One process on CPU: the kernel trains the tables in place (nothing to exchange).
    in_place = cluster.world == 1 and cluster.device.type == "cpu"
    runner = InPlaceTrainer(model, config.threads) if in_place else None

    out.mkdir(parents=True, exist_ok=True)
    metrics = (out / METRICS).open("a") if cluster.is_main else None
    step, words = state["step"], state["words"]
    start_time, start_words = time.time(), words
    loss_sum, pairs_sum = 0.0, 0

    def snapshot(epoch: int, cursor: tuple[int, int]) -> None:
        nonlocal loss_sum
        if runner is not None:  # the batches up to the cursor are all trained
            loss_sum += runner.drain()
        cursors = gather_cursors(cursor, cluster)
        if cluster.is_main:
            save_checkpoint(
                checkpoints,
                step,
                {"input": model.input.weight, "output": model.output.weight},
                {
                    "epoch": epoch,
                    "cursors": cursors,
                    "words": words,
                    "world": cluster.world,
                    "config": to_dict(config),
                    "fingerprint": run_fingerprint,
                },
                config.keep_checkpoints,
            )

    for epoch in range(state["epoch"], config.epochs):
        first_chunk, first_batch = (
            state["cursors"][cluster.rank] if epoch == state["epoch"] else (0, 0)
        )
        batches = iter_batches(
            config, chunks, epoch, cluster.rank, first_chunk, first_batch, keep_prob, noise,
            compact=not in_place,
        )  # fmt: skip
        # A thread prepares the next chunk's batches while this one's train.
        with Prefetcher(batches, depth=PREFETCH) as ahead:
            stream = Prefetcher(itertools.chain.from_iterable(ahead), depth=0)
            while True:
                # Ranks agree on how many steps all of them can take (the fewest batches
                # left in any rank's current chunk) and on the words those steps cover, so
                # they stop an epoch together and share one learning-rate schedule.
                agreed, step_words = agree(stream.peek(), cluster)
                if agreed == 0:
                    break
                for _ in range(agreed):
                    batch = next(stream)
                    progress = min(1.0, words / total_words)
                    lr = learning_rate(config, progress)
                    if in_place:
                        loss = runner.submit(batch.data, lr)
                    else:
                        data = WindowBatch(*(t.to(cluster.device) for t in batch.tensors()))
                        loss = ddp(data, lr)
                        # DDP averages gradients over ranks; scale so each rank's pairs count
                        # fully, as word2vec's threads each apply their own updates.
                        (loss * cluster.world).backward()
                        with torch.no_grad():
                            for p in params:  # plain SGD on the rows the step touched
                                # (index_add_ is 3x slower with an alpha: scale first)
                                step_rows = p.grad._values().mul_(-lr)
                                p.index_add_(0, p.grad._indices()[0], step_rows)
                                p.grad = None
                        loss = loss.item()
                    step += 1
                    words += step_words
                    loss_sum += loss
                    pairs_sum += batch.pairs
                    if cluster.is_main and step % config.log_every == 0:
                        log_progress(
                            metrics, step, epoch, progress, loss_sum / max(pairs_sum, 1), lr,
                            rate=(words - start_words) / max(time.time() - start_time, 1e-9),
                            remaining=total_words - words, unit="words",
                        )  # fmt: skip
                        loss_sum, pairs_sum = 0.0, 0
                    if config.checkpoint_every and step % config.checkpoint_every == 0:
                        snapshot(epoch, batch.cursor)
        words = (epoch + 1) * corpus_words
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
        "corpus_words": corpus_words,
        "words_per_sec": round((words - start_words) / max(elapsed, 1e-9)),
        "bytes_per_step": exchange.bytes_per_step if exchange else 0,
        "checkpoint": latest_checkpoint(checkpoints).name if cluster.is_main else None,
        "inputs": {"sequences": sequences["fingerprint"], "vocab": vocab_manifest["fingerprint"]},
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


def write_loss_curve(out: Path) -> Path:
    """`loss.png` beside metrics.jsonl: loss, learning rate and words/s by step."""
    from embedpipe.evaluate.report import LOSS_PLOT, plot_training, read_training_metrics

    path = out / LOSS_PLOT
    plot_training(read_training_metrics(out / METRICS), path)
    return path


def log_progress(
    metrics: TextIO,
    step: int,
    epoch: int,
    progress: float,
    loss: float,
    lr: float,
    rate: float,
    remaining: float,
    unit: str,
) -> None:
    """Rank 0's progress line: one JSON record in metrics.jsonl and one line on stdout."""
    record = {
        "step": step,
        "epoch": epoch,
        "progress": round(progress, 5),
        "loss": loss,
        "lr": lr,
        "words_per_sec": round(rate),
        "eta_sec": round(remaining / max(rate, 1e-9)),
    }
    metrics.write(json.dumps(record) + "\n")
    metrics.flush()
    print(
        f"step {step} epoch {epoch} {100 * progress:5.1f}% loss {loss:.4f} lr {lr:.5f} "
        f"{rate:,.0f} {unit}/s eta {record['eta_sec']}s",
        flush=True,
    )


def iter_batches(
    config: TrainConfig,
    chunks: list[Chunk],
    epoch: int,
    rank: int,
    first_chunk: int,
    first_batch: int,
    keep_prob: np.ndarray,
    noise: tuple[np.ndarray, np.ndarray],
    compact: bool = True,
) -> Iterator[list[Batch]]:
    """The batches of one rank and epoch from cursor (first_chunk, first_batch) on, by chunk:
    `WindowBatch`es, or with `compact=False` `SpanBatch`es (the in-place path).

    Everything random about a chunk (subsampling, windows, negatives) comes from its own
    generator seeded by (seed, epoch, rank, chunk), so any batch can be rebuilt.
    """
    read = ChunkReader()
    compactor = RowCompactor(len(keep_prob))
    for index in range(first_chunk, len(chunks)):
        flat, offsets = read(chunks[index])
        rng = np.random.default_rng(chunk_seed(config.seed, epoch, rank, index))
        windows = chunk_windows(
            flat, offsets, keep_prob, config.window, config.negatives, noise, rng
        )
        n_batches = batch_count(windows, config.batch_size)
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
                window_batches(windows, config.batch_size, first, compactor)
                if compact
                else span_batches(windows, config.batch_size, first),
                start=first,
            )
        ]
        if batches:
            yield batches


def agree(batch: Batch | None, cluster: Cluster) -> tuple[int, float]:
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
    if cluster.world == 1:
        return [list(cursor)]
    mine = torch.tensor(list(cursor), dtype=torch.int64)
    every = [torch.zeros(2, dtype=torch.int64) for _ in range(cluster.world)]
    dist.all_gather(every, mine)
    return [t.tolist() for t in every]
