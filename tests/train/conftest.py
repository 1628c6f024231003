"""A tiny `vocab` + `sequences` workdir written with pyarrow, as the corpus stages would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe import schemas as S
from embedpipe.corpus.stage import MANIFEST
from embedpipe.train.sgns import keep_probabilities, noise_distribution

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
