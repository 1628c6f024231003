"""A small BERT-style encoder and its masked-LM objective: model, masking and packing.

An example is `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` (`pack`): segment id 0 up to and
including the first [SEP], 1 after it. The input is the sum of token, position and segment
embeddings, normalised; then pre-LayerNorm Transformer layers (`transformer.TransformerLayer`:
attention through `scaled_dot_product_attention`, padded keys masked out) and a final
LayerNorm. The masked-LM head (dense, GELU, LayerNorm, then the output layer, tied to the
token embedding by default) runs only on the target positions, so its (targets x
vocabulary) logits stay small.

`mask_tokens` chooses targets among ordinary tokens only (never [PAD], [UNK], [CLS], [SEP],
[MASK]): each with probability `mask_prob`; a target's input becomes [MASK] (80%), a random
word (10%) or stays as it is (10%), BERT's recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedpipe.train.architecture import (  # part of this module's API
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    UNK_ID,  # noqa: F401 (re-exported)
    EncoderConfig,
)
from embedpipe.train.transformer import (
    IGNORE,
    N_SPECIAL,
    TransformerLayer,
    init_parameters,
    layer_index,
    target_loss,
)


class MaskedLM(nn.Module):
    """Token + position + segment embeddings, a Transformer encoder and a masked-LM head."""

    def __init__(self, config: EncoderConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.token = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_id)
        self.position = nn.Embedding(config.max_len, width)
        self.segment = nn.Embedding(config.segments, width)
        self.embedding_norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(config.width, config.heads, config.ffn, config.dropout)
            for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(width)
        self.head_dense = nn.Linear(width, width)
        self.head_norm = nn.LayerNorm(width)
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.output = None if config.tie_output else nn.Linear(width, config.vocab_size, bias=False)
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int) -> None:
        """N(0, 0.02) weights, zero biases, unit norms, a zero [PAD] row; the same for a seed."""
        init_parameters(self, seed, self.config.pad_id)

    def hidden_states(
        self,
        ids: torch.Tensor,
        segments: torch.Tensor,
        mask: torch.Tensor | None,
        upto: int | None = None,
    ) -> list[torch.Tensor]:
        """[embeddings, after layer 1, ..., after layer `upto` (default all)], each (B, L, d).

        `mask` is bool (B, L), True at real tokens (None: no padding). The last layer's
        state is not yet through `final_norm`.
        """
        length = ids.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequences of {length} tokens exceed max_len {self.config.max_len}")
        positions = torch.arange(length, device=ids.device)
        x = self.token(ids) + self.position(positions) + self.segment(segments)
        x = self.drop(self.embedding_norm(x))
        attend = None if mask is None else mask[:, None, None, :]
        states = [x]
        for layer in self.layers[: self.config.layers if upto is None else upto]:
            x = layer(x, attend)
            states.append(x)
        return states

    def encode(
        self,
        ids: torch.Tensor,
        segments: torch.Tensor,
        mask: torch.Tensor | None,
        layer: int | None = None,
    ) -> torch.Tensor:
        """Token vectors (B, L, d) after `layer` layers (0: the embeddings; default and -1:
        the last), through the final LayerNorm so every layer comes at the same scale."""
        index = layer_index(layer, self.config.layers)
        return self.final_norm(self.hidden_states(ids, segments, mask, upto=index)[index])

    @property
    def vector_width(self) -> int:
        """The width of `token_vectors`."""
        return self.config.width

    def token_vectors(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L, width) last-layer vectors of right-padded one-text rows with `lengths` real
        positions: the text-encoder interface the three language models share (a downstream
        model reads any of them the same way)."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        mask = positions[None, :] < lengths.to(ids.device)[:, None]
        return self.encode(ids, torch.zeros_like(ids), mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary scores of final hidden states (..., d) -> (..., V)."""
        h = self.head_norm(F.gelu(self.head_dense(hidden)))
        weight = self.token.weight if self.output is None else self.output.weight
        return F.linear(h, weight, self.output_bias)

    def forward(
        self,
        ids: torch.Tensor,
        segments: torch.Tensor,
        mask: torch.Tensor | None,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Mean cross-entropy over the target positions (labels != IGNORE)."""
        hidden = self.final_norm(self.hidden_states(ids, segments, mask)[-1])
        return target_loss(hidden, labels, self.logits, hidden[:1, 0])


def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator,
    vocab_size: int,
    mask_prob: float = 0.15,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) for a padded batch of ids: BERT's 80/10/10 masking.

    Only ordinary tokens (id >= N_SPECIAL) can be targets; labels hold the original id at
    targets and IGNORE elsewhere. Random replacements are ordinary tokens drawn uniformly.
    """
    chosen = (ids >= N_SPECIAL) & (rng.random(ids.shape) < mask_prob)
    labels = np.where(chosen, ids, IGNORE).astype(np.int64)
    how = rng.random(ids.shape)
    to_mask = chosen & (how < mask_token_prob)
    to_random = chosen & (how >= mask_token_prob) & (how < mask_token_prob + random_token_prob)
    inputs = ids.astype(np.int64, copy=True)
    inputs[to_mask] = MASK_ID
    inputs[to_random] = rng.integers(N_SPECIAL, vocab_size, size=int(to_random.sum()))
    return inputs, labels


def pack(
    first: Sequence[np.ndarray], second: Sequence[np.ndarray | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, segments, lengths) of `[CLS] a [SEP]` / `[CLS] a [SEP] b [SEP]` rows.

    Rows are right-padded with [PAD] to the longest; segment 0 covers [CLS] a [SEP], segment
    1 covers b [SEP] (and padding is segment 0).
    """
    lengths = np.array(
        [len(a) + 2 + (0 if b is None else len(b) + 1) for a, b in zip(first, second, strict=True)],
        dtype=np.int64,
    )
    width = int(lengths.max()) if len(lengths) else 0
    ids = np.full((len(lengths), width), PAD_ID, dtype=np.int64)
    segments = np.zeros((len(lengths), width), dtype=np.int64)
    for row, (a, b) in enumerate(zip(first, second, strict=True)):
        end = len(a) + 1
        ids[row, 0] = CLS_ID
        ids[row, 1:end] = a
        ids[row, end] = SEP_ID
        if b is not None:
            ids[row, end + 1 : end + 1 + len(b)] = b
            ids[row, end + 1 + len(b)] = SEP_ID
            segments[row, end + 1 : end + 2 + len(b)] = 1
    return ids, segments, lengths


def padding_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """bool (B, width): True at the first `lengths[i]` positions of row i."""
    return np.arange(width)[None, :] < np.asarray(lengths)[:, None]
