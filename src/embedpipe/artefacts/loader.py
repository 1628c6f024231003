"""Load a published embedding artefact (verified first) and query it.

An embedding artefact is a version directory holding `vectors.safetensors` (tensor "vectors",
float32 (V, d)) and `vocab.parquet` (VOCAB_SCHEMA, row i has id i), both listed in its manifest.
Only safetensors and Parquet are read: nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

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
from embedpipe.artefacts.manifest import MANIFEST, Manifest
from embedpipe.artefacts.store import ArtefactStore, open_store
from embedpipe.schemas import COUNT, ID, PAD, SPECIAL_TOKENS, TOKEN, VOCAB_SCHEMA

if TYPE_CHECKING:
    import torch

    from embedpipe.config import TokenizeConfig

VECTORS_FILE = "vectors.safetensors"
VOCAB_FILE = "vocab.parquet"
VECTORS_KEY = "vectors"
TOKENIZER_FILE = "tokenizer.model"  # SentencePiece model of a SentencePiece artefact
ENCODER_FILE = "encoder.safetensors"  # masked-LM artefacts: see artefacts/encoder.py
SUBWORDS_FILE = "subwords.safetensors"  # fasttext artefacts: see artefacts/subwords.py
RETRIES = 2  # re-resolutions of an alias whose version is deleted while it is read


class Embeddings:
    """A vocabulary with one float32 vector per token, plus counts and the manifest.

    `tokenizer` holds the tokenize settings the vectors were trained with (default: the
    manifest's); `tokenizer_model` the SentencePiece model, if any.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        vocab: Sequence[str],
        counts: np.ndarray | None = None,
        manifest: Manifest | None = None,
        path: Location | None = None,
        tokenizer_model: bytes | None = None,
        tokenizer: Mapping[str, Any] | None = None,
    ) -> None:
        self.vectors: np.ndarray = np.ascontiguousarray(vectors, dtype=np.float32)
        self.vocab: list[str] = list(vocab)
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (V, d), got shape {self.vectors.shape}")
        if len(self.vocab) != self.vectors.shape[0]:
            raise ValueError(f"{len(self.vocab)} tokens but {self.vectors.shape[0]} vector rows")
        if counts is None:
            counts = np.zeros(len(self.vocab), dtype=np.int64)
        self.counts: np.ndarray = np.asarray(counts, dtype=np.int64)
        if self.counts.shape != (len(self.vocab),):
            raise ValueError(
                f"counts must have shape ({len(self.vocab)},), got {self.counts.shape}"
            )
        self.manifest: Manifest | None = manifest
        if tokenizer is None and manifest is not None:
            tokenizer = manifest.tokenizer
        self.tokenizer: dict[str, Any] = dict(tokenizer or {})
        self.path: Location | None = path  # a Path, or a URL for a remote store
        self._ids: dict[str, int] = {token: i for i, token in enumerate(self.vocab)}
        if len(self._ids) != len(self.vocab):
            duplicate = next(t for t, n in Counter(self.vocab).items() if n > 1)
            raise ValueError(f"token {duplicate!r} appears more than once in the vocabulary")
        self._normed: np.ndarray | None = None
        self.tokenizer_model = tokenizer_model
        self._processor: Any = None
        self._tokenize_config: TokenizeConfig | None = None

    @classmethod
    def from_arrays(
        cls, tokens: Sequence[str], vectors: np.ndarray, counts: np.ndarray | None = None
    ) -> Embeddings:
        """Embeddings from in-memory arrays (tests, evaluation, freshly trained tables)."""
        return cls(vectors=vectors, vocab=tokens, counts=counts)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"Embeddings(V={len(self)}, dim={self.dim}{where})"

    def __len__(self) -> int:
        return len(self.vocab)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and word in self._ids

    def __getitem__(self, word: str) -> np.ndarray:
        """The word's vector; for a SentencePiece artefact an out-of-vocabulary word gets the
        mean vector of its pieces (KeyError when none of them is known either)."""
        if word in self._ids or self.tokenizer_model is None:
            return self.vectors[self.index(word)]
        pieces = [self._ids[p] for p in self.pieces(word) if p in self._ids]
        if not pieces:
            raise KeyError(f"word {word!r} and its pieces are not in the vocabulary")
        return self.vectors[pieces].mean(axis=0)

    def pieces(self, text: str) -> list[str]:
        """The SentencePiece pieces of `text`, normalised as at training time."""
        if self.tokenizer_model is None:
            raise ValueError("this artefact has no SentencePiece model")
        if self._processor is None:
            from embedpipe.text.sentencepiece import load_processor

            self._processor = load_processor(self.tokenizer_model)
        from embedpipe.text.sentencepiece import encode_pieces_arrow

        pieces = encode_pieces_arrow(pa.array([text]), self._processor, self.tokenize_config())
        return pieces[0].as_py()

    def tokenize_config(self) -> TokenizeConfig:
        """The tokenize settings of `self.tokenizer` as a TokenizeConfig (keys it does not
        know, such as the model file's name, left out)."""
        if self._tokenize_config is None:
            from embedpipe.config import TokenizeConfig

            known = {f.name for f in dataclasses.fields(TokenizeConfig)}
            options = {k: v for k, v in self.tokenizer.items() if k in known}
            self._tokenize_config = TokenizeConfig(**options)
        return self._tokenize_config

    def index(self, word: str) -> int:
        """The id of `word`; KeyError naming it if it is not in the vocabulary."""
        try:
            return self._ids[word]
        except (KeyError, TypeError):
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} tokens)") from None

    @property
    def dim(self) -> int:
        """The vector dimension d."""
        return int(self.vectors.shape[1])

    @property
    def normed(self) -> np.ndarray:
        """The rows scaled to unit L2 norm (zero rows stay zero), computed once and cached."""
        if self._normed is None:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self._normed = self.vectors / np.where(norms > 0, norms, 1.0).astype(np.float32)
        return self._normed

    def _unit(self, word_or_vector: str | np.ndarray) -> np.ndarray:
        """The unit vector of a word or of a raw vector of length d."""
        if isinstance(word_or_vector, str):
            vector = self[word_or_vector]
        else:
            vector = np.asarray(word_or_vector, dtype=np.float32)
            if vector.shape != (self.dim,):
                raise ValueError(f"query vector must have shape ({self.dim},), got {vector.shape}")
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            raise ValueError("a zero vector has no direction: cosine similarity is undefined")
        return vector / norm

    def most_similar(
        self, word_or_vector: str | np.ndarray, k: int = 10
    ) -> list[tuple[str, float]]:
        """The k tokens of highest cosine similarity, best first.

        Excludes the query word itself and the special tokens, which carry no meaning.
        """
        scores = self.normed @ self._unit(word_or_vector)
        excluded = [self._ids[t] for t in SPECIAL_TOKENS if t in self._ids]
        if isinstance(word_or_vector, str) and word_or_vector in self._ids:
            excluded.append(self._ids[word_or_vector])
        candidates = np.ones(len(self), dtype=bool)
        candidates[excluded] = False
        ids = np.flatnonzero(candidates)
        k = min(k, len(ids))
        if k <= 0:
            return []
        if k < len(ids):
            ids = ids[np.argpartition(-scores[ids], k - 1)[:k]]
        # Best first; ties broken by id so the order is deterministic.
        ids = ids[np.lexsort((ids, -scores[ids]))]
        return [(self.vocab[i], float(scores[i])) for i in ids]

    def similarity(self, a: str | np.ndarray, b: str | np.ndarray) -> float:
        """The cosine similarity of two words (or vectors)."""
        return float(self._unit(a) @ self._unit(b))

    def lookup(self, token: str) -> int | None:
        """The id of `token` as given, else of its lower-cased form, else None.

        Our vocabularies are lower-cased, while a downstream vocabulary may keep case.
        """
        i = self._ids.get(token)
        if i is None and isinstance(token, str):
            i = self._ids.get(token.lower())
        return i

    def align(
        self,
        tokens: Sequence[str],
        unknown: Literal["zeros", "random", "mean"] = "random",
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map a downstream vocabulary onto these vectors: (matrix, found).

        Row i of the float32 (len(tokens), dim) matrix is the vector of tokens[i] (looked up as
        given, then lower-cased); `found` is the boolean mask of rows that were looked up.
        The other rows follow `unknown`:

        * "zeros": zero vectors;
        * "random": independent draws from N(0, s^2 I) with s = m / sqrt(dim), where m is the
          mean L2 norm of the found vectors: E ||row||^2 = m^2, so an unknown row is about as
          long as a known one and pooled features keep their scale (numbers from `seed`);
        * "mean": the mean of the found vectors.

        Special tokens are matched like any token but left out of m and of the mean; when no
        ordinary word is found, the statistics come from all ordinary words of the embedding.
        """
        if unknown not in ("zeros", "random", "mean"):
            raise ValueError(f"unknown must be 'zeros', 'random' or 'mean', got {unknown!r}")
        ids = np.array(
            [-1 if (i := self.lookup(t)) is None else i for t in tokens], dtype=np.int64
        ).reshape(-1)
        found = ids >= 0
        matrix = np.zeros((len(ids), self.dim), dtype=np.float32)
        matrix[found] = self.vectors[ids[found]]
        missing = int((~found).sum())
        if missing == 0 or unknown == "zeros":
            return matrix, found
        special = {self._ids[t] for t in SPECIAL_TOKENS if t in self._ids}
        known = sorted({int(i) for i in ids[found]} - special)
        if not known:
            known = [i for i in range(len(self)) if i not in special]
        reference = self.vectors[known] if known else np.zeros((1, self.dim), np.float32)
        if unknown == "mean":
            matrix[~found] = reference.mean(axis=0)
        else:
            scale = float(np.linalg.norm(reference, axis=1).mean()) / np.sqrt(self.dim)
            rng = np.random.default_rng(seed)
            matrix[~found] = rng.standard_normal((missing, self.dim)) * scale
        return matrix, found

    def to_torch(self, freeze: bool = True) -> tuple[torch.nn.Embedding, dict[str, int]]:
        """An nn.Embedding holding a copy of the vectors, and the token -> id mapping.

        padding_idx is the id of PAD when the vocabulary has it, so its row gets no gradient.
        """
        import torch

        weight = torch.from_numpy(self.vectors.copy())
        layer = torch.nn.Embedding.from_pretrained(
            weight, freeze=freeze, padding_idx=self._ids.get(PAD)
        )
        return layer, dict(self._ids)


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
    if ENCODER_FILE in manifest.files:  # a masked LM: the encoder comes with its vectors
        from embedpipe.artefacts.encoder import with_encoder

        return with_encoder(emb)
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
