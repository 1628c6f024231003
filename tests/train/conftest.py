"""A tiny `vocab` + `sequences` workdir written with pyarrow, as the corpus stages would."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from embedpipe import schemas as S
from embedpipe.train.windows import (
    RowCompactor,
    SpanBatch,
    WindowBatch,
    alias_table,
    chunk_windows,
    compact_batch,
    keep_probabilities,
    noise_distribution,
    span_batches,
)
from embedpipe.workdir import MANIFEST

WORDS = 40


def write_workdir(
    root: Path, n_sequences: int = 240, seed: int = 0, row_group_size: int = 100
) -> Path:
    """vocab (specials + WORDS words) and sequences (Zipf-ish ids, some [UNK]) with manifests."""
    rng = np.random.default_rng(seed)
    n_special = len(S.SPECIAL_TOKENS)
    weights = 1.0 / np.arange(1, WORDS + 1)
    ids = n_special + np.arange(WORDS)
    sequences = []
    for _ in range(n_sequences):
        seq = rng.choice(ids, size=int(rng.integers(2, 14)), p=weights / weights.sum())
        seq[rng.random(len(seq)) < 0.05] = S.UNK_ID
        sequences.append(seq.astype(np.int32))
    flat = np.concatenate(sequences)
    counts = np.bincount(flat, minlength=n_special + WORDS).astype(np.int64)
    counts[:n_special] = 0
    tokens = list(S.SPECIAL_TOKENS) + [f"w{i}" for i in range(WORDS)]

    vocab = root / "vocab"
    vocab.mkdir(parents=True)
    columns = {S.ID: np.arange(len(tokens), dtype=np.int32), S.TOKEN: tokens, S.COUNT: counts}
    # Derived columns the vocab stage may add (the trainer reads only `count`).
    derived = {
        "keep_prob": keep_probabilities(counts, 1e-3),
        "noise_prob": noise_distribution(counts),
    }
    columns |= {k: v for k, v in derived.items() if k in S.VOCAB_SCHEMA.names}
    pq.write_table(pa.table(columns, schema=S.VOCAB_SCHEMA), vocab / "part-00000.parquet")
    (vocab / MANIFEST).write_text(json.dumps({"fingerprint": f"vocab-{seed}"}))

    seq_dir = root / "sequences"
    seq_dir.mkdir(parents=True)
    table = pa.table(
        {
            S.IDS: pa.array([s.tolist() for s in sequences], pa.list_(pa.int32())),
            S.LENGTH: pa.array([len(s) for s in sequences], pa.int32()),
        },
        schema=S.SEQUENCES_SCHEMA,
    )
    pq.write_table(table, seq_dir / "part-00000.parquet", row_group_size=row_group_size)
    (seq_dir / MANIFEST).write_text(
        json.dumps({"fingerprint": f"sequences-{seed}", "counts": {"tokens": int(len(flat))}})
    )
    return root


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return write_workdir(tmp_path / "work")


# Window batches and tables for the step tests of skip-gram and CBOW.
SPECIALS = len(S.SPECIAL_TOKENS)


def random_chunk(seed: int, vocab: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat ids, offsets, keep probabilities) of 40 random sequences, some of length 1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, size=40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = rng.integers(0, vocab, size=offsets[-1]).astype(np.int32)
    keep = np.where(np.arange(vocab) < SPECIALS, 0.0, rng.uniform(0.3, 1.0, vocab))
    return flat, offsets, keep


def tables(vocab: int = 30, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(vocab, dim, generator=g, dtype=torch.float64) * 0.5,
        torch.randn(vocab, dim, generator=g, dtype=torch.float64) * 0.5,
    )


def scatter(rows: torch.Tensor, values: torch.Tensor, vocab: int) -> torch.Tensor:
    dense = torch.zeros(vocab, values.shape[1], dtype=values.dtype)
    dense[rows] = values
    return dense


def span_fixture(seed: int = 0, negatives: int = 4) -> SpanBatch:
    """One batch of a random chunk (vocab 30), some negatives equal to their centre."""
    flat, offsets, keep = random_chunk(seed)
    noise = alias_table(noise_distribution(np.arange(30) + 1.0))
    windows = chunk_windows(flat, offsets, keep, 3, negatives, noise, np.random.default_rng(1))
    windows.negatives[::4, 1] = windows.ids[::4]  # skipped, as word2vec.c does
    batch, _ = next(span_batches(windows, 10_000, 0))
    return batch


def window_fixture(seed: int = 0, negatives: int = 4) -> WindowBatch:
    """`span_fixture` in compact form."""
    return compact_batch(span_fixture(seed, negatives), RowCompactor(30))


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, for the step tests."""
    return SimpleNamespace(
        random_chunk=random_chunk, tables=tables, scatter=scatter,
        span_fixture=span_fixture, window_fixture=window_fixture,
    )  # fmt: skip
