"""Masked-LM artefacts: the encoder beside the input embedding matrix, and `encode(texts)`.

An mlm artefact is a language-model artefact (`contextual`: `encoder.safetensors` and
`encoder.json` beside the vectors, format "embedpipe-mlm-encoder/1"); `embedpipe.load(...)`
returns a `ContextualEmbeddings` for it. Its `encode` returns per-token vectors and a pooled
sentence vector, from any layer. The publish-time evaluation of both language models (the
input matrix's word benchmarks, the held-out loss) is here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedpipe.artefacts.contextual import (
    ENCODER_CONFIG_FILE,
    LanguageModelEmbeddings,
    write_model_files,
)
from embedpipe.artefacts.keyed import WORD_START, Embeddings
from embedpipe.artefacts.loader import ENCODER_FILE
from embedpipe.evaluate import BENCHMARKS, PROBE_WORDS, probe_neighbours
from embedpipe.schemas import SPECIAL_TOKENS

if TYPE_CHECKING:
    from torch import nn

    from embedpipe.train.mlm import EncoderConfig, MaskedLM

__all__ = [
    "ENCODER_CONFIG_FILE",
    "ENCODER_FILE",
    "FORMAT",
    "ContextualEmbeddings",
    "Encoded",
    "evaluate_input_matrix",
    "evaluate_language_model",
    "heldout_metrics",
    "word_view",
    "write_encoder_files",
]

FORMAT = "embedpipe-mlm-encoder/1"
Pool = Literal["cls", "mean"]


@dataclass
class Encoded:
    """What `encode` returns for a list of texts.

    `tokens[i]`: the tokens of text i as the encoder saw them (no [CLS]/[SEP]);
    `vectors[i]`: float32 (len(tokens[i]), d), one contextual vector per token;
    `pooled`: float32 (len(texts), d), the [CLS] vector or the mean of the token vectors.
    """

    tokens: list[list[str]]
    vectors: list[np.ndarray]
    pooled: np.ndarray
    layer: int
    pool: str


class ContextualEmbeddings(LanguageModelEmbeddings):
    """The input embedding matrix of a masked LM (an `Embeddings`) and its encoder."""

    format = FORMAT
    state_key = "encoder"
    framing = 2  # [CLS] tokens [SEP]

    @classmethod
    def architecture_class(cls) -> type[EncoderConfig]:
        from embedpipe.train.architecture import EncoderConfig

        return EncoderConfig

    @classmethod
    def model_class(cls) -> type[nn.Module]:
        from embedpipe.train.mlm import MaskedLM

        return MaskedLM

    def to_torch_encoder(self, trainable: bool = True) -> MaskedLM:
        """A new `MaskedLM` holding a copy of the artefact's weights (for fine-tuning)."""
        return self.to_torch_model(trainable)  # type: ignore[return-value]

    def pack_ids(self, ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(batch, lengths) of `[CLS] text [SEP]` rows (one segment), right-padded."""
        from embedpipe.train.mlm import pack

        batch, _, lengths = pack(ids, [None] * len(ids))
        return batch, lengths

    def encode(
        self,
        texts: str | Sequence[str],
        layer: int | None = None,
        pool: Pool = "cls",
        batch_size: int = 64,
    ) -> Encoded:
        """Contextual vectors of texts: per token, and pooled per text.

        Each text is encoded alone as `[CLS] tokens [SEP]` (cut to the encoder's max_len).
        `layer`: 0 is the embedding layer, k the output of layer k, None or -1 the last; all
        pass through the final LayerNorm. `pool`: "cls" (the [CLS] position) or "mean" (the
        mean of the text's token vectors; the [CLS] vector for a text with no tokens).
        """
        import torch

        from embedpipe.train.mlm import pack, padding_mask
        from embedpipe.train.transformer import layer_index

        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        index = layer_index(layer, self.layers)
        tokens, ids = self.encoded_tokens(texts)
        vectors: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(ids)
        pooled = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = np.argsort([len(i) for i in ids], kind="stable")
        model = self.model
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch, segments, lengths = pack([ids[r] for r in rows], [None] * len(rows))
                mask = torch.from_numpy(padding_mask(lengths, batch.shape[1]))
                out = model.encode(
                    torch.from_numpy(batch), torch.from_numpy(segments), mask, index
                ).numpy()
                for j, r in enumerate(rows):
                    n = len(ids[r])
                    vectors[r] = out[j, 1 : 1 + n].copy()
                    pooled[r] = out[j, 0] if pool == "cls" or n == 0 else out[j, 1 : 1 + n].mean(0)
        return Encoded(tokens, vectors, pooled, index, pool)


def write_encoder_files(train_dir: Path, summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """encoder.safetensors and encoder.json of a finished mlm run (`write_model_files`)."""
    return write_model_files(train_dir, summary, out, ContextualEmbeddings)


def evaluate_language_model(
    kind: str,
    summary: dict[str, Any],
    vectors: np.ndarray,
    tokens: list[str],
    tokenize: dict[str, Any],
    sp_model: Path | None = None,
) -> dict[str, Any]:
    """The metrics of an mlm, clm or bilm artefact: the input matrix's word similarity, analogies
    and neighbours (`evaluate_input_matrix`) and, under `kind`, the held-out loss and
    perplexity the training measured (`heldout_metrics`)."""
    model = sp_model.read_bytes() if sp_model is not None and sp_model.is_file() else None
    emb = Embeddings(vectors, tokens, tokenizer=tokenize, tokenizer_model=model)
    return {**evaluate_input_matrix(emb), kind: heldout_metrics(summary)}


def heldout_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Held-out loss and perplexity from a training summary: before training, after the
    last epoch, and by epoch; with the unigram model's perplexity on the same targets."""
    heldout = summary.get("heldout") or []
    if not heldout:
        return {"heldout": []}
    first, last = heldout[0], heldout[-1]
    metrics = {
        "heldout_loss": last["loss"],
        "heldout_perplexity": last["perplexity"],
        "initial_heldout_loss": first["loss"],
        "initial_heldout_perplexity": first["perplexity"],
        "heldout_targets": last["targets"],
        "heldout": heldout,
    }
    if "unigram_perplexity" in last:
        metrics["unigram_heldout_perplexity"] = last["unigram_perplexity"]
    return metrics


def word_view(emb: Embeddings) -> tuple[np.ndarray, list[str]]:
    """The artefact's vectors as words: for SentencePiece, the whole-word pieces ("▁dog" as
    "dog"); otherwise the vocabulary itself (specials left out either way)."""
    if emb.tokenizer_model is None:
        keep = [i for i, t in enumerate(emb.vocab) if t not in SPECIAL_TOKENS]
        return emb.vectors[keep], [emb.vocab[i] for i in keep]
    keep = [i for i, t in enumerate(emb.vocab) if t.startswith(WORD_START) and len(t) > 1]
    words = [emb.vocab[i][1:] for i in keep]
    first: dict[str, int] = {}
    for j, w in enumerate(words):
        first.setdefault(w, j)
    rows = sorted(first.values())
    return emb.vectors[[keep[j] for j in rows]], [words[j] for j in rows]


def composed_view(emb: Embeddings, words: set[str]) -> tuple[np.ndarray, list[str]]:
    """`word_view` plus, for a SentencePiece artefact, a vector for each of `words` that is
    not a whole-word piece: the mean of its pieces (words with no known piece are left out)."""
    vectors, known = word_view(emb)
    if emb.tokenizer_model is None:
        return vectors, known
    extra, extra_vectors = [], []
    for word in sorted(words - set(known)):
        try:
            extra_vectors.append(emb[word])
        except KeyError:
            continue
        extra.append(word)
    if not extra:
        return vectors, known
    return np.vstack([vectors, np.stack(extra_vectors)]), known + extra


def evaluate_input_matrix(emb: Embeddings) -> dict[str, Any]:
    """Every declared benchmark and the probe neighbours on the input embedding matrix.

    Word vocabulary: as for static vectors. SentencePiece: words are the whole-word pieces,
    and a similarity-benchmark or probe word that is not one gets the mean vector of its
    pieces (`Embeddings.__getitem__`), so similarity covers every word with a known piece;
    analogy questions are answered among the whole-word pieces only.
    """
    vectors, words = word_view(emb)
    wanted = set(PROBE_WORDS).union(*(b.words() for b in BENCHMARKS))
    all_vectors, all_words = composed_view(emb, wanted)
    results: dict[str, Any] = {
        b.name: b.evaluate(all_vectors, all_words)
        if b.kind == "similarity"
        else b.evaluate(vectors, words)
        for b in BENCHMARKS
    }
    results["neighbours"] = probe_neighbours(all_vectors, all_words)
    return results
