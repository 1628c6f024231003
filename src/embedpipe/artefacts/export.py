"""Exports of trained vectors to formats other tools read with no code of ours.

* word2vec text: gensim, fastText tooling, most embedding viewers.
* Parquet with VECTORS_SCHEMA: Spark, DuckDB, Polars, pandas.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.schemas import VECTOR, VECTORS_SCHEMA

# float32 needs 9 significant digits to round-trip exactly through decimal text.
FLOAT32_FORMAT = "%.9g"


def _checked(tokens: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    """vectors as a C-contiguous float32 (V, d) array matching tokens, else ValueError."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"vectors must be 2-D (V, d), got shape {array.shape}")
    if len(tokens) != array.shape[0]:
        raise ValueError(f"{len(tokens)} tokens but {array.shape[0]} vector rows")
    return array


def write_word2vec_text(
    path: str | os.PathLike[str], tokens: Sequence[str], vectors: np.ndarray
) -> None:
    """Write the word2vec text format: a "V d" header, then "token v1 v2 ..." per line.

    Floats are written with 9 significant digits so float32 values round-trip exactly.
    The format splits on whitespace, so a token that is empty or contains whitespace
    cannot be represented: ValueError names it.
    """
    array = _checked(tokens, vectors)
    for token in tokens:
        if not token or any(c.isspace() for c in token):
            raise ValueError(
                f"token {token!r} cannot be written in word2vec text format "
                "(empty or contains whitespace)"
            )
    row_format = " ".join([FLOAT32_FORMAT] * array.shape[1])
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"{array.shape[0]} {array.shape[1]}\n")
        for token, row in zip(tokens, array.tolist(), strict=True):
            f.write(f"{token} {row_format % tuple(row)}\n")


def write_vectors_parquet(
    path: str | os.PathLike[str], tokens: Sequence[str], vectors: np.ndarray
) -> None:
    """Write a Parquet table with VECTORS_SCHEMA (token string, vector list<float32>)."""
    array = _checked(tokens, vectors)
    n, d = array.shape
    if n * d >= 2**31:
        raise ValueError(f"{n} x {d} values exceed the 2**31 limit of a Parquet list column")
    offsets = pa.array((np.arange(n + 1, dtype=np.int64) * d).astype(np.int32))
    vector_type = VECTORS_SCHEMA.field(VECTOR).type
    vector_column = pa.ListArray.from_arrays(offsets, pa.array(array.reshape(-1)), type=vector_type)
    token_column = pa.array(list(tokens), type=pa.string())
    table = pa.Table.from_arrays([token_column, vector_column], schema=VECTORS_SCHEMA)
    pq.write_table(table, path)
