"""What the Transformer language models (masked `mlm.MaskedLM`, causal `clm.CausalLM`) share.

The pre-LayerNorm layer (x + attention(norm(x)), then x + ffn(norm(x))) is bidirectional,
with padded keys masked out, or causal (`scaled_dot_product_attention(is_causal=True)`).
Both models draw their initial weights the same way (`init_parameters`), keep weight decay
off biases and LayerNorm weights (`decay_groups`), name their layers the same way
(`layer_index`) and store their architecture as a flat dict (`Architecture`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embedpipe.train.architecture import N_SPECIAL, Architecture  # noqa: F401 (re-exported)

IGNORE = -100  # label of a position that is not a target (cross_entropy's ignore_index)
INIT_STD = 0.02


class TransformerLayer(nn.Module):
    """Pre-LayerNorm Transformer layer: x + attention(norm(x)), then x + ffn(norm(x))."""

    def __init__(
        self, width: int, heads: int, ffn: int, dropout: float, causal: bool = False
    ) -> None:
        super().__init__()
        self.heads, self.dropout, self.causal = heads, dropout, causal
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn_in = nn.Linear(width, ffn)
        self.ffn_out = nn.Linear(ffn, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        """`attend`: bool (B, 1, 1, L), True where a key is a real token (None: no padding).

        A causal layer takes no `attend`: with right padding no real position sees a later
        one, so padding needs no mask there.
        """
        if self.causal and attend is not None:
            raise ValueError("a causal layer takes no padding mask (pad on the right)")
        batch, length, width = x.shape
        qkv = self.qkv(self.attention_norm(x))
        q, k, v = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal,
        )  # fmt: skip
        x = x + self.drop(
            self.attention_out(attended.transpose(1, 2).reshape(batch, length, width))
        )
        return x + self.drop(self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x)))))


def init_parameters(model: nn.Module, seed: int, pad_id: int) -> None:
    """N(0, 0.02) matrices, zero biases, unit norms, a zero [PAD] embedding row; the same
    for a seed. The model's token embedding is `model.token`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * INIT_STD)
            elif name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        model.token.weight[pad_id].zero_()


def layer_index(layer: int | None, layers: int) -> int:
    """The hidden state a `layer` argument names: 0 the embeddings, k the output of layer k,
    None or -1 the last (negative counts from the end)."""
    index = layers if layer is None else (layer + layers + 1 if layer < 0 else layer)
    if not 0 <= index <= layers:
        raise ValueError(f"layer must be in [-{layers + 1}, {layers}], got {layer}")
    return index


def target_loss(
    hidden: torch.Tensor, labels: torch.Tensor, logits: Any, anchor: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `logits(hidden)` at the targets (labels != IGNORE) only, so the
    (targets x vocabulary) scores stay small. With no target: a zero loss that still reaches
    every parameter (`logits(anchor)`), which DDP needs."""
    targets = labels != IGNORE
    if not bool(targets.any()):
        return logits(anchor).sum() * 0.0
    return F.cross_entropy(logits(hidden[targets]).float(), labels[targets])


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices (linear and embedding weights) only,
    never on biases and LayerNorm weights (the 1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def perplexity(loss: float) -> float:
    """exp(loss), inf when it overflows."""
    return math.exp(loss) if loss < 700 else math.inf
