"""Masked-LM artefacts: the encoder beside the input embedding matrix, and `encode(texts)`.

An mlm artefact is an ordinary embedding artefact (`vectors.safetensors` holds the input
token embedding matrix, so `most_similar`, `to_torch`, exports and word similarity work as
for static vectors) plus two files listed with their sha256 in the manifest:

* `encoder.safetensors`: every other weight of `train.mlm.MaskedLM` (float32, by parameter
  name; the token embedding is `vectors.safetensors`, not stored twice);
* `encoder.json`: the architecture (`EncoderConfig`), the special token ids and the file
  holding the token embedding.

`embedpipe.load(...)` returns a `ContextualEmbeddings` for such an artefact. Its `encode`
tokenises with the artefact's own tokenizer (the SentencePiece model when there is one,
else the word tokenizer with the artefact's settings) and returns per-token vectors and a
pooled sentence vector, from any layer. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from embedpipe.artefacts.files import ArtefactError, join, read_bytes
from embedpipe.artefacts.loader import ENCODER_FILE, VECTORS_FILE, VECTORS_KEY, Embeddings
from embedpipe.evaluate import BENCHMARKS, PROBE_WORDS, probe_neighbours
from embedpipe.schemas import SPECIAL_TOKENS, UNK_ID
from embedpipe.workdir import CHECKPOINTS

if TYPE_CHECKING:
    from embedpipe.train.architecture import EncoderConfig
    from embedpipe.train.mlm import MaskedLM

ENCODER_CONFIG_FILE = "encoder.json"
FORMAT = "embedpipe-mlm-encoder/1"
WORD_START = "\u2581"  # SentencePiece's marker of a piece that starts a word
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


class ContextualEmbeddings(Embeddings):
    """The input embedding matrix of a masked LM (an `Embeddings`) and its encoder."""

    def __init__(
        self,
        *args: Any,
        encoder_weights: dict[str, np.ndarray],
        encoder_config: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.encoder_weights = encoder_weights
        self.encoder_config = dict(encoder_config)
        self._model: MaskedLM | None = None

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        arch = self.architecture()
        return (
            f"ContextualEmbeddings(V={len(self)}, dim={self.dim}, layers={arch.layers}, "
            f"heads={arch.heads}{where})"
        )

    def architecture(self) -> EncoderConfig:
        from embedpipe.train.architecture import EncoderConfig

        return EncoderConfig.from_dict(self.encoder_config)

    @property
    def layers(self) -> int:
        return self.architecture().layers

    def lookup(self, token: str) -> int | None:
        """As `Embeddings.lookup`; for a SentencePiece vocabulary also the whole-word piece
        ("▁word"), so `align` finds words that are a single piece."""
        i = super().lookup(token)
        if i is None and self.tokenizer_model is not None and isinstance(token, str):
            i = self._ids.get(WORD_START + token.lower())
        return i

    def most_similar(
        self, word_or_vector: str | np.ndarray, k: int = 10
    ) -> list[tuple[str, float]]:
        """As `Embeddings.most_similar`; a word found through `lookup` (a whole-word piece)
        is excluded from its own neighbours like a word of the vocabulary."""
        if isinstance(word_or_vector, str) and word_or_vector not in self._ids:
            i = self.lookup(word_or_vector)
            if i is not None:
                word_or_vector = self.vocab[i]
        return super().most_similar(word_or_vector, k)

    def to_torch_encoder(self, trainable: bool = True) -> MaskedLM:
        """A new `MaskedLM` holding a copy of the artefact's weights (for fine-tuning)."""
        import torch

        from embedpipe.train.mlm import MaskedLM

        model = MaskedLM(self.architecture())
        state = {k: torch.from_numpy(v.copy()) for k, v in self.encoder_weights.items()}
        state["token.weight"] = torch.from_numpy(self.vectors.copy())
        model.load_state_dict(state)
        model.requires_grad_(trainable)
        return model

    @property
    def model(self) -> MaskedLM:
        """The encoder in eval mode, built once (shared by `encode` calls)."""
        if self._model is None:
            self._model = self.to_torch_encoder(trainable=False).eval()
        return self._model

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The tokens of every text, with the tokenizer the artefact was trained with."""
        texts = list(texts)
        if self.tokenizer_model is not None:
            from embedpipe.text.sentencepiece import encode_pieces_arrow

            self.pieces("")  # loads the processor once
            return encode_pieces_arrow(
                pa.array(texts, pa.string()), self._processor, self.tokenize_config()
            ).to_pylist()
        from embedpipe.text.tokenizer import tokenize_line

        config = self.tokenize_config()
        return [tokenize_line(text, config) for text in texts]

    def token_ids(self, tokens: Sequence[str], max_tokens: int | None = None) -> list[int]:
        """Vocabulary ids of tokens ([UNK] for unknown ones), cut to `max_tokens` (default:
        what fits between [CLS] and [SEP] in the encoder's max_len)."""
        limit = self.architecture().max_len - 2 if max_tokens is None else max_tokens
        return [self._ids.get(t, UNK_ID) for t in tokens[:limit]]

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

        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if isinstance(texts, str):
            texts = [texts]
        n_layers = self.layers
        index = n_layers if layer is None else (layer + n_layers + 1 if layer < 0 else layer)
        if not 0 <= index <= n_layers:
            raise ValueError(f"layer must be in [-{n_layers + 1}, {n_layers}], got {layer}")
        tokens = self.tokenize(texts)
        ids = [np.array(self.token_ids(t), dtype=np.int64) for t in tokens]
        tokens = [t[: len(i)] for t, i in zip(tokens, ids, strict=True)]
        vectors: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(texts)
        pooled = np.zeros((len(texts), self.dim), dtype=np.float32)
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


def with_encoder(emb: Embeddings) -> ContextualEmbeddings:
    """The loaded artefact `emb` with its encoder read (checked against the manifest's sha256)."""
    from safetensors.numpy import load as load_safetensors

    files = emb.manifest.files if emb.manifest is not None and emb.path is not None else {}
    blobs = {}
    for name in (ENCODER_FILE, ENCODER_CONFIG_FILE):
        if name not in files or emb.path is None:
            raise ArtefactError(f"{emb.path}: the manifest does not list {name}")
        data = read_bytes(join(emb.path, name))
        if hashlib.sha256(data).hexdigest() != files[name].sha256:
            raise ArtefactError(
                f"{join(emb.path, name)} was modified after publish: sha256 mismatch"
            )
        blobs[name] = data
    try:
        weights = load_safetensors(blobs[ENCODER_FILE])
        config = json.loads(blobs[ENCODER_CONFIG_FILE])
    except Exception as e:  # safetensors and json raise their own error types
        raise ArtefactError(f"{emb.path}: unreadable encoder files: {e}") from e
    architecture = _architecture(config, join(emb.path, ENCODER_CONFIG_FILE))
    if architecture["vocab_size"] != len(emb) or architecture["width"] != emb.dim:
        raise ArtefactError(
            f"{emb.path}: the encoder expects a {architecture.get('vocab_size')} x "
            f"{architecture.get('width')} input matrix, the artefact has {len(emb)} x {emb.dim}"
        )
    return ContextualEmbeddings(
        emb.vectors, emb.vocab, emb.counts, manifest=emb.manifest, path=emb.path,
        tokenizer_model=emb.tokenizer_model, tokenizer=emb.tokenizer,
        encoder_weights={k: v.astype(np.float32, copy=False) for k, v in weights.items()},
        encoder_config=architecture,
    )  # fmt: skip


def _architecture(config: Any, where: object) -> dict[str, Any]:
    """The "architecture" object of encoder.json `config`, every field checked against
    `EncoderConfig` (ArtefactError naming the file `where` and the field)."""
    import dataclasses

    from embedpipe.train.architecture import EncoderConfig

    if not isinstance(config, dict):
        raise ArtefactError(f"{where} must hold a JSON object, not {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise ArtefactError(
            f"{where}: field 'format' must be {FORMAT!r}, not {config.get('format')!r}"
        )
    architecture = config.get("architecture")
    if not isinstance(architecture, dict):
        raise ArtefactError(f"{where}: field 'architecture' is missing or not an object")
    types = {"int": int, "float": (int, float), "bool": bool, "str": str}
    for field in dataclasses.fields(EncoderConfig):
        value = architecture.get(field.name, field.default)
        if value is dataclasses.MISSING:
            raise ArtefactError(f"{where}: field 'architecture.{field.name}' is missing")
        wanted = types.get(str(field.type), object)
        if (
            not isinstance(value, wanted)
            or (wanted is not bool and isinstance(value, bool))
            or (wanted is int and value < 0)
        ):
            what = "a non-negative int" if wanted is int else f"a {field.type}"
            raise ArtefactError(
                f"{where}: field 'architecture.{field.name}' must be {what}, not {value!r}"
            )
    try:
        EncoderConfig.from_dict(architecture)
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ArtefactError(f"{where}: field 'architecture' is invalid: {e}") from e
    return architecture


def write_encoder_files(train_dir: Path, summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write encoder.safetensors and encoder.json into `out` from a finished mlm run.

    The weights are the final checkpoint's (`model.<name>` tensors) but the token embedding,
    which the artefact holds as its vectors. Returns {artefact file name: path written}.
    """
    from safetensors.torch import save_file

    from embedpipe.train.checkpoint import load_checkpoint

    tensors, state = load_checkpoint(train_dir / CHECKPOINTS / summary["checkpoint"])
    weights = {
        k.removeprefix("model."): v.float().contiguous()
        for k, v in tensors.items()
        if k.startswith("model.") and k != "model.token.weight"
    }
    if not weights or "encoder" not in state:
        raise ValueError(f"{train_dir} holds no masked-LM checkpoint (model.* weights, encoder)")
    paths = {ENCODER_FILE: out / ENCODER_FILE, ENCODER_CONFIG_FILE: out / ENCODER_CONFIG_FILE}
    save_file(weights, str(paths[ENCODER_FILE]))
    config = {
        "format": FORMAT,
        "architecture": state["encoder"],
        "input_embedding": {
            "file": VECTORS_FILE,
            "tensor": VECTORS_KEY,
            "parameter": "token.weight",
        },
        "special_tokens": list(SPECIAL_TOKENS),
    }
    paths[ENCODER_CONFIG_FILE].write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return paths


def evaluate_mlm(
    summary: dict[str, Any],
    vectors: np.ndarray,
    tokens: list[str],
    tokenize: dict[str, Any],
    sp_model: Path | None = None,
) -> dict[str, Any]:
    """The metrics of an mlm artefact: the input matrix's word similarity, analogies and
    neighbours (`evaluate_input_matrix`) and, under "mlm", the held-out masked-LM loss and
    perplexity the training measured (`mlm_metrics`)."""
    model = sp_model.read_bytes() if sp_model is not None and sp_model.is_file() else None
    emb = Embeddings(vectors, tokens, tokenizer=tokenize, tokenizer_model=model)
    return {**evaluate_input_matrix(emb), "mlm": mlm_metrics(summary)}


def mlm_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Held-out masked-LM loss and perplexity from a training summary: before training,
    after the last epoch, and by epoch."""
    heldout = summary.get("heldout") or []
    if not heldout:
        return {"heldout": []}
    first, last = heldout[0], heldout[-1]
    return {
        "heldout_loss": last["loss"],
        "heldout_perplexity": last["perplexity"],
        "initial_heldout_loss": first["loss"],
        "initial_heldout_perplexity": first["perplexity"],
        "heldout_targets": last["targets"],
        "heldout": heldout,
    }


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
