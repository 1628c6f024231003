"""Versioned artefacts: the store that publishes them, their typed manifests, exports, diffs
and the embedding loader.

The function `embedpipe.artefacts.export.export` is re-exported as `export_vectors`, so the
package attribute `export` stays the submodule.
"""

from embedpipe.artefacts.diff import diff_manifests, diff_vectors, format_diff
from embedpipe.artefacts.export import FORMATS as EXPORT_FORMATS
from embedpipe.artefacts.export import export as export_vectors
from embedpipe.artefacts.export import (
    write_vectors_parquet,
    write_word2vec_binary,
    write_word2vec_text,
)
from embedpipe.artefacts.files import (
    ArtefactError,
    ArtefactPathError,
    VersionGoneError,
    sha256_file,
)
from embedpipe.artefacts.integrity import is_artefact, read_manifest, verify
from embedpipe.artefacts.loader import Embeddings, load, read_embeddings
from embedpipe.artefacts.manifest import (
    FileEntry,
    Lineage,
    Manifest,
    ManifestError,
    Metrics,
    Model,
    StageRecord,
    manifest_details,
)
from embedpipe.artefacts.store import ArtefactStore, open_store, store_root

__all__ = [
    "EXPORT_FORMATS",
    "ArtefactError",
    "ArtefactPathError",
    "ArtefactStore",
    "Embeddings",
    "FileEntry",
    "Lineage",
    "Manifest",
    "ManifestError",
    "Metrics",
    "Model",
    "StageRecord",
    "VersionGoneError",
    "diff_manifests",
    "diff_vectors",
    "export_vectors",
    "format_diff",
    "is_artefact",
    "load",
    "manifest_details",
    "open_store",
    "read_embeddings",
    "read_manifest",
    "sha256_file",
    "store_root",
    "verify",
    "write_vectors_parquet",
    "write_word2vec_binary",
    "write_word2vec_text",
]
