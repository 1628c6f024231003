"""An ELMo-style bidirectional LSTM language model (Peters et al. 2018): model, packing, mix.

An example is `[CLS] a [SEP]` (`bilm_pack`): [CLS] begins a text and [SEP] ends it, ELMo's
<S> and </S>. Token ids go through one embedding table (the vocabulary's words or
SentencePiece pieces; ELMo's character CNN is not built). A forward stack of `layers` LSTMs
reads the example left to right; a separate backward stack reads each row reversed within
its own length (`reverse_padded`), so right padding is never read by a real position in
either direction. Each LSTM has `hidden` cells and, when `hidden > width`, a projection of
its output to `width` (ELMo's LSTMP); layer k > 1 adds its input (ELMo's residual
connection). Dropout falls on every LSTM's input and before the softmax.

The forward state at position t predicts token t + 1; the backward state at t predicts
token t - 1. Only ordinary tokens of `a` are targets (never [PAD], [UNK], [CLS], [SEP],
[MASK]), as for the Transformer LMs, so the held-out perplexity compares with a unigram
model of the same tokens. The loss is the mean of the two directions' mean cross-entropies
(each target is predicted once per direction). One softmax serves both directions; tied
(`tie_output`), it is the input embedding matrix, plus a bias.

A token's representations (`layer_states`) are ELMo's: layer 0 is its embedding duplicated
to `[x ; x]` (so every layer has 2 * width values), layer k is `[forward_k ; backward_k]`.
`scalar_mix` combines them: softmax-normalised scalar weights times gamma, ELMo's
task-specific combination (`ScalarMix` learns them downstream); no weights: the plain
average of the layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedpipe.train.architecture import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    BidirectionalConfig,
)
from embedpipe.train.transformer import IGNORE, INIT_STD, N_SPECIAL, target_loss


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row of x (B, L, ...) reversed within its first `lengths[i]` positions; padding
    stays where it is. Its own inverse."""
    positions = torch.arange(x.shape[1], device=x.device)
    ends = lengths.to(x.device)[:, None]
    index = torch.where(positions < ends, ends - 1 - positions, positions)
    return x.gather(1, index.view(*index.shape, *[1] * (x.ndim - 2)).expand_as(x))


class BiLM(nn.Module):
    """Token embedding, forward and backward LSTM stacks and one (tied) softmax."""

    def __init__(self, config: BidirectionalConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        width, hidden = config.width, config.hidden
        self.token = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_id)
        projection = width if hidden > width else 0

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                nn.LSTM(width, hidden, batch_first=True, proj_size=projection)
                for _ in range(config.layers)
            )

        self.forward_layers, self.backward_layers = stack(), stack()
        self.drop = nn.Dropout(config.dropout)
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.output = None if config.tie_output else nn.Linear(width, config.vocab_size, bias=False)
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int) -> None:
        """Embedding and output rows N(0, 0.02), LSTM matrices U(-1/sqrt(hidden), ..) (torch's
        LSTM default), zero biases but the forget gates' (1), a zero [PAD] row; the same for
        a seed."""
        generator = torch.Generator().manual_seed(seed)
        bound = self.config.hidden**-0.5
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith(("token.", "output.")):
                    p.copy_(torch.randn(p.shape, generator=generator) * INIT_STD)
                elif p.ndim >= 2:
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
                else:
                    p.zero_()
                    if name.split(".")[-1].startswith("bias_ih"):  # gates: input, forget, ..
                        p[self.config.hidden : 2 * self.config.hidden] = 1.0
            self.token.weight[self.config.pad_id].zero_()

    def directions(
        self, ids: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """([embeddings, forward layer 1, ...], [embeddings, backward layer 1, ...]), each
        (B, L, width) at the original positions. The forward state at t has read ids[:t+1];
        the backward one ids[t:length]."""
        if ids.shape[1] > self.config.max_len:
            raise ValueError(
                f"sequences of {ids.shape[1]} tokens exceed max_len {self.config.max_len}"
            )
        x = self.token(ids)
        forward, backward = [x], [x]
        f, b = x, reverse_padded(x, lengths)
        for k, (fl, bl) in enumerate(zip(self.forward_layers, self.backward_layers, strict=True)):
            f_out, b_out = fl(self.drop(f))[0], bl(self.drop(b))[0]
            if k > 0 and self.config.residual:
                f_out, b_out = f_out + f, b_out + b
            f, b = f_out, b_out
            forward.append(f)
            backward.append(reverse_padded(b, lengths))
        return forward, backward

    def layer_states(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(layers + 1, B, L, 2 * width): [x ; x], then [forward_k ; backward_k] per layer."""
        forward, backward = self.directions(ids, lengths)
        return torch.stack(
            [torch.cat(pair, dim=-1) for pair in zip(forward, backward, strict=True)]
        )

    def layer_mix(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        weights: torch.Tensor | Sequence[float] | None = None,
        gamma: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """(B, L, 2 * width): `scalar_mix` of `layer_states`."""
        return scalar_mix(self.layer_states(ids, lengths), weights, gamma)

    @property
    def vector_width(self) -> int:
        """The width of `token_vectors`: a forward and a backward state side by side."""
        return 2 * self.config.width

    def token_vectors(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L, 2 * width): the plain average of the ELMo layers (as
        `BiLMEmbeddings.encode` by default) of right-padded `[CLS] text [SEP]` rows with
        `lengths` real positions; the text-encoder interface the three language models share."""
        return self.layer_mix(ids, lengths)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary scores of top-layer states (..., width) -> (..., V), either direction."""
        weight = self.token.weight if self.output is None else self.output.weight
        return F.linear(hidden, weight, self.output_bias)

    def direction_losses(
        self, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy of the forward (state t-1 predicts label t) and the backward
        (state t+1 predicts label t) direction over the targets (labels != IGNORE)."""
        forward, backward = self.directions(ids, lengths)
        top_f, top_b = self.drop(forward[-1]), self.drop(backward[-1])
        anchor = top_f[:1, 0]
        loss_f = target_loss(top_f[:, :-1], labels[:, 1:], self.logits, anchor)
        loss_b = target_loss(top_b[:, 1:], labels[:, :-1], self.logits, anchor)
        return loss_f, loss_b

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """The mean of the two directions' mean cross-entropies."""
        loss_f, loss_b = self.direction_losses(ids, lengths, labels)
        return (loss_f + loss_b) / 2


def mix_weights(
    weights: torch.Tensor | Sequence[float] | None, layers: int, gamma: float | torch.Tensor
) -> torch.Tensor:
    """The (layers,) factors of a scalar mix: gamma * softmax(weights); None: 1 / layers each
    (the plain average, which is also softmax of equal weights with gamma 1)."""
    if weights is None:
        return torch.full((layers,), 1.0 / layers) * gamma
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.shape != (layers,):
        raise ValueError(f"mix weights must be {layers} numbers (one per layer), got {w.shape}")
    return torch.softmax(w, dim=0) * gamma


def scalar_mix(
    states: torch.Tensor,
    weights: torch.Tensor | Sequence[float] | None = None,
    gamma: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """ELMo's combination of layer states (layers, ...): sum_k gamma * softmax(w)_k * h_k."""
    factors = mix_weights(weights, states.shape[0], gamma).to(states)
    return torch.tensordot(factors, states, dims=1)


class ScalarMix(nn.Module):
    """Learnable ELMo mix weights and gamma for a downstream task; starts as the average."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.scalars = nn.Parameter(torch.zeros(layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return scalar_mix(states, self.scalars, self.gamma)


def bilm_pack(pieces: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, lengths) of `[CLS] a [SEP]` rows, right-padded with [PAD] / IGNORE;
    labels hold a's ordinary tokens at their positions (IGNORE elsewhere)."""
    lengths = np.array([len(a) + 2 for a in pieces], dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    ids = np.full((len(pieces), width), PAD_ID, dtype=np.int64)
    labels = np.full((len(pieces), width), IGNORE, dtype=np.int64)
    for row, a in enumerate(pieces):
        n = len(a)
        ids[row, 0] = BOS_ID
        ids[row, 1 : n + 1] = a
        ids[row, n + 1] = EOS_ID
        labels[row, 1 : n + 1] = np.where(np.asarray(a) >= N_SPECIAL, a, IGNORE)
    return ids, labels, lengths
