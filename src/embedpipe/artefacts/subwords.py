"""fastText artefacts: the n-gram table beside the word vectors, and vectors for any word.

A fasttext artefact is an ordinary embedding artefact (`vectors.safetensors` holds each
vocabulary word's vector: the mean of its own row and its n-gram rows, what fastText's
`.vec` file holds, so exports, `most_similar` and the benchmarks work as for any vectors)
plus two files listed with their sha256 in the manifest:

* `subwords.safetensors`: tensor "ngrams", float32 (bucket, d), one row per n-gram bucket;
* `subwords.json`: how a word's n-grams find their rows (`minn`, `maxn`, `bucket`, the
  hash and the word boundary markers), checked when loading.

`embedpipe.load(...)` returns a `SubwordEmbeddings` for such an artefact: a word outside
the vocabulary gets the mean of its n-gram rows (fastText's `getWordVector`), so
`emb["unseenword"]` returns a vector. NumPy only: the hashing is `text.subwords`, the
same function training compiles with numba.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from embedpipe.artefacts.files import ArtefactError, join, read_bytes
from embedpipe.artefacts.loader import SUBWORDS_FILE, Embeddings
from embedpipe.text.subwords import BOW, EOW, HASH, word_ngrams

SUBWORDS_CONFIG_FILE = "subwords.json"
NGRAMS_KEY = "ngrams"
FORMAT = "embedpipe-fasttext-subwords/1"


def subwords_config(minn: int, maxn: int, bucket: int) -> dict[str, Any]:
    """The content of `subwords.json` for these settings."""
    return {
        "format": FORMAT,
        "minn": minn,
        "maxn": maxn,
        "bucket": bucket,
        "hash": HASH,
        "begin_of_word": BOW,
        "end_of_word": EOW,
        "ngrams": {"file": SUBWORDS_FILE, "tensor": NGRAMS_KEY},
        "word_vector": "mean of the word's own row and its n-gram rows (vectors.safetensors); "
        "a word outside the vocabulary: the mean of its n-gram rows",
    }


class SubwordEmbeddings(Embeddings):
    """Word vectors (an `Embeddings`) and the n-gram table that composes unseen words.

    `word in emb` still asks whether the word is in the vocabulary; `emb[word]` answers
    for any word with an n-gram, and so do `similarity` and `most_similar`.
    """

    def __init__(self, *args: Any, ngrams: np.ndarray, minn: int, maxn: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ngrams = np.ascontiguousarray(ngrams, dtype=np.float32)
        if self.ngrams.ndim != 2 or self.ngrams.shape[1] != self.dim:
            raise ValueError(
                f"the n-gram table must be (bucket, {self.dim}), got {self.ngrams.shape}"
            )
        self.minn, self.maxn = minn, maxn

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return (
            f"SubwordEmbeddings(V={len(self)}, dim={self.dim}, bucket={self.bucket}, "
            f"minn={self.minn}, maxn={self.maxn}{where})"
        )

    @property
    def bucket(self) -> int:
        return int(self.ngrams.shape[0])

    def ngram_rows(self, word: str) -> np.ndarray:
        """The rows of the n-gram table that `word`'s n-grams hash to (fastText's order)."""
        return word_ngrams(word, self.minn, self.maxn, self.bucket)

    def __getitem__(self, word: str) -> np.ndarray:
        """A vocabulary word's vector; any other word's: the mean of its n-gram rows
        (KeyError for a word too short to have an n-gram)."""
        if word in self._ids:
            return self.vectors[self._ids[word]]
        rows = self.ngram_rows(word)
        if len(rows) == 0:
            raise KeyError(
                f"word {word!r} is not in the vocabulary and has no n-gram of "
                f"{self.minn}..{self.maxn} characters"
            )
        return self.ngrams[rows].mean(axis=0)


def with_subwords(emb: Embeddings) -> SubwordEmbeddings:
    """The loaded artefact `emb` with its n-gram table read (checked against the manifest's
    sha256, and its settings against the table)."""
    from safetensors.numpy import load as load_safetensors

    files = emb.manifest.files if emb.manifest is not None and emb.path is not None else {}
    blobs = {}
    for name in (SUBWORDS_FILE, SUBWORDS_CONFIG_FILE):
        if name not in files or emb.path is None:
            raise ArtefactError(f"{emb.path}: the manifest does not list {name}")
        data = read_bytes(join(emb.path, name))
        if hashlib.sha256(data).hexdigest() != files[name].sha256:
            raise ArtefactError(
                f"{join(emb.path, name)} was modified after publish: sha256 mismatch"
            )
        blobs[name] = data
    try:
        tensors = load_safetensors(blobs[SUBWORDS_FILE])
        config = json.loads(blobs[SUBWORDS_CONFIG_FILE])
    except Exception as e:  # safetensors and json raise their own error types
        raise ArtefactError(f"{emb.path}: unreadable subword files: {e}") from e
    where = join(emb.path, SUBWORDS_CONFIG_FILE)
    settings = _settings(config, where)
    ngrams = tensors.get(NGRAMS_KEY)
    if ngrams is None or ngrams.shape != (settings["bucket"], emb.dim):
        shape = None if ngrams is None else ngrams.shape
        raise ArtefactError(
            f"{join(emb.path, SUBWORDS_FILE)}: tensor {NGRAMS_KEY!r} must be "
            f"({settings['bucket']}, {emb.dim}) as {where} says, got {shape}"
        )
    return SubwordEmbeddings(
        emb.vectors, emb.vocab, emb.counts, manifest=emb.manifest, path=emb.path,
        tokenizer_model=emb.tokenizer_model, tokenizer=emb.tokenizer,
        ngrams=ngrams, minn=settings["minn"], maxn=settings["maxn"],
    )  # fmt: skip


def _settings(config: Any, where: object) -> dict[str, int]:
    """minn, maxn and bucket of a subwords.json, refusing a format or hash we do not know."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ArtefactError(f"{where}: not a {FORMAT} file")
    expected = {"hash": HASH, "begin_of_word": BOW, "end_of_word": EOW}
    for key, value in expected.items():
        if config.get(key) != value:
            raise ArtefactError(f"{where}: {key} is {config.get(key)!r}, expected {value!r}")
    settings = {key: config.get(key) for key in ("minn", "maxn", "bucket")}
    for key, value in settings.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ArtefactError(f"{where}: {key} must be a positive integer, got {value!r}")
    if settings["minn"] > settings["maxn"]:
        raise ArtefactError(f"{where}: minn {settings['minn']} > maxn {settings['maxn']}")
    return settings
