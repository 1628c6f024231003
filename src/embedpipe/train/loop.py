"""The one training loop: every model runs through `train`, alone or under torchrun.

A model is a `ModelRun` (built by its `registry.ModelSpec`): its batches by chunk, its
learning-rate schedule, its step, the tensors and state it checkpoints, its evaluation
and summary extras. The loop owns the rest: the process group, the data cursor and the
per-chunk agreement between ranks, progress (metrics.jsonl, TensorBoard events, loss.png:
`progress`), checkpoints and exact resume, the `_TRAINED.json` summary, teardown.

Ranks agree once per chunk, not per step, on how many steps all of them can take (the
fewest batches left in any rank's current chunk; 0 ends the epoch for everyone) and on
the corpus words those steps cover, so they share one learning-rate schedule exactly.
A thread prepares the next chunk's batches while the current ones train. Only rank 0
logs and writes: the first step, every `log_every` steps and each epoch's last step (with
the model's evaluation, when it has one), so even a short run draws a curve. A model
draws all its randomness from (seed, epoch, rank, chunk) or the step, so the cursor
(epoch, chunk, batch) with the model's tensors and state is the whole state: a resumed run
repeats the uninterrupted one exactly. Checkpoints and the summary carry the run's
fingerprint (the TrainConfig and the input tables' fingerprints); a checkpoint of another
run is refused on resume.

With `train.init_from` the run starts from a published artefact's weights (`init`): the
spec gets the parent mapped onto the vocabulary as `parent=` (a resumed run does not: its
checkpoint holds the weights), the parent's content hash joins the fingerprint's inputs,
and the summary records the parent and the counts of kept, new and dropped words.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from embedpipe.config import ConfigError, TrainConfig, fingerprint, to_dict
from embedpipe.train.checkpoint import latest_checkpoint, resume_checkpoint, save_checkpoint
from embedpipe.train.data import Prefetcher
from embedpipe.train.distributed import Cluster, agree, gather_cursors, setup_cluster
from embedpipe.train.init import Parent, resolve_parent, start_from
from embedpipe.train.layout import resolve_threads
from embedpipe.train.progress import ProgressLog, write_loss_curve
from embedpipe.train.registry import get_model, resolve
from embedpipe.workdir import CHECKPOINTS, SUMMARY, Workdir

PREFETCH = 1  # chunks the data thread may prepare ahead

Resumed = tuple[dict[str, torch.Tensor], dict[str, Any]]  # a checkpoint's (tensors, state)


class ModelRun(ABC):
    """One model being trained: what the loop asks of it.

    Built as `cls(config, workdir, cluster, resumed)` after the process group is up, with
    `resumed` the newest checkpoint's (tensors, state) or None; it restores itself from
    them before any collective (DDP broadcasts rank 0's weights when it wraps a module).
    A batch is any object with `remaining`, `words` and `cursor` (`data.Batch`).
    """

    gpu_backend = "gloo"  # process group backend on GPUs ("cpu:gloo,cuda:nccl": dense models)
    # Takes `parent=` (an `init.Parent`) to start from a published artefact (train.init_from).
    continues = False
    unit = "words"  # what `epoch_words` counts, for the progress line

    epoch_words: float  # units one epoch covers over all ranks (progress, schedule)
    corpus_words: int  # the input's size, reported in the summary
    sync_every: float = 0  # words over all ranks between `exchange` calls; 0: none
    # Share of an interval after which the exchange launched at its start is applied
    # (`settle`); 1: at the next boundary.
    sync_overlap: float = 1.0

    @abstractmethod
    def batches(self, epoch: int, cursor: tuple[int, int]) -> Iterator[list[Any]]:
        """This rank's batches of `epoch` from `cursor` on, one list per chunk."""

    @abstractmethod
    def learning_rate(self, step: int, progress: float) -> float:
        """The schedule: lr of step `step` at `progress` (share of the run's words done)."""

    @abstractmethod
    def train_step(self, batch: Any, lr: float, step: int) -> tuple[float, int]:
        """Train on one batch; (loss summed over examples, examples) for the progress line."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the model (`input`: the vectors publishing takes)."""

    def state(self) -> dict[str, Any]:
        """JSON state a checkpoint holds besides the tensors and the loop's cursor."""
        return {}

    def exchange(self) -> None:
        """At a sync boundary (the same step on every rank): exchange what the ranks changed."""
        raise NotImplementedError(f"{type(self).__name__} sets sync_every but cannot exchange")

    def settle(self) -> None:  # noqa: B027 (optional hook: models without exchange)
        """Apply the exchange launched at the last boundary (the same step on every rank)."""

    def drain(self) -> float:
        """Finish steps and exchanges still running (before a checkpoint: afterwards every
        rank holds the same tables); the loss they add."""
        return 0.0

    def evaluate(self, epoch: int, step: int) -> dict[str, Any] | None:
        """Metrics measured before training and after each epoch (all ranks), or None."""
        return None

    def summary(self) -> dict[str, Any]:
        """Entries the model adds to the summary (called on every rank)."""
        return {}


# Where a run's processes and threads sit is not what it computes: left out of its
# fingerprint (a checkpoint records its world size, and resume checks that).
LAYOUT_KEYS = ("nproc", "threads")
Store = str | os.PathLike[str] | None  # the artefact store `train.init_from` names refer to


def training_fingerprint(config: TrainConfig, workdir: Workdir, store: Store = None) -> str:
    """What a training run depends on: its config (less the layout) and the input tables'
    fingerprints (with the parent artefact's content hash, under `train.init_from`)."""
    settings = {k: v for k, v in to_dict(config).items() if k not in LAYOUT_KEYS}
    if config.init_from is None:  # a fresh run's fingerprint stays what it was before
        del settings["init_from"]
    return fingerprint(settings, input_fingerprints(config, workdir, store))


def input_fingerprints(
    config: TrainConfig, workdir: Workdir, store: Store = None
) -> dict[str, str]:
    """{table: fingerprint} of the model's table and the vocabulary, and "init_from": the
    parent's content hash when there is one."""
    tables = get_model(config.model).input_tables
    inputs = {table: workdir.require(table)["fingerprint"] for table in tables}
    if config.init_from is not None:
        inputs["init_from"] = resolve_parent(config.init_from, store).sha256
    return inputs


def build_model(
    config: TrainConfig, wd: Workdir, cluster: Cluster, resumed: Any, store: Store
) -> tuple[ModelRun, Parent | None]:
    """The model's run, started from the parent artefact when `train.init_from` names one
    and there is no checkpoint to resume; the parent (None: a fresh start)."""
    run_class = resolve(get_model(config.model).trainer)
    parent = start_from(config, wd, store)
    if parent is None:
        return run_class(config, wd, cluster, resumed), None
    if not run_class.continues:
        raise ConfigError(f"train.init_from: model {config.model!r} cannot start from an artefact")
    if cluster.is_main:
        counts = ", ".join(f"{n} {k}" for k, n in parent.map.counts().items())
        print(f"starting from {parent.ref.name} {parent.ref.version}: words {counts}", flush=True)
    return run_class(config, wd, cluster, resumed, parent=None if resumed else parent), parent


def train(config: TrainConfig, workdir: str, out: Path, store: Store = None) -> dict[str, Any]:
    """Train `config.model` on the workdir's tables; checkpoints, metrics and the summary go
    to `out`; resumes from the newest checkpoint there. Returns the summary. `store`: where
    a `train.init_from` name is found (None: `artefacts.store_root`)."""
    config = resolve_threads(config, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cluster = setup_cluster(resolve(get_model(config.model).trainer).gpu_backend)
    wd = Workdir(workdir)
    run_fingerprint = training_fingerprint(config, wd, store)
    resumed = resume_checkpoint(out / CHECKPOINTS, run_fingerprint, cluster.world)
    model, parent = build_model(config, wd, cluster, resumed[1:] if resumed else None, store)
    state = resumed[2] if resumed else {"epoch": 0, "cursors": [[0, 0]] * cluster.world}
    out.mkdir(parents=True, exist_ok=True)
    loop = Loop(config, cluster, model, out, run_fingerprint, state)
    try:
        if resumed is None:
            loop.end_epoch(0, 0)  # the starting point: the untrained model's metrics
        for epoch in range(state["epoch"], config.epochs):
            cursor = state["cursors"][cluster.rank] if epoch == state["epoch"] else (0, 0)
            loop.run_epoch(epoch, (int(cursor[0]), int(cursor[1])))
        summary = loop.summarise(input_fingerprints(config, wd, store))
        if parent is not None:
            summary |= parent.summary()
        loop.close(summary)
    finally:  # what was logged reaches the disk, even when training fails
        if loop.progress is not None:
            loop.progress.close()
    return summary


class Loop:
    """The loop's running state: step, words done, the pending loss, rank 0's progress log."""

    def __init__(
        self,
        config: TrainConfig,
        cluster: Cluster,
        model: ModelRun,
        out: Path,
        run_fingerprint: str,
        state: dict[str, Any],
    ) -> None:
        self.config, self.cluster, self.model, self.out = config, cluster, model, out
        self.fingerprint = run_fingerprint
        self.step, self.words = state.get("step", 0), state.get("words", 0)
        self.progress = ProgressLog(out, self.step) if cluster.is_main else None
        # The last step logged and its loss: the starting one counts as logged (by the run
        # that wrote the checkpoint), so a resumed run never logs it again without its loss.
        self.logged: tuple[int, float | None] = (self.step, None)
        self.synced = self.words  # words done at the last exchange (or checkpoint)
        self.total = max(1, model.epoch_words * config.epochs)
        self.start_time, self.start_words = time.time(), self.words
        self.loss_sum, self.examples = 0.0, 0
        self.lr = model.learning_rate(self.step, min(1.0, self.words / self.total))

    def run_epoch(self, epoch: int, cursor: tuple[int, int]) -> None:
        """Train one epoch from `cursor`, then evaluate and checkpoint at its end."""
        config, model, cluster = self.config, self.model, self.cluster
        with Prefetcher(model.batches(epoch, cursor), depth=PREFETCH) as ahead:
            stream = Prefetcher(itertools.chain.from_iterable(ahead), depth=0)
            while True:
                agreed, step_words = agree(stream.peek(), cluster)
                if agreed == 0:
                    break
                for _ in range(agreed):
                    batch = next(stream)
                    progress = min(1.0, self.words / self.total)
                    self.lr = model.learning_rate(self.step, progress)
                    loss, examples = model.train_step(batch, self.lr, self.step)
                    self.step += 1
                    self.words += step_words
                    self.loss_sum += loss
                    self.examples += examples
                    if model.sync_every:
                        self.sync_step()
                    if cluster.is_main and (self.step == 1 or self.step % config.log_every == 0):
                        self.log(epoch, progress)
                    if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                        self.snapshot(epoch, batch.cursor)
        self.words = (epoch + 1) * model.epoch_words
        self.end_epoch(epoch, epoch + 1)
        self.snapshot(epoch + 1, (0, 0))

    def sync_step(self) -> None:
        """After a step: launch an exchange at a boundary, or apply the last one once its
        share of the interval is trained (words are agreed: the same step on every rank)."""
        since = self.words - self.synced
        if since >= self.model.sync_every:
            self.model.exchange()
            self.synced = self.words
        elif since >= self.model.sync_every * self.model.sync_overlap:
            self.model.settle()

    def end_epoch(self, epoch: int, done: int) -> None:
        """After `done` epochs (0: before training): the model's evaluation (all ranks) and
        rank 0's record of the epoch's last step, unless that step is logged already."""
        result = self.model.evaluate(done, self.step)
        if self.cluster.is_main and (result or self.logged[0] != self.step):
            self.log(epoch, min(1.0, self.words / self.total), result or {})
            if result:
                shown = ", ".join(f"{k} {v}" for k, v in result.items())
                print(f"evaluation after epoch {done}: {shown}", flush=True)
        self.loss_sum, self.examples = 0.0, 0

    def log(self, epoch: int, progress: float, evaluation: dict[str, Any] | None = None) -> None:
        """Rank 0's record of this step: one JSON record in metrics.jsonl (and TensorBoard)
        and one line on stdout. The loss is the mean since the last record (None before the
        first step); a step logged twice (its evaluation added) keeps its loss."""
        assert self.progress is not None
        if self.examples:
            loss: float | None = self.loss_sum / self.examples
        else:
            loss = self.logged[1] if self.logged[0] == self.step else None
        record: dict[str, Any] = {
            "step": self.step, "epoch": epoch, "progress": round(progress, 5), "loss": loss,
            "lr": self.lr,
        }  # fmt: skip
        trained = self.words - self.start_words
        if trained > 0:
            rate = trained / max(time.time() - self.start_time, 1e-9)
            record["words_per_sec"] = round(rate)
            record["eta_sec"] = round((self.total - self.words) / max(rate, 1e-9))
            shown = "-" if loss is None else f"{loss:.4f}"
            print(
                f"step {self.step} epoch {epoch} {100 * progress:5.1f}% loss {shown} "
                f"lr {self.lr:.5f} {rate:,.0f} {self.model.unit}/s eta {record['eta_sec']}s",
                flush=True,
            )
        self.progress.write(record | evaluation if evaluation else record)
        self.logged = (self.step, loss)
        self.loss_sum, self.examples = 0.0, 0

    def snapshot(self, epoch: int, cursor: tuple[int, int]) -> None:
        """Checkpoint the model and every rank's cursor (rank 0 writes)."""
        self.loss_sum += self.model.drain()  # the batches up to the cursor are all trained
        self.synced = self.words
        cursors = gather_cursors(cursor, self.cluster)
        if not self.cluster.is_main:
            return
        state = {
            "epoch": epoch,
            "cursors": cursors,
            "words": self.words,
            "world": self.cluster.world,
            "config": to_dict(self.config),
            "fingerprint": self.fingerprint,
        }
        save_checkpoint(
            self.out / CHECKPOINTS,
            self.step,
            self.model.tensors(),
            {**self.model.state(), **state},
            self.config.keep_checkpoints,
        )

    def summarise(self, inputs: dict[str, str]) -> dict[str, Any]:
        """The run's summary (`_TRAINED.json`): the model's entries, then the loop's."""
        elapsed = time.time() - self.start_time
        latest = latest_checkpoint(self.out / CHECKPOINTS) if self.cluster.is_main else None
        extras = self.model.summary()
        if "bytes_sent" in extras:  # exchange traffic per corpus word a rank trained
            trained = (self.words - self.start_words) / self.cluster.world
            extras["bytes_per_word"] = round(extras["bytes_sent"] / max(trained, 1), 2)
        return {
            **extras,
            "model": self.config.model,
            "config": to_dict(self.config),
            "fingerprint": self.fingerprint,
            "world_size": self.cluster.world,
            "device": self.cluster.device.type,
            "steps": self.step,
            "seconds": round(elapsed, 3),
            "corpus_words": self.model.corpus_words,
            "words_per_sec": round((self.words - self.start_words) / max(elapsed, 1e-9)),
            "checkpoint": latest.name if latest else None,
            "inputs": inputs,
        }

    def close(self, summary: dict[str, Any]) -> None:
        """Rank 0 writes the summary and the loss curve; then the process group ends."""
        if self.progress is not None:
            self.progress.close()
            write_loss_curve(self.out)
            (self.out / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True))
            shown = {k: summary[k] for k in ("steps", "seconds", "words_per_sec")}
            print(json.dumps(shown), flush=True)
        if self.cluster.world > 1:
            dist.barrier()
            dist.destroy_process_group()
