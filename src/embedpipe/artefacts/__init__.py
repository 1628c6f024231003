"""Versioned artefacts: the store that publishes them, exports, and the embedding loader."""

from embedpipe.artefacts.export import write_vectors_parquet, write_word2vec_text
from embedpipe.artefacts.loader import Embeddings, load, read_embeddings
from embedpipe.artefacts.store import (
    ArtefactError,
    ArtefactStore,
    default_store,
    read_manifest,
    sha256_file,
    verify,
)

__all__ = [
    "ArtefactError",
    "ArtefactStore",
    "Embeddings",
    "default_store",
    "load",
    "read_embeddings",
    "read_manifest",
    "sha256_file",
    "verify",
    "write_vectors_parquet",
    "write_word2vec_text",
]
