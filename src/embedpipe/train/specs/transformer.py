"""What the masked and causal LM specs share: one `TransformerRun` on the `buckets` table.

Each rank streams its share of every length bucket (`buckets.iter_bucket_batches`: one
bucket per batch, at most `max_tokens` padded slots, chunks visited in a seeded shuffled
order). The model is dense, so DistributedDataParallel all-reduces its gradients as usual:
gloo on CPU, NCCL on CUDA (with gloo beside it for the loop's small CPU collectives). On
CUDA the forward pass runs under autocast in bf16 (fp16 with a gradient scaler where bf16
is missing); on CPU everything is float32. The optimizer is AdamW, weight decay on matrices
only (`transformer.decay_groups`), with linear warm-up over `warmup_steps` then linear
decay to 0 over the rest of the run's tokens (`learning_rate`), and gradient-norm clipping.

A checkpoint holds the weights, AdamW's moments and step counts, the progress at which
decay began and the gradient scaler; dropout draws from a generator reseeded every step
from (seed, rank, step) and batches are rebuilt from their seeds, so a resumed run
repeats the uninterrupted one exactly. `input` in a checkpoint is the token embedding
matrix, which publishing takes as the artefact's vectors.

The held-out sequences (`heldout`, chosen by a hash of their ids) are never trained on;
their loss and perplexity (the same examples every time) are measured before training and
after every epoch, all ranks contributing, beside the perplexity of the unigram model of the
vocabulary's counts on the same targets (`unigram_perplexity`), the figure's reference.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from embedpipe import schemas as S
from embedpipe.config import TrainConfig
from embedpipe.train.buckets import (
    BucketBatch,
    iter_bucket_batches,
    iter_heldout_batches,
    rank_bucket_chunks,
)
from embedpipe.train.distributed import Cluster
from embedpipe.train.init import Parent, init_language_model
from embedpipe.train.loop import ModelRun, Resumed
from embedpipe.train.registry import BucketLMConfig
from embedpipe.train.transformer import IGNORE, N_SPECIAL, decay_groups, perplexity
from embedpipe.workdir import Workdir

if TYPE_CHECKING:
    from embedpipe.config import RunConfig

ADAM_EPS = 1e-6
MOMENTS = ("exp_avg", "exp_avg_sq", "step")


def learning_rate(config: BucketLMConfig, step: int, progress: float, decay_from: float) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then linear decay to 0 over the rest of the
    run's tokens: from `decay_from` (the progress when warm-up ended) to progress 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr * min(1.0, max(0.0, 1.0 - progress) / max(1.0 - decay_from, 1e-9))


def step_seed(seed: int, rank: int, step: int) -> int:
    """The dropout seed of one step on one rank."""
    return int(np.random.SeedSequence([seed, rank, step, 0x6D6C6D]).generate_state(1)[0])


def autocast_dtype(config: BucketLMConfig, device: torch.device) -> torch.dtype | None:
    """bf16 (or fp16 where bf16 is missing) on CUDA when `amp`; None (float32) on CPU."""
    if not config.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def optimizer_tensors(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state as named tensors (`optim.<param>.<moment>`)."""
    tensors = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"optim.{name}.{key}"] = torch.as_tensor(value).detach().clone()
    return tensors


def restore_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
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


def unigram_log_probs(vocab_dir: str) -> torch.Tensor:
    """log p(w) of the unigram model of the vocabulary's counts, over the ordinary tokens
    (the only targets; specials get -inf). A word counted 0 times counts as 1."""
    table = pq.read_table(vocab_dir, columns=[S.ID, S.COUNT]).sort_by(S.ID)
    counts = table.column(S.COUNT).fill_null(0).to_numpy().astype(np.float64)
    counts[N_SPECIAL:] = np.maximum(counts[N_SPECIAL:], 1.0)
    counts[:N_SPECIAL] = 0.0
    with np.errstate(divide="ignore"):
        return torch.from_numpy(np.log(counts / counts.sum()))


class TransformerRun(ModelRun):
    """A Transformer LM, AdamW and the schedule's state, trained on this rank's bucket chunks.

    A subclass builds its model (`build`); the model's forward takes a batch's tensors and
    returns the mean loss over the batch's targets (labels, the last tensor, != IGNORE).
    """

    gpu_backend = "cpu:gloo,cuda:nccl"
    unit = "tokens"
    architecture_key = "architecture"  # where checkpoints, summary and artefact hold it
    dim_field = ""  # the option that is the published dimension ("train.mlm.width")
    continues = True

    @abstractmethod
    def build(self, vocab_size: int, seed: int) -> tuple[Any, nn.Module]:
        """(architecture with `to_dict`, model initialised from `seed`)."""

    def start_from(self, parent: Parent, model: nn.Module) -> None:
        """Set the new `model`'s weights from a published artefact of the same kind
        (`train.init_from`): every weight, the token-indexed ones by token
        (`init.init_language_model`)."""
        parent.check_dim(model.token.weight.shape[1], self.dim_field)
        init_language_model(parent, model, self.architecture, self.architecture_key)

    def __init__(
        self,
        config: TrainConfig,
        workdir: Workdir,
        cluster: Cluster,
        resumed: Resumed | None,
        parent: Parent | None = None,
    ) -> None:
        options: BucketLMConfig = config.options
        self.options, self.seed, self.cluster = options, config.seed, cluster
        torch.set_num_threads(config.threads)
        self.unigram = unigram_log_probs(workdir.table_path("vocab"))
        self.vocab_size = len(self.unigram)
        manifest = workdir.require("buckets")
        table = workdir.table_path("buckets", manifest=manifest)
        self.chunks = rank_bucket_chunks(table, cluster.rank, cluster.world, options.chunk_rows)
        self.corpus_words = sum(b["tokens"] for b in manifest["counts"]["buckets"])
        self.epoch_words = self.corpus_words * (1.0 - options.heldout)  # expected training tokens
        self.architecture, model = self.build(self.vocab_size, config.seed)
        if parent is not None:  # the parent's weights; AdamW and the schedule start fresh
            self.start_from(parent, model)
        self.model = model.to(cluster.device)
        self.optimizer = torch.optim.AdamW(
            decay_groups(self.model, options.weight_decay), lr=options.lr,
            betas=options.adam_betas, eps=ADAM_EPS,
        )  # fmt: skip
        self.amp = autocast_dtype(options, cluster.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        state = resumed[1] if resumed else {}
        self.decay_from: float | None = state.get("decay_from")  # None: still warming up
        self.heldout: list[dict[str, Any]] = list(state.get("heldout", []))
        if resumed is not None:
            self.restore(*resumed)
        self.ddp: nn.Module = self.model
        if cluster.world > 1:
            device_ids = [cluster.device.index] if cluster.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.real_slots, self.padded_slots = 0, 0  # token slots trained: real, padded

    def restore(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Weights, AdamW's state and the gradient scaler from a checkpoint."""
        self.model.load_state_dict(
            {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        )
        restore_optimizer(self.model, self.optimizer, tensors)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def batches(self, epoch: int, cursor: tuple[int, int]) -> Iterator[list[BucketBatch]]:
        return iter_bucket_batches(
            self.options, self.chunks, self.vocab_size, self.seed, epoch, self.cluster.rank,
            cursor,
        )  # fmt: skip

    def learning_rate(self, step: int, progress: float) -> float:
        if self.decay_from is None and step >= self.options.warmup_steps:
            self.decay_from = progress
        return learning_rate(self.options, step, progress, self.decay_from or 0.0)

    def train_step(self, batch: BucketBatch, lr: float, step: int) -> tuple[float, int]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(self.seed, self.cluster.rank, step))
        device = self.cluster.device
        tensors = (t.to(device, non_blocking=True) for t in batch.tensors())
        with autocast(device, self.amp):
            loss = self.ddp(*tensors)
        self.scaler.scale(loss).backward()
        if self.options.clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_norm)
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
            self.architecture_key: self.architecture.to_dict(),
            "heldout": self.heldout,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "decay_from": self.decay_from,
            "rng": "dropout reseeded per step from (seed, rank, step)",
        }

    def evaluate(self, epoch: int, step: int) -> dict[str, Any] | None:
        result = heldout_loss(self)
        if result is None:
            return None
        self.heldout.append({"step": step, "epoch": epoch, **result})
        return {"heldout_loss": result["loss"], "heldout_perplexity": result["perplexity"]}

    def summary(self) -> dict[str, Any]:
        slots = torch.tensor([self.real_slots, self.padded_slots], dtype=torch.float64)
        if self.cluster.world > 1:
            dist.all_reduce(slots)
        return {
            self.architecture_key: self.architecture.to_dict(),
            "autocast": str(self.amp).removeprefix("torch.") if self.amp else None,
            "padding_share": round(1 - slots[0].item() / max(slots[1].item(), 1), 5),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "heldout": self.heldout,
        }


def heldout_loss(run: TransformerRun) -> dict[str, float] | None:
    """Loss (mean over target tokens) and perplexity on the held-out split, and the unigram
    model's perplexity on the same targets.

    Each rank scores its own share; one all-reduce sums them. None when nothing is held out.
    """
    model, cluster = run.model, run.cluster
    was_training = model.training
    model.eval()
    total = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for batch in iter_heldout_batches(run.options, run.chunks, run.vocab_size, run.seed):
            tensors = batch.tensors()
            with autocast(cluster.device, run.amp):
                loss = model(*(t.to(cluster.device) for t in tensors))
            labels = tensors[-1][tensors[-1] != IGNORE]
            unigram = -float(run.unigram[labels].sum())
            total += torch.tensor(
                [float(loss) * len(labels), len(labels), batch.tokens, unigram],
                dtype=torch.float64,
            )
    model.train(was_training)
    if cluster.world > 1:
        dist.all_reduce(total)
    loss_sum, targets, tokens, unigram_sum = total.tolist()
    if targets == 0:
        return None
    loss = loss_sum / targets
    return {
        "loss": round(loss, 6),
        "perplexity": round(perplexity(loss), 4),
        "unigram_perplexity": round(perplexity(unigram_sum / targets), 4),
        "targets": int(targets),
        "tokens": int(tokens),
    }


def publish_metrics(
    summary: dict[str, Any], vectors: np.ndarray, tokens: list[str], config: RunConfig
) -> dict[str, Any]:
    """An mlm or clm artefact's metrics: the input matrix's scores and, under the model's
    name, the held-out loss and perplexity (`encoder.evaluate_language_model`)."""
    from embedpipe.artefacts.encoder import evaluate_language_model

    sp_model = Path(Workdir(config.workdir).tokenizer_model)
    return evaluate_language_model(
        config.train.model, summary, vectors, tokens, config.to_dict()["tokenize"], sp_model
    )
