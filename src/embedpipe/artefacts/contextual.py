"""Language-model artefacts: a Transformer beside the input embedding matrix.

An mlm or clm artefact is an ordinary embedding artefact (`vectors.safetensors` holds the
input token embedding matrix, so `most_similar`, `to_torch`, exports and word similarity
work as for static vectors) plus two files listed with their sha256 in the manifest:

* `encoder.safetensors`: every other weight of the model (float32, by parameter name; the
  token embedding is `vectors.safetensors`, not stored twice);
* `encoder.json`: the format, the architecture, the special token ids and the file holding
  the token embedding.

The format names the model and the class `embedpipe.load(...)` returns (`with_model`):
"embedpipe-mlm-encoder/1", a masked LM (`encoder.ContextualEmbeddings`, with `encode`);
"embedpipe-clm-decoder/1", a causal LM (`decoder.CausalEmbeddings`, with `encode` and
`generate`); "embedpipe-bilm/1", a bidirectional LSTM LM (`bilm.BiLMEmbeddings`, with
`encode`, a mix of its layers). Both tokenise with the artefact's own tokenizer (the SentencePiece model when
there is one, else the word tokenizer with the artefact's settings). Nothing is unpickled;
torch is imported only when a model is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from embedpipe.artefacts.files import ArtefactError, join, read_bytes
from embedpipe.artefacts.keyed import Embeddings
from embedpipe.artefacts.loader import ENCODER_FILE, VECTORS_FILE, VECTORS_KEY
from embedpipe.schemas import SPECIAL_TOKENS, UNK_ID
from embedpipe.workdir import CHECKPOINTS

if TYPE_CHECKING:
    import torch
    from torch import nn

    from embedpipe.train.architecture import Architecture

ENCODER_CONFIG_FILE = "encoder.json"


class LanguageModelEmbeddings(Embeddings):
    """The input embedding matrix of a Transformer LM (an `Embeddings`) and its model.

    A subclass names its file format, the checkpoint state key of its architecture, the
    architecture and model classes, and how many special tokens frame a text.
    """

    format: ClassVar[str]
    state_key: ClassVar[str]  # where a training checkpoint's state holds the architecture
    framing: ClassVar[int]  # special tokens around a text's tokens ([CLS] ... [SEP]: 2)

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
        self._model: nn.Module | None = None

    @classmethod
    def architecture_class(cls) -> type[Architecture]:
        raise NotImplementedError

    @classmethod
    def model_class(cls) -> type[nn.Module]:
        raise NotImplementedError

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        arch = self.architecture()
        return (
            f"{type(self).__name__}(V={len(self)}, dim={self.dim}, layers={arch.layers}, "
            f"heads={arch.heads}{where})"
        )

    def architecture(self) -> Any:
        return self.architecture_class().from_dict(self.encoder_config)

    @property
    def layers(self) -> int:
        return self.architecture().layers

    def to_torch_model(self, trainable: bool = True) -> nn.Module:
        """A new model holding a copy of the artefact's weights (for fine-tuning)."""
        import torch

        model = self.model_class()(self.architecture())
        state = {k: torch.from_numpy(v.copy()) for k, v in self.encoder_weights.items()}
        state["token.weight"] = torch.from_numpy(self.vectors.copy())
        model.load_state_dict(state)
        model.requires_grad_(trainable)
        return model

    def to_torch_encoder(self, trainable: bool = True) -> nn.Module:
        """The model as a text encoder, for any language model alike: a new copy of the
        artefact's weights (`to_torch_model`) whose `token_vectors(ids, lengths)` turns
        `encoder_inputs` rows into (B, L, `vector_width`) per-token vectors."""
        return self.to_torch_model(trainable)

    def pack_ids(self, ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(batch, lengths): each text's token ids framed as the model was trained to read a
        text ([CLS] first), right-padded with [PAD]; lengths count the real positions."""
        raise NotImplementedError

    def encoder_inputs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, lengths) tensors of texts, tokenised by the artefact itself, cut to what fits
        in the model and framed by `pack_ids`: the input of `to_torch_encoder()`'s
        `token_vectors`."""
        import torch

        _, ids = self.encoded_tokens(texts)
        batch, lengths = self.pack_ids(ids)
        return torch.from_numpy(batch), torch.from_numpy(lengths)

    @property
    def model(self) -> nn.Module:
        """The model in eval mode, built once (shared by `encode` calls)."""
        if self._model is None:
            self._model = self.to_torch_model(trainable=False).eval()
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
        what fits beside the framing special tokens in the model's max_len)."""
        limit = self.architecture().max_len - self.framing if max_tokens is None else max_tokens
        return [self._ids.get(t, UNK_ID) for t in tokens[:limit]]

    def encoded_tokens(
        self, texts: str | Sequence[str]
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        """(tokens, ids) of every text, both cut to what fits in the model."""
        tokens = self.tokenize([texts] if isinstance(texts, str) else texts)
        ids = [np.array(self.token_ids(t), dtype=np.int64) for t in tokens]
        return [t[: len(i)] for t, i in zip(tokens, ids, strict=True)], ids


def model_classes() -> dict[str, type[LanguageModelEmbeddings]]:
    """{format: artefact class} of the language models."""
    from embedpipe.artefacts.bilm import BiLMEmbeddings
    from embedpipe.artefacts.decoder import CausalEmbeddings
    from embedpipe.artefacts.encoder import ContextualEmbeddings

    return {c.format: c for c in (ContextualEmbeddings, CausalEmbeddings, BiLMEmbeddings)}


def with_model(emb: Embeddings) -> LanguageModelEmbeddings:
    """The loaded artefact `emb` with its model read (checked against the manifest's sha256),
    as the class its encoder.json's format names."""
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
    where = join(emb.path, ENCODER_CONFIG_FILE)
    cls = _artefact_class(config, where)
    architecture = _architecture(config, where, cls.architecture_class())
    if architecture["vocab_size"] != len(emb) or architecture["width"] != emb.dim:
        raise ArtefactError(
            f"{emb.path}: the model expects a {architecture.get('vocab_size')} x "
            f"{architecture.get('width')} input matrix, the artefact has {len(emb)} x {emb.dim}"
        )
    return cls(
        emb.vectors, emb.vocab, emb.counts, manifest=emb.manifest, path=emb.path,
        tokenizer_model=emb.tokenizer_model, tokenizer=emb.tokenizer,
        encoder_weights={k: v.astype(np.float32, copy=False) for k, v in weights.items()},
        encoder_config=architecture,
    )  # fmt: skip


def _artefact_class(config: Any, where: object) -> type[LanguageModelEmbeddings]:
    """The class encoder.json's "format" names (ArtefactError naming the file otherwise)."""
    if not isinstance(config, dict):
        raise ArtefactError(f"{where} must hold a JSON object, not {type(config).__name__}")
    classes = model_classes()
    if config.get("format") not in classes:
        known = " or ".join(map(repr, classes))
        raise ArtefactError(
            f"{where}: field 'format' must be {known}, not {config.get('format')!r}"
        )
    return classes[config["format"]]


def _architecture(config: dict[str, Any], where: object, cls: type[Architecture]) -> dict[str, Any]:
    """The "architecture" object of encoder.json `config`, every field checked against the
    dataclass `cls` (ArtefactError naming the file `where` and the field)."""
    architecture = config.get("architecture")
    if not isinstance(architecture, dict):
        raise ArtefactError(f"{where}: field 'architecture' is missing or not an object")
    types = {"int": int, "float": (int, float), "bool": bool, "str": str}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
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
        cls.from_dict(architecture)
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ArtefactError(f"{where}: field 'architecture' is invalid: {e}") from e
    return architecture


def write_model_files(
    train_dir: Path, summary: dict[str, Any], out: Path, cls: type[LanguageModelEmbeddings]
) -> dict[str, Path]:
    """Write encoder.safetensors and encoder.json (format `cls.format`) into `out` from a
    finished run of `cls`'s model.

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
    if not weights or cls.state_key not in state:
        raise ValueError(
            f"{train_dir} holds no {cls.format} checkpoint (model.* weights, {cls.state_key})"
        )
    paths = {ENCODER_FILE: out / ENCODER_FILE, ENCODER_CONFIG_FILE: out / ENCODER_CONFIG_FILE}
    save_file(weights, str(paths[ENCODER_FILE]))
    config = {
        "format": cls.format,
        "architecture": state[cls.state_key],
        "input_embedding": {
            "file": VECTORS_FILE,
            "tensor": VECTORS_KEY,
            "parameter": "token.weight",
        },
        "special_tokens": list(SPECIAL_TOKENS),
    }
    paths[ENCODER_CONFIG_FILE].write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return paths
