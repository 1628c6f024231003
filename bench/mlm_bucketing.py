"""Masked-LM training with length buckets against plain batching, on the same data and budget.

Both sides train the same model (same seed, same `train.mlm` settings) on the same sequences
of a prepared workdir's `buckets` table, with the same packing (`[CLS] a [SEP] b [SEP]` pairs),
masking and token budget (rows x longest row <= `max_tokens`):

* bucketed: the trainer's own batches (`train.buckets.iter_bucket_batches`): one length bucket
  per batch, sorted by length within a chunk, buckets visited in a seeded shuffled order;
* plain: every sequence in one shuffled pool, cut into batches in that order under the same
  budget (no sorting, no buckets): what a loader that ignores length does.

Batches are built first (not timed); then the two sides' training steps (forward, backward,
AdamW) run interleaved, a step of whichever side has trained fewer tokens, so both see the
same machine load. It prints, side by side with their ratio: batches, padding share (padded
slots / all slots), real tokens/s (non-padding slots, [CLS]/[SEP] included), corpus tokens/s,
and mean masked-LM loss over the last quarter of each side's steps; and writes them to
bench/results/mlm_bucketing.json.

Usage: python bench/mlm_bucketing.py [--config configs/sample-mlm.toml] [--workdir DIR]
           [--tokens 300000] [--threads 1] [--seed 1] [--set train.mlm.KEY=VALUE] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedpipe.config import load_config
from embedpipe.train.buckets import (
    BucketBatch,
    cut_long,
    heldout_mask,
    iter_bucket_batches,
    make_batch,
    pair_examples,
    rank_bucket_chunks,
    token_budget_batches,
    visit_order,
)
from embedpipe.train.data import Chunk, ChunkReader, count_rows
from embedpipe.train.mlm import EncoderConfig, MaskedLM
from embedpipe.train.registry import MLMConfig
from embedpipe.train.specs.transformer import ADAM_EPS
from embedpipe.train.transformer import decay_groups
from embedpipe.workdir import Workdir

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "mlm_bucketing.json"


def bucketed_batches(
    config: MLMConfig, table: str, vocab: int, seed: int, limit: int
) -> tuple[list[BucketBatch], list[Chunk]]:
    """The trainer's batches of epoch 0 on one rank, whole chunks up to `limit` corpus
    tokens, and the chunks they came from."""
    chunks = rank_bucket_chunks(table, 0, 1, config.chunk_rows)
    order = visit_order({b: len(c) for b, c in chunks.items()}, seed, 0)
    out, visited, tokens = [], [], 0.0
    for batches in iter_bucket_batches(config, chunks, vocab, seed, 0, 0):
        out += batches
        tokens += sum(b.words for b in batches)
        bucket, index = order[batches[-1].cursor[0] - (batches[-1].cursor[1] == 0)]
        visited.append(chunks[bucket][index])
        if tokens >= limit:
            break
    return out, visited


def plain_batches(
    config: MLMConfig, chunks: list[Chunk], vocab: int, seed: int
) -> list[BucketBatch]:
    """Batches of the same sequences (the same chunks, long ones cut alike) in one shuffled
    pool, cut in that order under the same token budget."""
    reader = ChunkReader()
    flats, rows, base = [], [], 0
    for chunk in chunks:
        flat, offsets = reader(chunk)
        keep = ~heldout_mask(flat, offsets, config.heldout)
        rows.append(cut_long(offsets, keep, config.max_len - 2) + base)
        flats.append(flat)
        base += len(flat)
    flat, piece_rows = np.concatenate(flats), np.concatenate(rows)
    lengths = piece_rows[:, 1] - piece_rows[:, 0]
    rng = np.random.default_rng([seed, 7])
    examples = pair_examples(lengths, config.pair_prob, config.max_len, rng)  # shuffles too
    out = []
    budget = token_budget_batches(examples.lengths, config.max_tokens, sort=False)
    for b, members in enumerate(budget):
        data, targets, tokens, slots = make_batch(
            flat, piece_rows, examples, members, vocab, config, np.random.default_rng([seed, 8, b])
        )
        second = examples.second[members]
        words = float(lengths[examples.first[members]].sum() + lengths[second[second >= 0]].sum())
        out.append(BucketBatch(data, targets, words, 1, (0, b), tokens, slots, -1))
    return out


class Side:
    """One side of the comparison: its model, optimizer, batches and counters."""

    def __init__(
        self, name: str, batches: list[BucketBatch], config: MLMConfig, vocab: int, seed: int
    ):
        self.name, self.batches, self.next = name, batches, 0
        self.model = MaskedLM(EncoderConfig.from_mlm(config, vocab), seed)
        self.optimizer = torch.optim.AdamW(
            decay_groups(self.model, config.weight_decay), lr=config.lr,
            betas=config.adam_betas, eps=ADAM_EPS,
        )  # fmt: skip
        self.clip = config.clip_norm
        self.seconds = 0.0
        self.tokens = self.slots = 0
        self.words = 0.0
        self.losses: list[float] = []

    @property
    def done(self) -> bool:
        return self.next >= len(self.batches)

    def step(self) -> None:
        batch = self.batches[self.next]
        self.next += 1
        start = time.perf_counter()
        loss = self.model(*batch.data)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.seconds += time.perf_counter() - start
        self.losses.append(loss.item())
        self.tokens += batch.tokens
        self.slots += batch.slots
        self.words += batch.words

    def figures(self) -> dict[str, Any]:
        tail = self.losses[-max(1, len(self.losses) // 4) :]
        return {
            "batches": len(self.batches),
            "padding_share": round(1 - self.tokens / self.slots, 4),
            "real_tokens": self.tokens,
            "padded_slots": self.slots,
            "corpus_tokens": round(self.words),
            "train_seconds": round(self.seconds, 2),
            "tokens_per_sec": round(self.tokens / self.seconds),
            "slots_per_sec": round(self.slots / self.seconds),
            "corpus_tokens_per_sec": round(self.words / self.seconds),
            "mean_rows": round(float(np.mean([b.data[0].shape[0] for b in self.batches])), 1),
            "mean_width": round(float(np.mean([b.data[0].shape[1] for b in self.batches])), 1),
            "loss_last_quarter": round(float(np.mean(tail)), 4),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "sample-mlm.toml"))
    parser.add_argument("--workdir", help="a prepared workdir (default: the config's)")
    parser.add_argument("--tokens", type=int, default=300_000, help="corpus tokens per side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()

    run = load_config(args.config, args.set)
    config = dataclasses.replace(run.train.options, heldout=0.0)  # every sequence trains
    workdir = Workdir(args.workdir or run.workdir)
    manifest = workdir.require("buckets")
    table = workdir.table_path("buckets", manifest=manifest)
    vocab = count_rows(workdir.table_path("vocab"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    bucketed, chunks = bucketed_batches(config, table, vocab, args.seed, args.tokens)
    plain = plain_batches(config, chunks, vocab, args.seed)
    sequences = sum(c.stop - c.start for c in chunks)
    build = time.perf_counter() - t0
    sides = [
        Side("bucketed", bucketed, config, vocab, args.seed),
        Side("plain", plain, config, vocab, args.seed),
    ]
    print(
        f"{workdir.root}: {sequences:,} sequences, budget {config.max_tokens} slots, "
        f"model {config.layers}x{config.width} (ffn {config.ffn}, {config.heads} heads), "
        f"vocab {vocab:,}, {args.threads} thread(s); batches built in {build:.1f}s",
        flush=True,
    )
    while not all(s.done for s in sides):
        min(sides, key=lambda s: (s.done, s.tokens)).step()

    figures = {s.name: s.figures() for s in sides}
    a, b = figures["bucketed"], figures["plain"]
    rows = [
        ("batches", "batches", "{:,}"),
        ("rows per batch", "mean_rows", "{:.1f}"),
        ("width per batch", "mean_width", "{:.1f}"),
        ("padding share", "padding_share", "{:.1%}"),
        ("real tokens", "real_tokens", "{:,}"),
        ("train seconds", "train_seconds", "{:.1f}"),
        ("real tokens/s", "tokens_per_sec", "{:,}"),
        ("corpus tokens/s", "corpus_tokens_per_sec", "{:,}"),
        ("padded slots/s", "slots_per_sec", "{:,}"),
        ("loss (last 1/4)", "loss_last_quarter", "{:.3f}"),
    ]
    print(f"\n{'':18s} {'bucketed':>12s} {'plain':>12s} {'bucketed/plain':>15s}")
    for label, key, fmt in rows:
        ratio = a[key] / b[key] if b[key] else float("nan")
        print(f"{label:18s} {fmt.format(a[key]):>12s} {fmt.format(b[key]):>12s} {ratio:>15.2f}")
    result = {
        "workdir": workdir.root,
        "buckets": manifest["counts"].get("boundaries"),
        "settings": dataclasses.asdict(config),
        "threads": args.threads,
        "seed": args.seed,
        "corpus_tokens_limit": args.tokens,
        "sequences": sequences,
        "vocab": vocab,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "torch": torch.__version__,
        "bucketed": a,
        "plain": b,
        "ratio_tokens_per_sec": round(a["tokens_per_sec"] / b["tokens_per_sec"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
