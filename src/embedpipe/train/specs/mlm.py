"""The masked LM (`train.model = "mlm"`) on the `buckets` table.

Each rank streams its share of every length bucket (`buckets.iter_mlm_batches`: one
bucket per batch, at most `train.mlm.max_tokens` padded slots, chunks visited in a seeded
shuffled order). The model (`mlm.MaskedLM`) is dense, so DistributedDataParallel
all-reduces its gradients as usual: gloo on CPU, NCCL on CUDA (with gloo beside it for the
loop's small CPU collectives). On CUDA the forward pass runs under autocast in bf16 (fp16
with a gradient scaler where bf16 is missing); on CPU everything is float32. The optimizer
is AdamW, weight decay on matrices only, with linear warm-up over `warmup_steps` then
linear decay to 0 over the rest of the run's tokens, and gradient-norm clipping.

A checkpoint holds the weights, AdamW's moments and step counts, the progress at which
decay began and the gradient scaler; dropout draws from a generator reseeded every step
from (seed, rank, step) and batches are rebuilt from their seeds, so a resumed run
repeats the uninterrupted one exactly. `input` in a checkpoint is the token embedding
matrix, which publishing takes as the artefact's vectors.

The held-out sequences (`train.mlm.heldout`, chosen by a hash of their ids) are never
trained on; their masked-LM loss and perplexity (the same masks every time) are measured
before training and after every epoch, all ranks contributing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from embedpipe.config import TrainConfig
from embedpipe.train.buckets import (
    MLMBatch,
    iter_heldout_batches,
    iter_mlm_batches,
    rank_bucket_chunks,
)
from embedpipe.train.data import count_rows
from embedpipe.train.distributed import Cluster
from embedpipe.train.init import Parent, init_encoder
from embedpipe.train.loop import ModelRun, Resumed
from embedpipe.train.mlm import IGNORE, EncoderConfig, MaskedLM, decay_groups, perplexity
from embedpipe.train.registry import MLMConfig
from embedpipe.workdir import Workdir

if TYPE_CHECKING:
    from embedpipe.config import RunConfig

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


def autocast_dtype(config: MLMConfig, device: torch.device) -> torch.dtype | None:
    """bf16 (or fp16 where bf16 is missing) on CUDA when `amp`; None (float32) on CPU."""
    if not config.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


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


class MaskedLMRun(ModelRun):
    """The encoder, AdamW and the schedule's state, trained on this rank's bucket chunks."""

    gpu_backend = "cpu:gloo,cuda:nccl"
    unit = "tokens"
    continues = True

    def __init__(
        self,
        config: TrainConfig,
        workdir: Workdir,
        cluster: Cluster,
        resumed: Resumed | None,
        parent: Parent | None = None,
    ) -> None:
        mlm: MLMConfig = config.options
        self.mlm, self.seed, self.cluster = mlm, config.seed, cluster
        torch.set_num_threads(config.threads)
        self.vocab_size = count_rows(workdir.table_path("vocab"))
        manifest = workdir.require("buckets")
        table = workdir.table_path("buckets", manifest=manifest)
        self.chunks = rank_bucket_chunks(table, cluster.rank, cluster.world, mlm.chunk_rows)
        buckets = manifest["counts"]["buckets"]
        self.corpus_words = sum(b["tokens"] for b in buckets)
        self.epoch_words = self.corpus_words * (1.0 - mlm.heldout)  # expected training tokens
        self.encoder = EncoderConfig.from_mlm(mlm, self.vocab_size)
        self.model = MaskedLM(self.encoder, config.seed)
        if parent is not None:  # the parent's encoder; AdamW and the schedule start fresh
            parent.check_dim(mlm.width, "train.mlm.width")
            init_encoder(parent, self.model, self.encoder)
        self.model = self.model.to(cluster.device)
        self.optimizer = torch.optim.AdamW(
            decay_groups(self.model, mlm.weight_decay), lr=mlm.lr, betas=mlm.adam_betas,
            eps=ADAM_EPS,
        )  # fmt: skip
        self.amp = autocast_dtype(mlm, cluster.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        state = resumed[1] if resumed else {}
        self.decay_from: float | None = state.get("decay_from")  # None: still warming up
        self.heldout: list[dict[str, Any]] = list(state.get("heldout", []))
        if resumed is not None:
            tensors = resumed[0]
            self.model.load_state_dict(
                {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
            )
            restore_optimizer(self.model, self.optimizer, tensors)
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        self.ddp: torch.nn.Module = self.model
        if cluster.world > 1:
            device_ids = [cluster.device.index] if cluster.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.real_slots, self.padded_slots = 0, 0  # token slots trained: real, padded

    def batches(self, epoch: int, cursor: tuple[int, int]) -> Iterator[list[MLMBatch]]:
        return iter_mlm_batches(
            self.mlm, self.chunks, self.vocab_size, self.seed, epoch, self.cluster.rank, cursor
        )

    def learning_rate(self, step: int, progress: float) -> float:
        if self.decay_from is None and step >= self.mlm.warmup_steps:
            self.decay_from = progress
        return learning_rate(self.mlm, step, progress, self.decay_from or 0.0)

    def train_step(self, batch: MLMBatch, lr: float, step: int) -> tuple[float, int]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(self.seed, self.cluster.rank, step))
        device = self.cluster.device
        ids, segments, mask, labels = (t.to(device, non_blocking=True) for t in batch.tensors())
        with autocast(device, self.amp):
            loss = self.ddp(ids, segments, mask, labels)
        self.scaler.scale(loss).backward()
        if self.mlm.clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.mlm.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.real_slots += batch.tokens
        self.padded_slots += batch.slots
        return loss.item() * batch.targets, batch.targets

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"input": self.model.token.weight.detach().clone()}
        tensors |= {f"model.{k}": v for k, v in self.model.state_dict().items()}
        return tensors | optimizer_tensors(self.model, self.optimizer)

    def state(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.to_dict(),
            "heldout": self.heldout,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "decay_from": self.decay_from,
            "rng": "dropout reseeded per step from (seed, rank, step)",
        }

    def evaluate(self, epoch: int, step: int) -> dict[str, Any] | None:
        result = heldout_loss(self, self.chunks)
        if result is None:
            return None
        self.heldout.append({"step": step, "epoch": epoch, **result})
        return {"heldout_loss": result["loss"], "heldout_perplexity": result["perplexity"]}

    def summary(self) -> dict[str, Any]:
        slots = torch.tensor([self.real_slots, self.padded_slots], dtype=torch.float64)
        if self.cluster.world > 1:
            dist.all_reduce(slots)
        return {
            "encoder": self.encoder.to_dict(),
            "autocast": str(self.amp).removeprefix("torch.") if self.amp else None,
            "padding_share": round(1 - slots[0].item() / max(slots[1].item(), 1), 5),
            "heldout": self.heldout,
        }


def heldout_loss(run: MaskedLMRun, chunks: dict[int, list[Any]]) -> dict[str, float] | None:
    """Masked-LM loss (mean over target tokens) and perplexity on the held-out split.

    Each rank scores its own share; one all-reduce sums them. None when nothing is held out.
    """
    model, cluster = run.model, run.cluster
    was_training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for batch in iter_heldout_batches(run.mlm, chunks, run.vocab_size, run.seed):
            ids, segments, mask, labels = (t.to(cluster.device) for t in batch.tensors())
            with autocast(cluster.device, run.amp):
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


def publish_metrics(
    summary: dict[str, Any], vectors: np.ndarray, tokens: list[str], config: RunConfig
) -> dict[str, Any]:
    """An mlm artefact's metrics: the input matrix's scores and the held-out loss."""
    from embedpipe.artefacts.encoder import evaluate_mlm

    sp_model = Path(Workdir(config.workdir).tokenizer_model)
    return evaluate_mlm(summary, vectors, tokens, config.to_dict()["tokenize"], sp_model)
