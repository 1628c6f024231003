"""A tiny store for the CLI tests: `tiny` v0001 and v0002, six words in 8 dimensions, the
three royals close together."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from embedpipe import schemas as S
from embedpipe.artefacts import ArtefactStore

WORDS = ["king", "prince", "queen", "cabbage", "dog", "hound"]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    tokens = [*S.SPECIAL_TOKENS, *WORDS]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(tokens), 8)).astype(np.float32)
    base = rng.normal(size=8)
    for i, w in enumerate(tokens):
        if w in ("king", "prince", "queen"):
            vectors[i] = base + 0.1 * rng.normal(size=8)
    save_file({"vectors": vectors}, str(tmp_path / "v.safetensors"))
    pq.write_table(
        pa.table({"id": pa.array(range(len(tokens)), pa.int32()), "token": tokens,
                  "count": pa.array([0] * 5 + [10] * len(WORDS), pa.int64())}),
        tmp_path / "vocab.parquet",
    )  # fmt: skip
    root = tmp_path / "store"
    files = {
        "vectors.safetensors": tmp_path / "v.safetensors",
        "vocab.parquet": tmp_path / "vocab.parquet",
    }
    ArtefactStore(root).publish("tiny", files, {})
    ArtefactStore(root).publish("tiny", files, {})
    return root


@pytest.fixture
def words() -> list[str]:
    """The words of the `store` artefact, in vocabulary order."""
    return list(WORDS)


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli() -> Cli:
    """`cli(*args, env=...)`: `embedpipe ARGS` in a child process, its output captured."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "embedpipe.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    return run
