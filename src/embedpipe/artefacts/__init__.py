"""Versioned artefacts: the store that publishes them, exports, diffs and the embedding loader.

The function `embedpipe.artefacts.export.export` is re-exported as `export_vectors`, so the
package attribute `export` stays the submodule.
"""

from embedpipe.artefacts.diff import diff_manifests, format_diff
from embedpipe.artefacts.export import FORMATS as EXPORT_FORMATS
from embedpipe.artefacts.export import export as export_vectors
from embedpipe.artefacts.export import (
    write_vectors_parquet,
    write_word2vec_binary,
    write_word2vec_text,
)
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
    "EXPORT_FORMATS",
    "ArtefactError",
    "ArtefactStore",
    "Embeddings",
    "default_store",
    "diff_manifests",
    "export_vectors",
    "format_diff",
    "load",
    "read_embeddings",
    "read_manifest",
    "sha256_file",
    "verify",
    "write_vectors_parquet",
    "write_word2vec_binary",
    "write_word2vec_text",
]
