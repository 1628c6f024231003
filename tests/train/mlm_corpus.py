"""A tiny `vocab` + `buckets` workdir for the masked-LM tests, written with pyarrow.

The language is learnable in a hundred small steps: a sequence draws its words from one
topic of GROUP words, so its other words tell which topic a masked word belongs to (the
best loss is about ln 5 = 1.6 against ln 30 = 3.4 for the unigram guess).
Manifests of every corpus table are written, as the publish step reads them all.
Loaded by path (`load_helper`), as the tests run with --import-mode=importlib.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe import schemas as S
from embedpipe.workdir import MANIFEST

WORDS = 30
GROUP = 5  # words per topic: a masked word is one of its sequence's topic
BOUNDARIES = (4, 8, 12)  # bucket k holds lengths in (BOUNDARIES[k-1], BOUNDARIES[k]]


def topic_sequences(n: int, seed: int, longest: int = 16) -> list[np.ndarray]:
    """n sequences of length 2..longest, each drawing its words from one topic (a group of
    GROUP consecutive word ids), a few [UNK]s among them."""
    rng = np.random.default_rng(seed)
    n_special = len(S.SPECIAL_TOKENS)
    out = []
    for _ in range(n):
        length = int(rng.integers(2, longest + 1))
        topic = int(rng.integers(0, WORDS // GROUP))
        seq = n_special + topic * GROUP + rng.integers(0, GROUP, length)
        seq[rng.random(length) < 0.03] = S.UNK_ID
        out.append(seq.astype(np.int32))
    return out


def bucket_of(length: int) -> int:
    return int(sum(b < length for b in BOUNDARIES))


def write_mlm_workdir(root: Path, n_sequences: int = 600, seed: int = 0) -> Path:
    """vocab/ and buckets/ (partitioned bucket=k/) with manifests, plus stub manifests."""
    sequences = topic_sequences(n_sequences, seed)
    n_special = len(S.SPECIAL_TOKENS)
    tokens = list(S.SPECIAL_TOKENS) + [f"w{i}" for i in range(WORDS)]
    counts = np.bincount(np.concatenate(sequences), minlength=len(tokens)).astype(np.int64)
    counts[:n_special] = 0

    vocab = root / "vocab"
    vocab.mkdir(parents=True)
    table = pa.table(
        {
            S.ID: np.arange(len(tokens), dtype=np.int32),
            S.TOKEN: tokens,
            S.COUNT: counts,
            S.KEEP_PROB: np.ones(len(tokens)),
            S.NOISE_PROB: counts / counts.sum(),
        },
        schema=S.VOCAB_SCHEMA,
    )
    pq.write_table(table, vocab / "part-00000.parquet")
    (vocab / MANIFEST).write_text(
        json.dumps({"fingerprint": f"vocab-{seed}", "counts": {"vocab_size": len(tokens)}})
    )

    buckets = root / "buckets"
    stats = []
    for k in range(len(BOUNDARIES) + 1):
        members = [s for s in sequences if bucket_of(len(s)) == k]
        if not members:
            continue
        part = buckets / f"bucket={k}"
        part.mkdir(parents=True)
        pq.write_table(
            pa.table(
                {
                    S.IDS: pa.array([s.tolist() for s in members], pa.list_(pa.int32())),
                    S.LENGTH: pa.array([len(s) for s in members], pa.int32()),
                },
                schema=S.SEQUENCES_SCHEMA,
            ),
            part / "part-00000.parquet",
            row_group_size=64,
        )
        stats.append(
            {"bucket": k, "sequences": len(members), "tokens": int(sum(map(len, members)))}
        )
    total = int(sum(map(len, sequences)))
    (buckets / MANIFEST).write_text(
        json.dumps(
            {
                "fingerprint": f"buckets-{seed}",
                "counts": {"boundaries": list(BOUNDARIES), "buckets": stats},
            }
        )
    )
    for stage in ("tokens", "sequences", "cooccur"):
        (root / stage).mkdir(parents=True, exist_ok=True)
        (root / stage / MANIFEST).write_text(
            json.dumps({"fingerprint": f"{stage}-{seed}", "counts": {"tokens": total}})
        )
    return root
