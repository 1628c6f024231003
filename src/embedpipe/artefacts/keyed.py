"""`Embeddings`: a vocabulary with one vector per token, queried as gensim's KeyedVectors is.

Reading an artefact from disk is `artefacts.loader`; this module only needs numpy (torch,
gensim, scipy and the tokenizers are imported inside the methods that need them).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from embedpipe.artefacts.files import Location
from embedpipe.artefacts.manifest import Manifest
from embedpipe.schemas import PAD, SPECIAL_TOKENS
from embedpipe.text.normalise import normalise_word

if TYPE_CHECKING:
    import torch
    from gensim.models import KeyedVectors

    from embedpipe.artefacts.align import Unknown
    from embedpipe.config import TokenizeConfig
    from embedpipe.evaluate.analogy import Analogy, Section
    from embedpipe.evaluate.similarity import Correlation

WORD_START = "\u2581"  # SentencePiece's marker of a piece that starts a word
GENSIM_RESTRICT = 300_000  # gensim's default restrict_vocab for the evaluate_* methods

Query = str | np.ndarray
Terms = Query | Sequence[Query | tuple[Query, float]] | None


class Embeddings:
    """A vocabulary with one float32 vector per token, plus counts and the manifest.

    Lookup rule, the same in every method that takes a word (`lookup`, `index`, `in`,
    `has_index_for`, `[]`, `get_vector`, `most_similar`, `similarity`, `align`): the word as
    given if it is a token; else the word normalised as the artefact's tokenizer wrote its
    tokens (`tokenizer` settings: NFKC, lower-casing, digits; defaults when none are
    recorded), so "King" finds "king" in a lower-cased vocabulary; else, for a SentencePiece
    artefact, the whole-word piece "▁king". For a SentencePiece artefact `[]`, `get_vector`,
    `most_similar` and `similarity` also take a word that is none of these: its vector is the
    mean of its known pieces (`in` and `has_index_for` are False for it).
    `key_to_index` and `index_to_key` are the raw vocabulary, as in gensim.

    Special tokens ([PAD], [UNK], ...) carry no meaning: they are never neighbours, and
    `restrict_vocab` counts words after them. Results equal gensim's on `to_gensim()` (which
    leaves them out, as the exports do). `evaluate_word_pairs` and `evaluate_word_analogies`
    match benchmark words by gensim's rule instead: with `case_insensitive`, both sides
    upper-cased, the first (most frequent) case variant taking the word.

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
        self._words: np.ndarray | None = None  # ids of the words, and of the special tokens
        self._specials: np.ndarray = np.zeros(0, np.int64)
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

    @property
    def dim(self) -> int:
        """The vector dimension d."""
        return int(self.vectors.shape[1])

    @property
    def vector_size(self) -> int:
        """The vector dimension d (gensim's name)."""
        return self.dim

    @property
    def index_to_key(self) -> list[str]:
        """The token of every row, by id (gensim's name for `vocab`)."""
        return self.vocab

    @property
    def key_to_index(self) -> Mapping[str, int]:
        """Token -> id, exact tokens only (a read-only view)."""
        return MappingProxyType(self._ids)

    def lookup(self, word: str) -> int | None:
        """The id `word` resolves to by the lookup rule, else None."""
        if not isinstance(word, str):
            return None
        i = self._ids.get(word)
        if i is None:
            key = normalise_word(word, self.tokenizer)
            i = self._ids.get(key)
            if i is None and self.tokenizer_model is not None:
                i = self._ids.get(WORD_START + key)
        return i

    def has_index_for(self, word: str) -> bool:
        """Whether `word` resolves to a row of `vectors`."""
        return self.lookup(word) is not None

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self.has_index_for(word)

    def index(self, word: str) -> int:
        """The id `word` resolves to; KeyError naming it if none."""
        i = self.lookup(word)
        if i is None:
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} tokens)")
        return i

    def __getitem__(self, word: str | Sequence[str]) -> np.ndarray:
        """The vector of a word (read-only), or the (n, d) vectors of a list of words.

        For a SentencePiece artefact, a word that does not resolve gets the mean vector of
        its pieces (KeyError when none of them is known either)."""
        if not isinstance(word, str) and isinstance(word, Sequence):
            return np.vstack([self[w] for w in word]).reshape(-1, self.dim)
        i = self.lookup(word)
        if i is not None:
            row = self.vectors[i]
            row.flags.writeable = False
            return row
        if self.tokenizer_model is None or not isinstance(word, str):
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} tokens)")
        pieces = [self._ids[p] for p in self.pieces(word) if p in self._ids]
        if not pieces:
            raise KeyError(f"word {word!r} and its pieces are not in the vocabulary")
        return self.vectors[pieces].mean(axis=0)

    def get_vector(self, word: str, norm: bool = False) -> np.ndarray:
        """The vector of `word` (`[]`), of unit length when `norm` (zero stays zero)."""
        vector = self[word]
        if not norm:
            return vector
        length = float(np.linalg.norm(vector))
        return vector / length if length > 0 else vector.copy()

    def pieces(self, text: str) -> list[str]:
        """The SentencePiece pieces of `text`, normalised as at training time."""
        if self.tokenizer_model is None:
            raise ValueError("this artefact has no SentencePiece model")
        import pyarrow as pa

        from embedpipe.text.sentencepiece import encode_pieces_arrow, load_processor

        if self._processor is None:
            self._processor = load_processor(self.tokenizer_model)
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

    @property
    def normed(self) -> np.ndarray:
        """The rows scaled to unit L2 norm (zero rows stay zero), computed once and cached."""
        if self._normed is None:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self._normed = self.vectors / np.where(norms > 0, norms, 1.0).astype(np.float32)
        return self._normed

    def word_ids(self, restrict_vocab: int | None = None) -> np.ndarray:
        """The ids of the words (every token but the special ones), the first
        `restrict_vocab` of them when given (the vocabulary is sorted by frequency)."""
        if self._words is None:
            special = set(SPECIAL_TOKENS)
            is_word = np.fromiter((t not in special for t in self.vocab), bool, len(self))
            self._words, self._specials = np.flatnonzero(is_word), np.flatnonzero(~is_word)
        return self._words if restrict_vocab is None else self._words[: max(restrict_vocab, 0)]

    def _unit(self, word_or_vector: Query) -> np.ndarray:
        """The unit vector of a word or of a raw vector of length d."""
        vector = self[word_or_vector] if isinstance(word_or_vector, str) else word_or_vector
        vector = self._checked(vector)
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            raise ValueError("a zero vector has no direction: cosine similarity is undefined")
        return vector / norm

    def _checked(self, vector: object) -> np.ndarray:
        """`vector` as float32 of shape (d,), else ValueError/TypeError naming what it got."""
        if not isinstance(vector, np.ndarray):
            raise TypeError(f"expected a word or a numpy vector, got {type(vector).__name__}")
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise ValueError(f"query vector must have shape ({self.dim},), got {vector.shape}")
        return vector

    def _query(self, positive: Terms, negative: Terms) -> tuple[np.ndarray, list[int]]:
        """gensim's query of `most_similar`: the unit weighted mean of the terms (words as
        unit vectors, vectors as given; weight 1 for positive, -1 for negative terms unless a
        (term, weight) pair says otherwise), and the ids of the words among them."""
        terms = [*_terms(positive, 1.0), *_terms(negative, -1.0)]
        if not terms:
            raise ValueError("most_similar needs at least one positive or negative term")
        total = np.zeros(self.dim, dtype=np.float32)
        ids: list[int] = []
        for term, weight in terms:
            if isinstance(term, str):
                total += weight * self.get_vector(term, norm=True)
                if (i := self.lookup(term)) is not None:
                    ids.append(i)
            else:
                total += weight * self._checked(term)
        norm = float(np.linalg.norm(total))
        if norm == 0.0:
            raise ValueError("the query is a zero vector: cosine similarity is undefined")
        return total / norm, ids

    def most_similar(
        self,
        positive: Terms = None,
        negative: Terms = None,
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]] | np.ndarray:
        """The `topn` words of highest cosine similarity to the query, best first, as gensim.

        `positive` and `negative`: a word, a vector, or a list of words, vectors or
        (word or vector, weight) pairs; the query is the unit mean of the weighted terms.
        The words of the query and the special tokens are never returned; candidates are the
        first `restrict_vocab` words when given; ties go to the lower id. `topn=None` gives
        the cosine of every row of `vectors` (up to the last candidate) as an array.
        """
        if topn is not None and topn < 1:
            return []
        query, exclude = self._query(positive, negative)
        candidates = self.word_ids(restrict_vocab)
        end = int(candidates[-1]) + 1 if len(candidates) else 0
        scores = self.normed[:end] @ query
        if topn is None:
            return scores
        dropped = np.union1d(self._specials, np.asarray(exclude, dtype=np.int64))
        dropped = dropped[dropped < end]
        scores[dropped] = -np.inf  # the other rows of [0, end) are the candidates
        k = min(topn, end - len(dropped))
        if k <= 0:
            return []
        ids = np.argpartition(-scores, k - 1)[:k] if k < end else np.arange(end)
        ids = ids[np.lexsort((ids, -scores[ids]))]
        return [(self.vocab[i], float(scores[i])) for i in ids]

    def similarity(self, a: Query, b: Query) -> float:
        """The cosine similarity of two words (or vectors)."""
        return float(self._unit(a) @ self._unit(b))

    def align(
        self,
        tokens: Sequence[str],
        unknown: Unknown = "random",
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map a downstream vocabulary onto these vectors: (matrix, found); see
        `artefacts.align.align`."""
        from embedpipe.artefacts.align import align

        return align(self, tokens, unknown, seed)

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

    def to_gensim(self, include_special: bool = False) -> KeyedVectors:
        """A gensim KeyedVectors holding a copy of the vectors, with counts as the "count"
        attribute; the special tokens are left out unless `include_special` (as in the
        exports). Needs gensim: `pip install 'embedpipe[gensim]'`."""
        from embedpipe.extras import require

        KeyedVectors = require("gensim.models", "to_gensim()").KeyedVectors  # noqa: N806
        ids = np.arange(len(self)) if include_special else self.word_ids()
        kv = KeyedVectors(self.dim, dtype=np.float32)
        kv.add_vectors([self.vocab[i] for i in ids], self.vectors[ids])
        kv.allocate_vecattrs(["count"], [np.int64])
        kv.expandos["count"][:] = self.counts[ids]  # what set_vecattr does, key by key
        return kv

    def evaluate_word_pairs(
        self,
        pairs: str | os.PathLike[str] | Sequence[tuple[str, str, float]],
        delimiter: str = "\t",
        restrict_vocab: int = GENSIM_RESTRICT,
        case_insensitive: bool = True,
        dummy4unknown: bool = False,
    ) -> tuple[Correlation, Correlation, float]:
        """gensim's ((Pearson r, p), (Spearman rho, p), % of pairs with an unknown word) on a
        word-pairs file (`#` comments) or (word1, word2, score) rows, among the first
        `restrict_vocab` words (`evaluate.similarity.word_pair_correlations`). A malformed
        line is an error naming the file and line, where gensim skips it."""
        from embedpipe.evaluate.similarity import read_pairs, word_pair_correlations

        path = isinstance(pairs, (str, os.PathLike))
        rows = read_pairs(pairs, delimiter) if path else list(pairs)
        ids = self.word_ids(restrict_vocab)
        vectors = _rows(self.vectors, ids)
        words = [self.vocab[i] for i in ids]
        source = os.fspath(pairs) if path else "the pairs given"
        return word_pair_correlations(
            vectors, words, rows, case_insensitive, dummy4unknown, source=source
        )

    def evaluate_word_analogies(
        self,
        analogies: str | os.PathLike[str] | Sequence[Analogy],
        restrict_vocab: int = GENSIM_RESTRICT,
        case_insensitive: bool = True,
        dummy4unknown: bool = False,
    ) -> tuple[float, list[Section]]:
        """gensim's (accuracy, sections) of 3CosAdd on a questions-words file or rows of
        (section, a, b, c, d), among the first `restrict_vocab` words (see
        `evaluate.analogy.analogy_sections`). A malformed line is an error naming the file
        and line, where gensim skips it."""
        from embedpipe.evaluate.analogy import analogy_sections, read_analogies

        path = isinstance(analogies, (str, os.PathLike))
        questions = read_analogies(analogies) if path else list(analogies)
        return analogy_sections(
            self.vectors, self.vocab, questions, restrict_vocab, case_insensitive, dummy4unknown
        )


def _terms(value: Terms, weight: float) -> list[tuple[Any, float]]:
    """The (term, weight) pairs of a `most_similar` argument, as gensim reads it."""
    if value is None:
        return []
    if isinstance(value, str) or (isinstance(value, np.ndarray) and value.ndim == 1):
        value = [value]
    return [(t[0], float(t[1])) if isinstance(t, tuple) else (t, weight) for t in value]


def _rows(matrix: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """matrix[ids], as a view when the ids are consecutive (the words follow the specials)."""
    if len(ids) and ids[-1] - ids[0] == len(ids) - 1:
        return matrix[int(ids[0]) : int(ids[-1]) + 1]
    return matrix[ids]
