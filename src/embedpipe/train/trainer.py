"""The distributed trainer: one script that runs alone or under torchrun (gloo or NCCL).

Each rank streams its own row range of `sequences`; gradients are sparse, so what DDP
all-reduces per step is the rows a batch touched (batch x (1 + negatives) x dim), never the
vocabulary. Ranks stop an epoch together (a one-integer all-reduce per step) because their
shares end after slightly different numbers of batches. Only rank 0 logs and writes.

All randomness is derived from (seed, epoch, rank, chunk): the cursor (epoch, chunk, batch)
with the weights and the step is the whole state, so a resumed run repeats exactly.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from embedpipe import schemas as S
from embedpipe.config import TrainConfig, to_dict
from embedpipe.corpus.stage import Workdir
from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from embedpipe.train.data import rank_chunks, read_chunk
from embedpipe.train.sgns import SkipGram, keep_probabilities, noise_distribution, skipgram_pairs

SUMMARY = "_TRAINED.json"
METRICS = "metrics.jsonl"


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


def chunk_seed(seed: int, epoch: int, rank: int, chunk: int) -> list[int]:
    return [seed, epoch, rank, chunk]


def learning_rate(config: TrainConfig, progress: float) -> float:
    """Linear decay from lr to min_lr over the whole run."""
    return max(config.min_lr, config.lr - (config.lr - config.min_lr) * progress)


def train(config: TrainConfig, workdir: str, out: Path) -> dict[str, Any]:
    """Train skip-gram on `<workdir>/sequences` and write checkpoints and a summary to `out`."""
    cluster = setup_cluster()
    torch.set_num_threads(config.threads)
    wd = Workdir(workdir)
    sequences, vocab_manifest = wd.require("sequences"), wd.require("vocab")
    counts = pq.read_table(wd.path("vocab"), columns=[S.COUNT]).column(S.COUNT).to_numpy()
    keep_prob = keep_probabilities(counts, config.sample)
    noise = torch.from_numpy(noise_distribution(counts)).float()
    words_per_rank = max(1, sequences["counts"]["tokens"] // cluster.world)
    chunks = rank_chunks(wd.path("sequences"), cluster.rank, cluster.world)
    checkpoints = out / "checkpoints"

    model = SkipGram(len(counts), config.dim, config.seed).to(cluster.device)
    state: dict[str, Any] = {"epoch": 0, "cursors": [[0, 0]] * cluster.world, "words": 0, "step": 0}
    resume_from = latest_checkpoint(checkpoints)
    if resume_from is not None:
        tensors, state = load_checkpoint(resume_from)
        if state["world"] != cluster.world:
            raise RuntimeError(
                f"{resume_from} was written by {state['world']} ranks; resume with as many"
            )
        model.input.weight.data.copy_(tensors["input"])
        model.output.weight.data.copy_(tensors["output"])
    ddp = DistributedDataParallel(model) if cluster.world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)

    out.mkdir(parents=True, exist_ok=True)
    metrics = (out / METRICS).open("a") if cluster.is_main else None
    step, words = state["step"], state["words"]
    total_words = words_per_rank * config.epochs
    start_time, start_words = time.time(), words
    loss_sum, pairs_sum = 0.0, 0

    def snapshot(epoch: int, cursor: tuple[int, int]) -> None:
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
                },
                config.keep_checkpoints,
            )

    for epoch in range(state["epoch"], config.epochs):
        first_chunk, first_batch = (
            state["cursors"][cluster.rank] if epoch == state["epoch"] else (0, 0)
        )
        batches = iter_batches(
            config, chunks, epoch, cluster.rank, first_chunk, first_batch, keep_prob, noise
        )
        while True:
            item = next(batches, None)
            if not all_ranks_have(item is not None, cluster):
                break
            (centre, context, negatives), chunk_words, cursor = item
            progress = min(1.0, words / total_words)
            lr = learning_rate(config, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = ddp(
                centre.to(cluster.device), context.to(cluster.device), negatives.to(cluster.device)
            )
            # DDP averages gradients over ranks; scale so each rank's pairs count fully,
            # as word2vec's threads each apply their own updates.
            (loss * cluster.world).backward()
            optimizer.step()
            step += 1
            words += chunk_words
            loss_sum += loss.item()
            pairs_sum += len(centre)
            if cluster.is_main and step % config.log_every == 0:
                elapsed = time.time() - start_time
                rate = (words - start_words) * cluster.world / max(elapsed, 1e-9)
                eta = (total_words - words) * cluster.world / max(rate, 1e-9)
                record = {
                    "step": step,
                    "epoch": epoch,
                    "progress": round(progress, 5),
                    "loss": loss_sum / max(pairs_sum, 1),
                    "lr": lr,
                    "words_per_sec": round(rate),
                    "eta_sec": round(eta),
                }
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                print(
                    f"step {step} epoch {epoch} {100 * progress:5.1f}% loss {record['loss']:.4f} "
                    f"lr {lr:.5f} {rate:,.0f} words/s eta {record['eta_sec']}s",
                    flush=True,
                )
                loss_sum, pairs_sum = 0.0, 0
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                snapshot(epoch, cursor)
        words = (epoch + 1) * words_per_rank
        snapshot(epoch + 1, (0, 0))

    elapsed = time.time() - start_time
    summary = {
        "model": config.model,
        "config": to_dict(config),
        "world_size": cluster.world,
        "device": cluster.device.type,
        "steps": step,
        "seconds": round(elapsed, 3),
        "corpus_words": sequences["counts"]["tokens"],
        "words_per_sec": round(
            sequences["counts"]["tokens"] * (config.epochs - state["epoch"]) / max(elapsed, 1e-9)
        ),
        "checkpoint": latest_checkpoint(checkpoints).name if cluster.is_main else None,
        "inputs": {"sequences": sequences["fingerprint"], "vocab": vocab_manifest["fingerprint"]},
    }
    if cluster.is_main:
        metrics.close()
        (out / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True))
        print(
            json.dumps({k: summary[k] for k in ("steps", "seconds", "words_per_sec")}), flush=True
        )
    if cluster.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def iter_batches(config, chunks, epoch, rank, first_chunk, first_batch, keep_prob, noise):  # noqa: ANN001, ANN201
    """Yield ((centre, context, negatives), words, cursor-after) for one rank and epoch."""
    for index in range(first_chunk, len(chunks)):
        flat, offsets = read_chunk(chunks[index])
        seed = chunk_seed(config.seed, epoch, rank, index)
        rng = np.random.default_rng(seed)
        centre, context = skipgram_pairs(flat, offsets, keep_prob, config.window, rng)
        if len(centre) == 0:
            continue
        order = rng.permutation(len(centre))
        centre = torch.from_numpy(centre[order])
        context = torch.from_numpy(context[order])
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence(seed).generate_state(1)[0])
        )
        negatives = torch.multinomial(
            noise, len(centre) * config.negatives, replacement=True, generator=generator
        ).view(len(centre), config.negatives)
        n_batches = max(1, math.ceil(len(centre) / config.batch_size))
        words_per_batch = len(flat) / n_batches
        start = first_batch if index == first_chunk else 0
        for b in range(start, n_batches):
            sl = slice(b * config.batch_size, (b + 1) * config.batch_size)
            nxt = (index, b + 1) if b + 1 < n_batches else (index + 1, 0)
            yield (centre[sl], context[sl], negatives[sl]), words_per_batch, nxt


def all_ranks_have(has_batch: bool, cluster: Cluster) -> bool:
    if cluster.world == 1:
        return has_batch
    flag = torch.tensor([int(has_batch)])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def gather_cursors(cursor: tuple[int, int], cluster: Cluster) -> list[list[int]]:
    if cluster.world == 1:
        return [list(cursor)]
    mine = torch.tensor(list(cursor), dtype=torch.int64)
    every = [torch.zeros(2, dtype=torch.int64) for _ in range(cluster.world)]
    dist.all_gather(every, mine)
    return [t.tolist() for t in every]
