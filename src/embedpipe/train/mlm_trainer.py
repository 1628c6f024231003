"""Masked-LM training (`train.model = "mlm"`) on the `buckets` table, with the trainer's machinery.

Under torchrun each rank streams its share of every length bucket (`buckets.iter_mlm_batches`:
one bucket per batch, at most `train.mlm.max_tokens` padded slots, chunks visited in a seeded
shuffled order); a thread builds the next chunk's batches (packing, masking) while the
current ones train. Ranks agree once per chunk on the steps all of them can take
(`trainer.agree`), so they take the same number of steps and share one schedule.

The model (`mlm.MaskedLM`) is dense, so DistributedDataParallel all-reduces its gradients as
usual: gloo on CPU, NCCL on CUDA (the process group is started here before
`trainer.setup_cluster`, which would pick gloo alone for the word2vec family's sparse
tables; on GPUs the group is "cpu:gloo,cuda:nccl", so the trainer's small CPU collectives
still run on gloo). On
CUDA, the forward pass runs under autocast in bf16 (fp16 with a gradient scaler where bf16
is missing); on CPU everything is float32. The optimizer is AdamW, weight decay on matrices
only (never biases or LayerNorm weights), with linear warm-up over `warmup_steps` then
linear decay to 0 over the rest of the run's tokens, and gradient-norm clipping.

A checkpoint holds the weights, AdamW's moments and step counts, the schedule position
(step, tokens, and the progress at which decay began), each rank's data cursor and the gradient scaler; dropout draws from a
generator reseeded every step from (seed, rank, step) and batches are rebuilt from their
seeds, so that is the whole random state: a resumed run repeats the uninterrupted one
exactly (tested on CPU). `input` in a checkpoint is the token embedding matrix, which the
publish step takes as the artefact's vectors.

The held-out sequences (`train.mlm.heldout`, chosen by a hash of their ids) are never
trained on; their masked-LM loss and perplexity (the same masks every time) are measured
before training and after every epoch, all ranks contributing, and logged by rank 0 to
stdout and metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from embedpipe.config import MLMConfig, TrainConfig, to_dict
from embedpipe.train.buckets import iter_heldout_batches, iter_mlm_batches, rank_bucket_chunks
from embedpipe.train.checkpoint import latest_checkpoint, resume_checkpoint, save_checkpoint
from embedpipe.train.data import Chunk, Prefetcher, count_rows
from embedpipe.train.mlm import IGNORE, EncoderConfig, MaskedLM, decay_groups, perplexity
from embedpipe.train.trainer import (
    METRICS,
    PREFETCH,
    SUMMARY,
    Cluster,
    agree,
    gather_cursors,
    log_progress,
    setup_cluster,
    training_fingerprint,
    write_loss_curve,
)
from embedpipe.workdir import Workdir

ADAM_EPS = 1e-6
MOMENTS = ("exp_avg", "exp_avg_sq", "step")


def learning_rate(config: MLMConfig, step: int, progress: float, decay_from: float) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then linear decay to 0 over the rest of the
    run's tokens: from `decay_from` (the progress when warm-up ended) to progress 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr * min(1.0, max(0.0, 1.0 - progress) / max(1.0 - decay_from, 1e-9))


def step_seed(seed: int, rank: int, step: int) -> int:
    """The dropout seed of one step on one rank."""
    return int(np.random.SeedSequence([seed, rank, step, 0x6D6C6D]).generate_state(1)[0])


def start_process_group() -> None:
    """Join torchrun's process group (no-op for one process): gloo on CPU; on GPUs, NCCL for
    CUDA tensors (DDP's gradients) and gloo for the small CPU ones (`agree`, the cursors,
    the held-out sums), one backend per device type."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)


def autocast_dtype(config: MLMConfig, device: torch.device) -> torch.dtype | None:
    """bf16 (or fp16 where bf16 is missing) on CUDA when `amp`; None (float32) on CPU."""
    if not config.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def optimizer_tensors(model: MaskedLM, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state as named tensors (`optim.<param>.<moment>`)."""
    tensors = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"optim.{name}.{key}"] = torch.as_tensor(value).detach().clone()
    return tensors


def restore_optimizer(
    model: MaskedLM, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    """Load AdamW's state back from `optimizer_tensors` output (no pickles involved)."""
    state = optimizer.state_dict()
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    restored = {}
    for name, p in model.named_parameters():
        found = {k: tensors[f"optim.{name}.{k}"] for k in MOMENTS if f"optim.{name}.{k}" in tensors}
        if found:
            restored[index[id(p)]] = found
    state["state"] = restored
    optimizer.load_state_dict(state)


def heldout_loss(
    model: MaskedLM,
    config: MLMConfig,
    chunks: dict[int, list[Chunk]],
    vocab_size: int,
    seed: int,
    cluster: Cluster,
    amp: torch.dtype | None,
) -> dict[str, float] | None:
    """Masked-LM loss (mean over target tokens) and perplexity on the held-out split.

    Each rank scores its own share; one all-reduce sums them. None when nothing is held out.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for batch in iter_heldout_batches(config, chunks, vocab_size, seed):
            ids, segments, mask, labels = (t.to(cluster.device) for t in batch.tensors())
            with autocast(cluster.device, amp):
                loss = model(ids, segments, mask, labels)
            targets = int((labels != IGNORE).sum())
            total += torch.tensor(
                [float(loss) * targets, targets, batch.tokens], dtype=torch.float64
            )
    model.train(was_training)
    if cluster.world > 1:
        dist.all_reduce(total)
    loss_sum, targets, tokens = total.tolist()
    if targets == 0:
        return None
    loss = loss_sum / targets
    return {
        "loss": round(loss, 6),
        "perplexity": round(perplexity(loss), 4),
        "targets": int(targets),
        "tokens": int(tokens),
    }


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def train_mlm(config: TrainConfig, workdir: str, out: Path) -> dict[str, Any]:
    """Train the masked LM on `<workdir>/buckets`; checkpoints and a summary go to `out`."""
    mlm = config.mlm
    start_process_group()
    cluster = setup_cluster()
    torch.set_num_threads(config.threads)
    wd = Workdir(workdir)
    buckets_manifest, vocab_manifest = wd.require("buckets"), wd.require("vocab")
    run_fingerprint = training_fingerprint(config, wd)
    vocab_size = count_rows(wd.path("vocab"))
    chunks = rank_bucket_chunks(wd.path("buckets"), cluster.rank, cluster.world, mlm.chunk_rows)
    corpus_tokens = sum(b["tokens"] for b in buckets_manifest["counts"]["buckets"])
    epoch_tokens = corpus_tokens * (1.0 - mlm.heldout)  # expected training tokens per epoch
    total_tokens = max(1.0, epoch_tokens * config.epochs)
    checkpoints = out / "checkpoints"

    encoder_config = EncoderConfig.from_mlm(mlm, vocab_size)
    model = MaskedLM(encoder_config, config.seed).to(cluster.device)
    optimizer = torch.optim.AdamW(
        decay_groups(model, mlm.weight_decay), lr=mlm.lr, betas=mlm.adam_betas, eps=ADAM_EPS
    )
    amp = autocast_dtype(mlm, cluster.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    state: dict[str, Any] = {
        "epoch": 0, "cursors": [[0, 0]] * cluster.world, "words": 0.0, "step": 0, "heldout": [],
    }  # fmt: skip
    resumed = resume_checkpoint(checkpoints, run_fingerprint, cluster.world)
    if resumed is not None:
        _, tensors, state = resumed
        model.load_state_dict(
            {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        )
        restore_optimizer(model, optimizer, tensors)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    ddp: torch.nn.Module = model
    if cluster.world > 1:
        device_ids = [cluster.device.index] if cluster.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=device_ids)

    out.mkdir(parents=True, exist_ok=True)
    metrics = (out / METRICS).open("a") if cluster.is_main else None
    step, tokens_done = state["step"], float(state["words"])
    decay_from = state.get("decay_from")  # progress when warm-up ended (None: not yet)
    heldout: list[dict[str, Any]] = list(state.get("heldout", []))
    start_time, start_tokens = time.time(), tokens_done
    loss_sum, target_sum = 0.0, 0
    real_slots, padded_slots = 0, 0

    def evaluate(epoch: int) -> None:
        result = heldout_loss(model, mlm, chunks, vocab_size, config.seed, cluster, amp)
        if result is None:
            return
        record = {"step": step, "epoch": epoch, **result}
        heldout.append(record)
        if cluster.is_main:
            pending = loss_sum / target_sum if target_sum else None
            metrics.write(
                json.dumps(
                    {
                        "step": step,
                        "epoch": epoch,
                        "progress": round(tokens_done / total_tokens, 5),
                        "loss": pending,
                        "lr": last_lr,
                        "heldout_loss": result["loss"],
                        "heldout_perplexity": result["perplexity"],
                    }
                )
                + "\n"
            )
            metrics.flush()
            print(
                f"held-out after epoch {epoch}: loss {result['loss']:.4f} perplexity "
                f"{result['perplexity']:.2f} ({result['targets']:,} masked tokens)",
                flush=True,
            )

    def snapshot(epoch: int, cursor: tuple[int, int]) -> None:
        cursors = gather_cursors(cursor, cluster)
        if cluster.is_main:
            tensors = {"input": model.token.weight.detach().clone()}
            tensors |= {f"model.{k}": v for k, v in model.state_dict().items()}
            tensors |= optimizer_tensors(model, optimizer)
            save_checkpoint(
                checkpoints,
                step,
                tensors,
                {
                    "epoch": epoch,
                    "cursors": cursors,
                    "words": tokens_done,
                    "world": cluster.world,
                    "config": to_dict(config),
                    "encoder": encoder_config.to_dict(),
                    "fingerprint": run_fingerprint,
                    "heldout": heldout,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "decay_from": decay_from,
                    "rng": "dropout reseeded per step from (seed, rank, step)",
                },
                config.keep_checkpoints,
            )

    last_lr = learning_rate(mlm, step, tokens_done / total_tokens, decay_from or 0.0)
    if resumed is None:
        evaluate(0)  # the starting point: the held-out loss of the untrained model
    for epoch in range(state["epoch"], config.epochs):
        cursor = state["cursors"][cluster.rank] if epoch == state["epoch"] else (0, 0)
        first = (int(cursor[0]), int(cursor[1]))
        batches = iter_mlm_batches(mlm, chunks, vocab_size, config.seed, epoch, cluster.rank, first)
        with Prefetcher(batches, depth=PREFETCH) as ahead:
            stream = Prefetcher(itertools.chain.from_iterable(ahead), depth=0)
            while True:
                agreed, step_tokens = agree(stream.peek(), cluster)  # type: ignore[arg-type]
                if agreed == 0:
                    break
                for _ in range(agreed):
                    batch = next(stream)
                    progress = min(1.0, tokens_done / total_tokens)
                    if decay_from is None and step >= mlm.warmup_steps:
                        decay_from = progress
                    last_lr = learning_rate(mlm, step, progress, decay_from or 0.0)
                    for group in optimizer.param_groups:
                        group["lr"] = last_lr
                    torch.manual_seed(step_seed(config.seed, cluster.rank, step))
                    ids, segments, mask, labels = (
                        t.to(cluster.device, non_blocking=True) for t in batch.tensors()
                    )
                    with autocast(cluster.device, amp):
                        loss = ddp(ids, segments, mask, labels)
                    scaler.scale(loss).backward()
                    if mlm.clip_norm:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), mlm.clip_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    tokens_done += step_tokens
                    loss_sum += loss.item() * batch.targets
                    target_sum += batch.targets
                    real_slots += batch.tokens
                    padded_slots += batch.slots
                    if cluster.is_main and step % config.log_every == 0:
                        log_progress(
                            metrics, step, epoch, progress, loss_sum / max(target_sum, 1), last_lr,
                            rate=(tokens_done - start_tokens) / max(time.time() - start_time, 1e-9),
                            remaining=total_tokens - tokens_done, unit="tokens",
                        )  # fmt: skip
                        loss_sum, target_sum = 0.0, 0
                    if config.checkpoint_every and step % config.checkpoint_every == 0:
                        snapshot(epoch, batch.cursor)
        tokens_done = (epoch + 1) * epoch_tokens
        evaluate(epoch + 1)
        loss_sum, target_sum = 0.0, 0
        snapshot(epoch + 1, (0, 0))

    elapsed = time.time() - start_time
    slots = torch.tensor([real_slots, padded_slots], dtype=torch.float64)
    if cluster.world > 1:
        dist.all_reduce(slots)
    summary = {
        "model": config.model,
        "config": to_dict(config),
        "encoder": encoder_config.to_dict(),
        "fingerprint": run_fingerprint,
        "world_size": cluster.world,
        "device": cluster.device.type,
        "autocast": str(amp).removeprefix("torch.") if amp else None,
        "steps": step,
        "seconds": round(elapsed, 3),
        "corpus_words": corpus_tokens,
        # corpus tokens (ids of training sequences) per second over all ranks
        "words_per_sec": round((tokens_done - start_tokens) / max(elapsed, 1e-9)),
        "padding_share": round(1 - slots[0].item() / max(slots[1].item(), 1), 5),
        "heldout": heldout,
        "checkpoint": latest_checkpoint(checkpoints).name if cluster.is_main else None,
        "inputs": {
            "buckets": buckets_manifest["fingerprint"],
            "vocab": vocab_manifest["fingerprint"],
        },
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
