"""A small GPT-style decoder and its next-token objective: model and packing.

An example is `[CLS] a`: [CLS] begins every sequence (GPT's beginning of text). The model
reads `[CLS] a_1 .. a_(n-1)` and predicts `a_1 .. a_n`, each position the next token
(`causal_pack`). The input is the sum of token and learned position embeddings; then causal
pre-LayerNorm layers (`transformer.TransformerLayer(causal=True)`) and a final LayerNorm;
the output layer is the token embedding (tied by default) with no bias: GPT-2's layout.
Rows are right-padded and need no mask: no real position attends to a later one.

Only ordinary tokens are targets (never [PAD], [UNK], [CLS], [SEP], [MASK]), as for the
masked LM, so the held-out perplexity compares with a unigram model of the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedpipe.train.architecture import BOS_ID, PAD_ID, DecoderConfig
from embedpipe.train.transformer import (
    IGNORE,
    N_SPECIAL,
    TransformerLayer,
    init_parameters,
    layer_index,
    target_loss,
)


class CausalLM(nn.Module):
    """Token + position embeddings, causal Transformer layers and a (tied) output layer."""

    def __init__(self, config: DecoderConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.token = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_id)
        self.position = nn.Embedding(config.max_len, width)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(width, config.heads, config.ffn, config.dropout, causal=True)
            for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(width)
        self.output = None if config.tie_output else nn.Linear(width, config.vocab_size, bias=False)
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int) -> None:
        """N(0, 0.02) weights, zero biases, unit norms, a zero [PAD] row; the same for a seed."""
        init_parameters(self, seed, self.config.pad_id)

    def hidden_states(self, ids: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """[embeddings, after layer 1, ..., after layer `upto` (default all)], each (B, L, d);
        position t depends on ids[:, :t + 1] only. The last state is not yet through
        `final_norm`."""
        length = ids.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequences of {length} tokens exceed max_len {self.config.max_len}")
        positions = torch.arange(length, device=ids.device)
        x = self.drop(self.token(ids) + self.position(positions))
        states = [x]
        for layer in self.layers[: self.config.layers if upto is None else upto]:
            x = layer(x)
            states.append(x)
        return states

    def encode(self, ids: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Token vectors (B, L, d) after `layer` layers (0: the embeddings; default and -1:
        the last), through the final LayerNorm so every layer comes at the same scale."""
        index = layer_index(layer, self.config.layers)
        return self.final_norm(self.hidden_states(ids, upto=index)[index])

    @property
    def vector_width(self) -> int:
        """The width of `token_vectors`."""
        return self.config.width

    def token_vectors(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L, width) last-layer vectors of right-padded `[CLS] text` rows: the text-encoder
        interface the three language models share. `lengths` is not needed (no real position
        reads a later one, so padding is never read) but taken for that shared signature."""
        return self.encode(ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token scores of final hidden states (..., d) -> (..., V)."""
        weight = self.token.weight if self.output is None else self.output.weight
        return F.linear(hidden, weight)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over the target positions (labels != IGNORE)."""
        hidden = self.encode(ids)
        return target_loss(hidden, labels, self.logits, hidden[:1, 0])


def causal_pack(pieces: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, labels, lengths) of next-token rows: inputs `[CLS] a[:-1]`, labels `a` where
    a token is ordinary (IGNORE elsewhere), right-padded with [PAD] / IGNORE to the longest."""
    lengths = np.array([len(a) for a in pieces], dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    inputs = np.full((len(pieces), width), PAD_ID, dtype=np.int64)
    labels = np.full((len(pieces), width), IGNORE, dtype=np.int64)
    for row, a in enumerate(pieces):
        n = len(a)
        if n == 0:
            continue
        inputs[row, 0] = BOS_ID
        inputs[row, 1:n] = a[:-1]
        labels[row, :n] = np.where(np.asarray(a) >= N_SPECIAL, a, IGNORE)
    return inputs, labels, lengths
