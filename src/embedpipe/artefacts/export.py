"""Exports of trained vectors to formats other tools read with no code of ours.

* word2vec text: gensim, fastText tooling, most embedding viewers.
* word2vec binary: the original C tool's format; gensim `load_word2vec_format(binary=True)`.
* Parquet with VECTORS_SCHEMA: Spark, DuckDB, Polars, pandas.
* hf: a masked LM as a `transformers` model directory (`AutoModel`, `AutoTokenizer`).
* sentence-transformers: vectors as a `SentenceTransformer` directory (a static embedding).

The last two need the `hf` extra and write a directory (see `artefacts.huggingface`).
Sources and targets are local paths or fsspec URLs.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import get_args

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.artefacts.huggingface import export_sentence_transformers, export_transformers
from embedpipe.artefacts.loader import Embeddings, read_embeddings
from embedpipe.artefacts.store import Location, as_location, filesystem
from embedpipe.formats import ExportFormat
from embedpipe.schemas import SPECIAL_TOKENS, VECTOR, VECTORS_SCHEMA

FORMATS: tuple[str, ...] = get_args(ExportFormat)

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


def _check_word2vec_tokens(tokens: Sequence[str], kind: str) -> None:
    """Refuse tokens word2vec formats cannot hold: they end a token at whitespace."""
    for token in tokens:
        if not token or any(c.isspace() for c in token):
            raise ValueError(
                f"token {token!r} cannot be written in word2vec {kind} format "
                "(empty or contains whitespace)"
            )


def write_word2vec_text(
    path: str | os.PathLike[str], tokens: Sequence[str], vectors: np.ndarray
) -> None:
    """Write the word2vec text format: a "V d" header, then "token v1 v2 ..." per line.

    Floats are written with 9 significant digits so float32 values round-trip exactly.
    The format splits on whitespace, so a token that is empty or contains whitespace
    cannot be represented: ValueError names it.
    """
    array = _checked(tokens, vectors)
    _check_word2vec_tokens(tokens, "text")
    row_format = " ".join([FLOAT32_FORMAT] * array.shape[1])
    with fsspec.open(os.fspath(path), "w", encoding="utf-8", newline="\n") as f:
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
    with fsspec.open(os.fspath(path), "wb") as f:
        pq.write_table(table, f)


def write_word2vec_binary(
    path: str | os.PathLike[str], tokens: Sequence[str], vectors: np.ndarray
) -> None:
    """Write the word2vec binary format: a "V d\\n" header, then per token its UTF-8 bytes,
    a space, d little-endian float32 values and a newline (as the original C tool writes).
    """
    array = _checked(tokens, vectors).astype("<f4", copy=False)
    _check_word2vec_tokens(tokens, "binary")
    with fsspec.open(os.fspath(path), "wb") as f:
        f.write(f"{array.shape[0]} {array.shape[1]}\n".encode())
        for token, row in zip(tokens, array, strict=True):
            f.write(token.encode("utf-8") + b" " + row.tobytes() + b"\n")


WRITERS = {
    "w2v-text": write_word2vec_text,
    "w2v-binary": write_word2vec_binary,
    "parquet": write_vectors_parquet,
}


# Formats that are directories: written whole into a local folder, then moved into place.
DIRECTORY_WRITERS: dict[str, Callable[[Embeddings, Path], Path]] = {
    "hf": export_transformers,
    "sentence-transformers": export_sentence_transformers,
}


def export(
    source: str | os.PathLike[str] | Embeddings,
    fmt: ExportFormat,
    out_path: str | os.PathLike[str],
    include_special: bool = False,
) -> Location:
    """Write the vectors of an artefact directory (verified first) or Embeddings as `fmt`.

    The special tokens ([PAD], [UNK], ...) are left out unless `include_special`: they carry
    no meaning for a downstream tool. The directory formats (hf, sentence-transformers) keep
    every row, so token ids stay the artefact's, and refuse a target that exists. The output
    appears complete or not at all (written to a temporary name, then moved). Returns where
    it was written (a Path, or the URL given).
    """
    if fmt not in WRITERS and fmt not in DIRECTORY_WRITERS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    emb = source if isinstance(source, Embeddings) else read_embeddings(source)
    if fmt in DIRECTORY_WRITERS:
        return _export_directory(emb, DIRECTORY_WRITERS[fmt], out_path)
    if include_special:
        tokens, vectors = emb.vocab, emb.vectors
    else:
        keep = [i for i, token in enumerate(emb.vocab) if token not in SPECIAL_TOKENS]
        tokens, vectors = [emb.vocab[i] for i in keep], emb.vectors[keep]
    out = as_location(out_path)
    fs, path = filesystem(out)
    # Written beside the target and moved, so a failed export leaves no truncated file.
    parent, name = posixpath.split(path)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
    fs.makedirs(parent, exist_ok=True)
    try:
        WRITERS[fmt](fs.unstrip_protocol(tmp), tokens, vectors)
        fs.mv(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(tmp)
    return out


def _export_directory(
    emb: Embeddings,
    writer: Callable[[Embeddings, Path], Path],
    out_path: str | os.PathLike[str],
) -> Location:
    """Run a directory `writer` into a local temporary folder, copy its files beside the
    target (path or URL) under a temporary name, then move that onto the target."""
    out = as_location(out_path)
    fs, path = filesystem(out)
    if fs.exists(path):
        raise FileExistsError(f"{out} exists: remove it or export to another directory")
    parent, name = posixpath.split(path.rstrip("/"))
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
    fs.makedirs(parent, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as local:
            written = writer(emb, Path(local, name))
            for file in sorted(p for p in written.rglob("*") if p.is_file()):
                target = f"{tmp}/{file.relative_to(written).as_posix()}"
                fs.makedirs(posixpath.dirname(target), exist_ok=True)
                fs.put_file(str(file), target)
        fs.mv(tmp, path, recursive=True)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
    return out
