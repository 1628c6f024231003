"""Subword skip-gram (fastText, Bojanowski et al. 2017): tables, n-gram index and kernel.

The input table has `V + bucket` rows, fastText's layout: row w is word w's own vector,
row V + b the vector of n-gram bucket b (`text.subwords`). A word is represented by the
mean of its subword rows: its own row, then the rows of its n-grams' buckets. The n-grams
of every vocabulary word are hashed once, when training starts, into a CSR index
(`SubwordIndex`: offsets (V + 1,), rows); special tokens keep their own row only.

The window batches and negatives are skip-gram's (`windows.SpanBatch`, global ids); as in
fastText, a centre word's subword mean predicts each context word of its window (output
table, V rows) against K negatives drawn for that context (the batch's draws of another
centre word: fresh for every context, as fastText draws them). fastText adds a context's
error to every subword row before the next context, so the next context sees the mean
moved by that error; the kernel gives the same sequence without rewriting the rows each
time: it reads the ~20 rows once per centre word, moves its copy of the mean by each
context's error, and adds the window's summed error to every row once, at the end (1 + K
output rows per context, the input rows once per centre word). Each row gets the whole
error of the mean, not a share (fastText's `Model::update` divides by the row count only
for supervised models); `reference_loss` states that rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from embedpipe import schemas as S
from embedpipe.text.subwords import ngram_buckets, wrapped_bytes
from embedpipe.train.kernels import AHEAD, LOSS_EVERY, _score, _score_loss, prefetch_row
from embedpipe.train.windows import SpanBatch

_buckets = numba.njit(nogil=True, cache=True)(ngram_buckets)


@dataclass(frozen=True)
class SubwordIndex:
    """Per vocabulary word, its rows of the input table: rows[offsets[w]:offsets[w + 1]]."""

    offsets: np.ndarray  # (V + 1,) int64
    rows: np.ndarray  # int64: w, then V + bucket of each n-gram of w

    @classmethod
    def build(cls, tokens: list[str], minn: int, maxn: int, bucket: int) -> SubwordIndex:
        """Hash the n-grams of every token once (special tokens: their own row only)."""
        encoded = [
            wrapped_bytes(t) if i >= len(S.SPECIAL_TOKENS) else wrapped_bytes("")[:0]
            for i, t in enumerate(tokens)
        ]
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate([*encoded, np.empty(0, np.uint8)]).astype(np.uint8)
        offsets, rows = _index(flat, starts, minn, maxn, bucket)
        return cls(offsets, rows)

    def words(self, ids: np.ndarray) -> np.ndarray:
        """The rows of the words `ids`, concatenated (what a batch of centres touches)."""
        return _gather_rows(self.offsets, self.rows, np.asarray(ids, dtype=np.int64))


@numba.njit(nogil=True, cache=True)
def _index(
    flat: np.ndarray, starts: np.ndarray, minn: int, maxn: int, bucket: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR of every word's rows: its id, then V + the bucket of each of its n-grams."""
    vocab = len(starts) - 1
    offsets = np.zeros(vocab + 1, dtype=np.int64)
    lengths = starts[1:] - starts[:-1]
    per_byte = max(0, maxn - minn + 1)  # text.subwords.max_ngrams
    rows = np.empty(vocab + int(lengths.sum()) * per_byte, dtype=np.int64)
    buffer = np.empty((lengths.max() if vocab else 0) * per_byte + 1, dtype=np.int64)
    at = 0
    for w in range(vocab):
        rows[at] = w
        at += 1
        if starts[w + 1] > starts[w]:
            count = _buckets(flat[starts[w] : starts[w + 1]], minn, maxn, bucket, buffer)
            for i in range(count):
                rows[at + i] = vocab + buffer[i]
            at += count
        offsets[w + 1] = at
    return offsets, rows[:at].copy()


@numba.njit(nogil=True, cache=True)
def _gather_rows(offsets: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    total = 0
    for w in ids:
        total += offsets[w + 1] - offsets[w]
    out = np.empty(total, dtype=np.int64)
    at = 0
    for w in ids:
        for s in range(offsets[w], offsets[w + 1]):
            out[at] = rows[s]
            at += 1
    return out


@numba.njit(nogil=True, cache=True)
def compose(table: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(V, d) word vectors: the mean of each word's subword rows (fastText's word vector)."""
    vocab = len(offsets) - 1
    out = np.zeros((vocab, table.shape[1]), dtype=table.dtype)
    for w in range(vocab):
        a, b = offsets[w], offsets[w + 1]
        for s in range(a, b):
            out[w] += table[rows[s]]
        out[w] *= np.float32(1.0) / (b - a)
    return out


@numba.njit(inline="always")
def _prefetch_centre(
    w_in: np.ndarray,
    w_out: np.ndarray,
    offsets: np.ndarray,
    rows: np.ndarray,
    span: np.ndarray,
    right: np.ndarray,
    centres: np.ndarray,
    negatives: np.ndarray,
    c: int,
) -> None:
    """Prefetch the rows centre word `c` will train, if there is one: its subword rows,
    its negatives and the context row its window reaches last."""
    if c < len(centres):
        w = centres[c]
        for s in range(offsets[w], offsets[w + 1]):
            prefetch_row(w_in, rows[s])
        for q in range(negatives.shape[1]):
            prefetch_row(w_out, negatives[c, q])
        prefetch_row(w_out, span[right[c]])


@numba.njit(inline="always", fastmath=True)
def _subword_mean(w_in: np.ndarray, rows: np.ndarray, a: int, b: int, h: np.ndarray) -> None:
    """h = the mean of the input rows rows[a:b] (a word's own row and its n-gram rows)."""
    h[:] = 0
    for s in range(a, b):
        for t in range(h.shape[0]):
            h[t] += w_in[rows[s], t]
    inv = np.float32(1.0 / (b - a))
    for t in range(h.shape[0]):
        h[t] *= inv


@numba.njit(inline="always", fastmath=True)
def _add_to_subwords(
    table: np.ndarray, rows: np.ndarray, a: int, b: int, err: np.ndarray, sign: np.float32
) -> None:
    """Add sign x err to each of the rows rows[a:b] of `table` (the tables or the gradient)."""
    for s in range(a, b):
        r = rows[s]
        for t in range(err.shape[0]):
            table[r, t] += sign * err[t]


@numba.njit(inline="always", fastmath=True)
def _predict_context(
    w_out: np.ndarray,
    h: np.ndarray,
    target: int,
    drawn: np.ndarray,
    step: np.float32,
    apply: bool,
    measure: bool,
    ctx: np.ndarray,
    grad_out: np.ndarray,
) -> float:
    """h predicts output row `target` against the K negatives `drawn` (one equal to the
    target skipped): `ctx` gains the error of h; `apply`: SGD on the output rows (step
    `step`), else their gradient into `grad_out`. Returns the loss, when `measure`."""
    loss = 0.0
    for q in range(len(drawn) + 1):
        o = target if q == 0 else drawn[q - 1]
        if q > 0 and o == target:
            continue
        f = np.float32(0.0)
        for t in range(h.shape[0]):
            f += h[t] * w_out[o, t]
        sig, g = _score(f, q == 0)
        if measure:
            loss += _score_loss(sig, q == 0)
        if apply:
            g *= step
            for t in range(h.shape[0]):
                ctx[t] += g * w_out[o, t]
                w_out[o, t] += g * h[t]
        else:
            for t in range(h.shape[0]):
                ctx[t] += g * w_out[o, t]
                grad_out[o, t] -= g * h[t]
    return loss


# One compiled loop over the batch; its per-word pieces are inlined helpers (no calls).
@numba.njit(nogil=True, fastmath=True, cache=True)
def fasttext_window_sgd(
    w_in: np.ndarray,
    w_out: np.ndarray,
    offsets: np.ndarray,
    rows: np.ndarray,
    span: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    centre_span: np.ndarray,
    centres: np.ndarray,
    negatives: np.ndarray,
    lr: float,
    grad_in: np.ndarray,
    grad_out: np.ndarray,
) -> tuple[float, int]:
    """Subword skip-gram over a window batch (global ids): the mean h of the centre word's
    subword rows (`offsets`, `rows`: a `SubwordIndex`) predicts every context word's
    output row against K negatives drawn for that context (a negative equal to the context
    skipped): the m-th context of centre c takes the draws of centre (c + m) mod n.

    lr > 0: SGD in place, centre word by centre word, context by context: h moves by
    each context's error before the next (fastText's order); the window's summed error
    is added to each subword row once, at its end. lr == 0: the loss's gradient (every
    subword row taking the whole gradient of h, see the module doc) accumulates into
    grad_in / grad_out, nothing is updated. Returns (summed loss, pairs); in SGD mode the loss is a
    sample of every LOSS_EVERY-th centre word, scaled to the batch.
    """
    n = len(centres)
    d = w_in.shape[1]
    h = np.zeros(d, dtype=w_in.dtype)
    err = np.zeros(d, dtype=w_in.dtype)
    ctx = np.zeros(d, dtype=w_in.dtype)
    apply = lr > 0
    step = np.float32(lr)
    every = LOSS_EVERY if apply else 1
    loss = 0.0
    pairs = 0
    measured = 0
    for c in range(n):
        _prefetch_centre(w_in, w_out, offsets, rows, span, right, centres, negatives, c + AHEAD)
        if right[c] == left[c]:  # no context: the centre is alone in its window
            continue
        w = centres[c]
        a, b = offsets[w], offsets[w + 1]
        _subword_mean(w_in, rows, a, b, h)
        err[:] = 0
        measure = c % every == 0
        m = 0  # contexts of this centre so far
        for j in range(left[c], right[c] + 1):
            if j == centre_span[c]:
                continue
            ctx[:] = 0
            # Fresh negatives for every context, as fastText draws them: the m-th context
            # takes the draws of the batch's (c + m)-th centre (independent draws).
            drawn = (c + m) % n
            m += 1
            loss += _predict_context(
                w_out, h, span[j], negatives[drawn], step, apply, measure, ctx, grad_out
            )
            for t in range(d):
                err[t] += ctx[t]
            if apply:  # h as fastText's next context sees it: every row moved by ctx
                for t in range(d):
                    h[t] += ctx[t]
            pairs += 1
            measured += measure
        if apply:
            _add_to_subwords(w_in, rows, a, b, err, np.float32(1.0))
        else:
            _add_to_subwords(grad_in, rows, a, b, err, np.float32(-1.0))
    return loss * pairs / max(measured, 1), pairs


class SubwordSkipGram(nn.Module):
    """The input table (V + bucket rows: words, then n-gram buckets), the output table
    (V rows) and the subword index; trained in place by `fasttext_window_sgd`.

    Initialised as fastText: input U(-1/dim, 1/dim) (n-gram rows included), output zero.
    """

    def __init__(self, index: SubwordIndex, bucket: int, dim: int, seed: int) -> None:
        super().__init__()
        self.index = index
        vocab = len(index.offsets) - 1
        generator = torch.Generator().manual_seed(seed)
        self.input = nn.Embedding(vocab + bucket, dim, sparse=True)
        self.output = nn.Embedding(vocab, dim, sparse=True)
        with torch.no_grad():
            self.input.weight.uniform_(-1.0 / dim, 1.0 / dim, generator=generator)
            self.output.weight.zero_()

    def kernel(
        self, batch: SpanBatch, lr: float, grads: tuple[np.ndarray, ...] = ()
    ) -> tuple[float, int]:
        """`fasttext_window_sgd` on the tables (lr > 0) or into `grads` (lr == 0)."""
        w_in, w_out = self.input.weight.detach().numpy(), self.output.weight.detach().numpy()
        no_grad = np.empty((0, w_in.shape[1]), dtype=w_in.dtype)
        grad_in, grad_out = grads or (no_grad, no_grad)
        return fasttext_window_sgd(
            w_in, w_out, self.index.offsets, self.index.rows, batch.span, batch.left,
            batch.right, batch.centre_span, batch.centres, batch.negatives, lr, grad_in, grad_out,
        )  # fmt: skip

    def train_in_place(self, batch: SpanBatch, lr: float) -> float:
        """SGD on the tables in place (what `sgns.InPlaceTrainer` runs on its threads)."""
        return self.kernel(batch, lr)[0]

    def word_vectors(self) -> torch.Tensor:
        """(V, d): each vocabulary word's subword mean, the vectors an artefact publishes."""
        table = self.input.weight.detach().numpy()
        return torch.from_numpy(compose(table, self.index.offsets, self.index.rows))


def reference_loss(
    w_in: torch.Tensor, w_out: torch.Tensor, index: SubwordIndex, batch: SpanBatch
) -> torch.Tensor:
    """The batch loss the kernel computes, with autograd, for checks: per (centre, context)
    pair -log s(u_o . h) - sum_k [n_k != o] log s(-u_k . h) (the m-th context of centre c
    with the draws of centre (c + m) mod n, as the kernel), h the mean of the centre's
    subword rows. The mean is taken so that each row's gradient is the whole gradient of h
    (forward: the mean; backward: as a sum), fastText's skip-gram update rule."""
    losses = []
    for c in range(len(batch.centres)):
        w = int(batch.centres[c])
        rows = torch.from_numpy(index.rows[index.offsets[w] : index.offsets[w + 1]])
        total = w_in[rows].sum(0)
        h = total.detach() / len(rows) + (total - total.detach())
        contexts = [
            j for j in range(int(batch.left[c]), int(batch.right[c]) + 1)
            if j != int(batch.centre_span[c])
        ]  # fmt: skip
        for m, j in enumerate(contexts):
            target = int(batch.span[j])
            negatives = torch.from_numpy(batch.negatives[(c + m) % len(batch.centres)])
            live = negatives[negatives != target]
            losses.append(-F.logsigmoid(w_out[target] @ h) - F.logsigmoid(-(w_out[live] @ h)).sum())
    return torch.stack(losses).sum()
