"""biLM artefacts: the LSTM stacks beside the input embedding matrix, and `encode(texts, mix)`.

A bilm artefact is a language-model artefact (`contextual`: `encoder.safetensors` and
`encoder.json` beside the vectors, format "embedpipe-bilm/1"); `embedpipe.load(...)` returns
a `BiLMEmbeddings` for it. `encode_layers` gives every token's ELMo layers (the embedding
duplicated, then each LSTM layer's forward and backward states side by side); `encode`
mixes them: the plain average by default, or softmax-normalised scalar weights times gamma
(ELMo's task-specific combination; `train.bilm.ScalarMix` learns them). Texts are read as
the model was trained: `[CLS] tokens [SEP]`. torch is imported only when a model is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedpipe.artefacts.contextual import LanguageModelEmbeddings, write_model_files

if TYPE_CHECKING:
    from torch import nn

    from embedpipe.train.architecture import BidirectionalConfig
    from embedpipe.train.bilm import BiLM

FORMAT = "embedpipe-bilm/1"


@dataclass
class MixedLayers:
    """What `encode` returns for a list of texts.

    `tokens[i]`: the tokens of text i as the model saw them (no [CLS]/[SEP]);
    `vectors[i]`: float32 (len(tokens[i]), 2 * dim), one mixed vector per token;
    `factors`: the (layers + 1,) factors applied to the layers (gamma * softmax(weights)).
    """

    tokens: list[list[str]]
    vectors: list[np.ndarray]
    factors: np.ndarray


class BiLMEmbeddings(LanguageModelEmbeddings):
    """The input embedding matrix of a biLM (an `Embeddings`) and its LSTM stacks."""

    format = FORMAT
    state_key = "bilm"
    framing = 2  # [CLS] tokens [SEP]

    @classmethod
    def architecture_class(cls) -> type[BidirectionalConfig]:
        from embedpipe.train.architecture import BidirectionalConfig

        return BidirectionalConfig

    @classmethod
    def model_class(cls) -> type[nn.Module]:
        from embedpipe.train.bilm import BiLM

        return BiLM

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        arch = self.architecture()
        return (
            f"BiLMEmbeddings(V={len(self)}, dim={self.dim}, layers={arch.layers}, "
            f"hidden={arch.hidden}{where})"
        )

    def to_torch_bilm(self, trainable: bool = True) -> BiLM:
        """A new `BiLM` holding a copy of the artefact's weights (for fine-tuning)."""
        return self.to_torch_model(trainable)  # type: ignore[return-value]

    def pack_ids(self, ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(batch, lengths) of `[CLS] text [SEP]` rows, right-padded."""
        from embedpipe.train.bilm import bilm_pack

        batch, _, lengths = bilm_pack(ids)
        return batch, lengths

    def encode_layers(
        self, texts: str | Sequence[str], batch_size: int = 64
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        """(tokens, layers): layers[i] is float32 (layers + 1, len(tokens[i]), 2 * dim),
        text i's ELMo layers. Each text is read alone (cut to the model's max_len)."""
        import torch

        tokens, ids = self.encoded_tokens(texts)
        depth, width = self.layers + 1, 2 * self.dim
        layers = [np.zeros((depth, 0, width), np.float32)] * len(ids)
        order = np.argsort([len(i) for i in ids], kind="stable")
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch, lengths = self.pack_ids([ids[r] for r in rows])
                states = self.model.layer_states(
                    torch.from_numpy(batch), torch.from_numpy(lengths)
                ).numpy()
                for j, r in enumerate(rows):
                    layers[r] = states[:, j, 1 : 1 + len(ids[r])].copy()
        return tokens, layers

    def encode(
        self,
        texts: str | Sequence[str],
        mix: Sequence[float] | np.ndarray | None = None,
        gamma: float = 1.0,
        batch_size: int = 64,
    ) -> MixedLayers:
        """Per-token vectors of texts: gamma * sum_k softmax(mix)_k * layer_k; `mix` None:
        the plain average of the layers (times gamma). `mix` has one weight per layer
        (layers + 1, the embedding layer first)."""
        from embedpipe.train.bilm import mix_weights

        factors = mix_weights(None if mix is None else np.asarray(mix), self.layers + 1, gamma)
        factors_np = factors.numpy().astype(np.float32)
        tokens, layers = self.encode_layers(texts, batch_size)
        vectors = [np.tensordot(factors_np, states, axes=1) for states in layers]
        return MixedLayers(tokens, vectors, factors_np)


def write_bilm_files(train_dir: Path, summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """encoder.safetensors and encoder.json of a finished bilm run (`write_model_files`)."""
    return write_model_files(train_dir, summary, out, BiLMEmbeddings)
