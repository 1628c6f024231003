"""Load a published embedding artefact (verified first); `artefacts.keyed` queries it.

An embedding artefact is a version directory holding `vectors.safetensors` (tensor "vectors",
float32 (V, d)) and `vocab.parquet` (VOCAB_SCHEMA, row i has id i), both listed in its manifest.
Only safetensors and Parquet are read: nothing is ever unpickled.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load as load_safetensors

from embedpipe.artefacts.files import (
    ArtefactError,
    Location,
    VersionGoneError,
    as_location,
    filesystem,
    join,
    read_bytes,
    validate_name,
)
from embedpipe.artefacts.integrity import gone_or, is_artefact, verify, was_deleted
from embedpipe.artefacts.keyed import Embeddings
from embedpipe.artefacts.manifest import MANIFEST
from embedpipe.artefacts.store import ArtefactStore, open_store
from embedpipe.schemas import COUNT, ID, TOKEN, VOCAB_SCHEMA

__all__ = ["Embeddings", "load", "read_embeddings"]

VECTORS_FILE = "vectors.safetensors"
VOCAB_FILE = "vocab.parquet"
VECTORS_KEY = "vectors"
TOKENIZER_FILE = "tokenizer.model"  # SentencePiece model of a SentencePiece artefact
ENCODER_FILE = "encoder.safetensors"  # language-model artefacts: see artefacts/contextual.py
SUBWORDS_FILE = "subwords.safetensors"  # fasttext artefacts: see artefacts/subwords.py
RETRIES = 2  # re-resolutions of an alias whose version is deleted while it is read


def load(
    path_or_name: str | os.PathLike[str],
    version: str | int = "latest",
    store: str | os.PathLike[str] | ArtefactStore | None = None,
) -> Embeddings:
    """Load embeddings from a version directory (path or fsspec URL), or by name (and
    version) from a store (path, URL or ArtefactStore; None: `store_root()`, i.e.
    $EMBEDPIPE_STORE or ./artefacts).

    With `store` given, a bare name ("emb") is that store's artefact, never a directory of
    the working directory ("./emb" is one); without it, a version directory of that name
    wins. The artefact is verified against its manifest first, so a modified file fails
    with ArtefactError instead of loading silently. A version deleted while it is read
    raises VersionGoneError, unless `version` is an alias (`latest` included) that names
    another version by then: that one is loaded.
    """
    name = os.fspath(path_or_name)
    try:
        by_name = validate_name(name) == name
    except ArtefactError:
        by_name = False
    if (store is None or not by_name) and is_artefact(path_or_name):
        return read_embeddings(as_location(path_or_name))
    if not by_name:
        if was_deleted(path_or_name):
            raise VersionGoneError(path_or_name)
        raise ArtefactError(
            f"{name} is neither an artefact directory (no {MANIFEST}) nor an artefact name"
        )
    opened = open_store(store)
    directory = opened.resolve(name, version)
    for _ in range(RETRIES):
        try:
            return read_embeddings(directory)
        except VersionGoneError:
            try:
                again = opened.resolve(name, version)
            except ArtefactError:
                again = directory  # nothing left under that name: the version is gone
            if again == directory:
                raise
            directory = again
    return read_embeddings(directory)


def read_embeddings(directory: str | os.PathLike[str]) -> Embeddings:
    """Verify and read the embedding artefact in version directory `directory` (path or URL).

    VersionGoneError when the version is deleted while it is read."""
    directory = as_location(directory)
    try:
        return _read_embeddings(directory)
    except (ArtefactError, OSError) as e:
        error = gone_or(directory, e)
        if error is e:
            raise
        raise error from e


def _read_embeddings(directory: Location) -> Embeddings:
    manifest = verify(directory)
    for file in (VECTORS_FILE, VOCAB_FILE):
        if file not in manifest.files:
            raise ArtefactError(f"{join(directory, MANIFEST)} does not list {file}")
    vectors = _read_vectors(join(directory, VECTORS_FILE))
    tokens, counts = _read_vocab(join(directory, VOCAB_FILE))
    if len(tokens) != vectors.shape[0]:
        raise ArtefactError(
            f"{join(directory, VOCAB_FILE)} has {len(tokens)} tokens but "
            f"{join(directory, VECTORS_FILE)} has {vectors.shape[0]} rows"
        )
    tokenizer = join(directory, TOKENIZER_FILE)
    model = read_bytes(tokenizer) if TOKENIZER_FILE in manifest.files else None
    try:
        emb = Embeddings(
            vectors, tokens, counts, manifest=manifest, path=directory, tokenizer_model=model
        )
    except ValueError as e:
        raise ArtefactError(f"{directory}: {e}") from e
    if ENCODER_FILE in manifest.files:  # a language model: the model comes with its vectors
        from embedpipe.artefacts.contextual import with_model

        return with_model(emb)
    if SUBWORDS_FILE in manifest.files:  # fasttext: the n-gram table composes unseen words
        from embedpipe.artefacts.subwords import with_subwords

        return with_subwords(emb)
    return emb


def _read_vectors(path: Location) -> np.ndarray:
    """The float32 (V, d) tensor "vectors" of a safetensors file (path or URL)."""
    try:
        tensors = load_safetensors(read_bytes(path))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ArtefactError(f"{path} is not a readable safetensors file: {e}") from e
    if VECTORS_KEY not in tensors:
        raise ArtefactError(f"{path} has no tensor {VECTORS_KEY!r} (has {sorted(tensors)})")
    vectors = tensors[VECTORS_KEY]
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise ArtefactError(
            f"{path}: tensor {VECTORS_KEY!r} must be a 2-D float array, "
            f"got {vectors.dtype} {vectors.shape}"
        )
    return vectors.astype(np.float32, copy=False)


# The vocabulary columns the loader needs; other VOCAB_SCHEMA columns (sampling tables) are
# training inputs, so artefacts published before they existed still load.
_VOCAB_COLUMNS = pa.schema([VOCAB_SCHEMA.field(name) for name in (ID, TOKEN, COUNT)])


def _read_vocab(path: Location) -> tuple[list[str], np.ndarray]:
    """Tokens by id and their counts from a VOCAB_SCHEMA table, checking ids are 0..V-1."""
    names = _VOCAB_COLUMNS.names
    fs, fs_path = filesystem(path)
    try:
        with fs.open(fs_path, "rb") as f, pq.ParquetFile(f) as file:
            missing = [c for c in names if c not in file.schema_arrow.names]
            if missing:
                raise ArtefactError(f"{path} lacks the vocabulary columns {missing}")
            table = file.read(columns=names).select(names)
        table = table.cast(_VOCAB_COLUMNS)
    except ArtefactError:
        raise
    except Exception as e:  # pyarrow raises several error types for bad files and types
        raise ArtefactError(f"{path} is not a readable vocabulary table: {e}") from e
    if table.column(ID).null_count or table.column(TOKEN).null_count:
        raise ArtefactError(f"{path} has null ids or tokens")
    ids = table.column(ID).to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ArtefactError(f"{path}: ids must be 0..{len(ids) - 1} in order")
    tokens = table.column(TOKEN).to_pylist()
    counts = table.column(COUNT).fill_null(0).to_numpy().astype(np.int64)
    return tokens, counts
