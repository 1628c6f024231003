"""Compiled CPU kernels of the word2vec family: one centre word at a time, as word2vec.c.

A step of skip-gram or CBOW touches a handful of rows per centre word with 100-wide dot
products and updates: tensor libraries pay a call per small operation, so on CPUs the
inner loop is compiled (numba, no GIL held: the data thread keeps preparing batches).
The kernels work on a batch in window form (`windows.WindowBatch`): the input rows of a
span of kept tokens, and per centre word its context range in the span, its own output
row and K negatives shared by all its contexts (one draw per centre word instead of one
per pair, as Ji et al. 2016 "Parallelizing Word2Vec in Shared and Distributed Memory"
do: the 1 + K output rows stay in L1 across the window).

Both kernels have two modes. lr > 0: plain SGD, in place, centre word by centre word,
each seeing the updates before it (word2vec.c's order). lr == 0: nothing is updated; the
gradient of the batch loss at the given rows is accumulated into `grad_in` / `grad_out`
(the definition, tested against autograd). They return (summed loss, examples): the loss
is -log s(u_o . v) - sum_k [n_k != o] log s(-u_k . v) per pair (skip-gram) or per centre
word with v the mean of its contexts (CBOW); a negative equal to the centre word is
skipped, as word2vec.c and gensim do. In SGD mode the loss is measured on every
`LOSS_EVERY`-th centre word and scaled to the batch: the logarithms would otherwise cost a
noticeable share of the step, and a progress line needs an estimate, not every term.

The rows a centre word touches are scattered over tables far larger than the caches, so
the kernels are bound by memory latency. While one centre word trains, the
rows of the one `AHEAD` positions later are prefetched (`prefetch_row`): its output row,
its negatives and the input row entering its window; GloVe's kernel prefetches the four
rows of the entry AHEAD later. Same arithmetic, same results, fewer stalls (figures: the
README).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LOSS_EVERY = 8  # in SGD mode the loss is measured on every 8th centre word (a sample)
AHEAD = 2  # centre words between a prefetch and the use of its rows (the best of 1-4)
# LLVM's name of its prefetch intrinsic: by pointer type, typed before LLVM 17.
_PREFETCH = "llvm.prefetch.p0" if binding.llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"


@intrinsic
def prefetch_row(typingctx, table, row):  # noqa: ANN001, ANN201, ARG001 - numba's signature
    """Ask the CPU to bring row `row` of a C-contiguous 2-D table into cache (a hint:
    nothing is read, so the row may be written meanwhile). One prefetch per 64-byte line."""
    signature = types.void(table, row)

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        array = context.make_array(sig.args[0])(context, builder, args[0])
        shape = cgutils.unpack_tuple(builder, array.shape)
        zero = context.get_constant(types.intp, 0)
        start = cgutils.get_item_pointer2(
            context, builder, data=array.data, shape=shape,
            strides=cgutils.unpack_tuple(builder, array.strides), layout=sig.args[0].layout,
            inds=[args[1], zero], wraparound=False,
        )  # fmt: skip
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), _PREFETCH
        )
        base = builder.bitcast(start, byte_ptr)
        width = context.get_constant(types.intp, sig.args[0].dtype.bitwidth // 8)
        size = builder.mul(shape[1], width)
        line = context.get_constant(types.intp, 64)
        with cgutils.for_range_slice(builder, zero, size, line) as (offset, _):
            # (address, read, keep in all cache levels, data cache)
            builder.call(fetch, [builder.gep(base, [offset]), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return signature, codegen


@numba.njit(inline="always")
def _prefetch_centre(
    w_in: np.ndarray,
    w_out: np.ndarray,
    span: np.ndarray,
    right: np.ndarray,
    centre_out: np.ndarray,
    neg_out: np.ndarray,
    c: int,
) -> None:
    """Prefetch the rows centre word `c` will train, if there is one: its output row, its
    negatives and the input row its window reaches last (the others were in earlier ones)."""
    if c < len(centre_out):
        prefetch_row(w_out, centre_out[c])
        for q in range(neg_out.shape[1]):
            prefetch_row(w_out, neg_out[c, q])
        prefetch_row(w_in, span[right[c]])


@numba.njit(inline="always", fastmath=True)
def _score(f: np.float32, positive: bool) -> tuple[np.float32, np.float32]:
    """(sigmoid(f), -d loss / d f) of one score, in float32 as word2vec.c computes it."""
    s = np.float32(1.0) / (np.float32(1.0) + np.exp(-f))
    return s, (np.float32(1.0) - s) if positive else -s


@numba.njit(inline="always", fastmath=True)
def _score_loss(s: np.float32, positive: bool) -> float:
    """-log s(f) for the target, -log s(-f) = -log(1 - s(f)) for a negative."""
    p = s if positive else np.float32(1.0) - s
    return -math.log(max(p, 1e-30))


# Longer than 60 lines: one compiled loop over the batch; helpers would cost a call per word.
@numba.njit(nogil=True, fastmath=True, cache=True)
def sgns_window_sgd(
    w_in: np.ndarray,
    w_out: np.ndarray,
    span: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    centre_span: np.ndarray,
    centre_out: np.ndarray,
    neg_out: np.ndarray,
    lr: float,
    grad_in: np.ndarray,
    grad_out: np.ndarray,
) -> tuple[float, int]:
    """Skip-gram over a window batch: every context's input row predicts the centre word.

    w_in (R_in, d) / w_out (R_out, d): the rows the batch touches; span (m,) each span
    token's row in w_in; per centre c: contexts are span positions left[c]..right[c]
    except centre_span[c]; centre_out[c] and neg_out[c] (K,) are rows of w_out.
    """
    n, k = neg_out.shape
    d = w_in.shape[1]
    err = np.zeros(d, dtype=w_in.dtype)
    apply = lr > 0
    step = np.float32(lr)
    every = LOSS_EVERY if apply else 1
    loss = 0.0
    pairs = 0
    measured = 0
    for c in range(n):
        _prefetch_centre(w_in, w_out, span, right, centre_out, neg_out, c + AHEAD)
        target = centre_out[c]
        measure = c % every == 0
        for j in range(left[c], right[c] + 1):
            if j == centre_span[c]:
                continue
            row = span[j]
            err[:] = 0
            for q in range(k + 1):
                o = target if q == 0 else neg_out[c, q - 1]
                if q > 0 and o == target:
                    continue
                f = np.float32(0.0)
                for t in range(d):
                    f += w_in[row, t] * w_out[o, t]
                s, g = _score(f, q == 0)
                if measure:
                    loss += _score_loss(s, q == 0)
                if apply:
                    g *= step
                    for t in range(d):
                        err[t] += g * w_out[o, t]
                        w_out[o, t] += g * w_in[row, t]
                else:
                    for t in range(d):
                        grad_in[row, t] -= g * w_out[o, t]
                        grad_out[o, t] -= g * w_in[row, t]
            if apply:
                for t in range(d):
                    w_in[row, t] += err[t]
            pairs += 1
            measured += measure
    return loss * pairs / max(measured, 1), pairs


# Longer than 60 lines: one compiled loop over the batch; helpers would cost a call per word.
@numba.njit(nogil=True, fastmath=True, cache=True)
def cbow_window_sgd(
    w_in: np.ndarray,
    w_out: np.ndarray,
    span: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    centre_span: np.ndarray,
    centre_out: np.ndarray,
    neg_out: np.ndarray,
    lr: float,
    grad_in: np.ndarray,
    grad_out: np.ndarray,
) -> tuple[float, int]:
    """CBOW over a window batch: the mean of a centre word's context rows predicts it.

    Same arguments as `sgns_window_sgd`. gensim's cbow_mean=1 rule: the full hidden-layer
    error goes to every context row (see `cbow`). Centre words without contexts are
    skipped.
    """
    n, k = neg_out.shape
    d = w_in.shape[1]
    h = np.zeros(d, dtype=w_in.dtype)
    err = np.zeros(d, dtype=w_in.dtype)
    apply = lr > 0
    step = np.float32(lr)
    every = LOSS_EVERY if apply else 1
    loss = 0.0
    examples = 0
    measured = 0
    for c in range(n):
        _prefetch_centre(w_in, w_out, span, right, centre_out, neg_out, c + AHEAD)
        count = right[c] - left[c]  # the centre sits inside its own range
        if count == 0:
            continue
        h[:] = 0
        for j in range(left[c], right[c] + 1):
            if j != centre_span[c]:
                row = span[j]
                for t in range(d):
                    h[t] += w_in[row, t]
        inv = np.float32(1.0 / count)
        for t in range(d):
            h[t] *= inv
        err[:] = 0
        target = centre_out[c]
        for q in range(k + 1):
            o = target if q == 0 else neg_out[c, q - 1]
            if q > 0 and o == target:
                continue
            f = np.float32(0.0)
            for t in range(d):
                f += h[t] * w_out[o, t]
            s, g = _score(f, q == 0)
            if examples % every == 0:
                loss += _score_loss(s, q == 0)
            if apply:
                g *= step
            for t in range(d):
                err[t] += g * w_out[o, t]
            if apply:
                for t in range(d):
                    w_out[o, t] += g * h[t]
            else:
                for t in range(d):
                    grad_out[o, t] -= g * h[t]
        for j in range(left[c], right[c] + 1):
            if j != centre_span[c]:
                row = span[j]
                if apply:
                    for t in range(d):
                        w_in[row, t] += err[t]
                else:
                    for t in range(d):
                        grad_in[row, t] -= err[t]
        measured += examples % every == 0
        examples += 1
    return loss * examples / max(measured, 1), examples


# Longer than 60 lines: one compiled loop over the batch; helpers would cost a call per word.
@numba.njit(nogil=True, fastmath=True, cache=True)
def glove_adagrad(
    word: np.ndarray,
    context: np.ndarray,
    word_bias: np.ndarray,
    context_bias: np.ndarray,
    word_sq: np.ndarray,
    context_sq: np.ndarray,
    word_bias_sq: np.ndarray,
    context_bias_sq: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    x: np.ndarray,
    x_max: float,
    alpha: float,
    lr: float,
) -> float:
    """GloVe's AdaGrad, entry by entry and in place, as the Stanford tool's inner loop.

    word / context (R, d) and (C, d), the biases (R, 1) / (C, 1) and their squared-gradient
    sums of the same shapes: the rows the entries touch; rows[e] / cols[e] index them.
    For an entry with diff = w . c + b + b~ - log x and g = lr * f(x) * diff, each
    parameter moves by -g * (its partner's value) / sqrt(its sum so far), then its sum
    grows by that step's squared numerator: the sums hold (lr * gradient)^2, starting at
    1, so early steps are nearly plain SGD at lr. Returns the summed weighted loss
    0.5 f(x) diff^2 of the entries, each measured before its update.
    """
    d = word.shape[1]
    step_w = np.zeros(d, dtype=word.dtype)
    step_c = np.zeros(d, dtype=word.dtype)
    loss = 0.0
    for e in range(len(rows)):
        if e + AHEAD < len(rows):  # the rows of the entry AHEAD later (see the module doc)
            ahead_i, ahead_j = rows[e + AHEAD], cols[e + AHEAD]
            prefetch_row(word, ahead_i)
            prefetch_row(word_sq, ahead_i)
            prefetch_row(context, ahead_j)
            prefetch_row(context_sq, ahead_j)
        i, j, xe = rows[e], cols[e], x[e]
        diff = np.float32(0.0)
        for t in range(d):
            diff += word[i, t] * context[j, t]
        diff += word_bias[i, 0] + context_bias[j, 0] - np.float32(math.log(xe))
        weight = np.float32(1.0) if xe > x_max else np.float32((xe / x_max) ** alpha)
        fdiff = weight * diff
        loss += 0.5 * fdiff * diff
        g = fdiff * np.float32(lr)
        for t in range(d):
            gw = g * context[j, t]
            gc = g * word[i, t]
            step_w[t] = gw / math.sqrt(word_sq[i, t])
            step_c[t] = gc / math.sqrt(context_sq[j, t])
            word_sq[i, t] += gw * gw
            context_sq[j, t] += gc * gc
        for t in range(d):
            word[i, t] -= step_w[t]
            context[j, t] -= step_c[t]
        word_bias[i, 0] -= g / math.sqrt(word_bias_sq[i, 0])
        context_bias[j, 0] -= g / math.sqrt(context_bias_sq[j, 0])
        word_bias_sq[i, 0] += g * g
        context_bias_sq[j, 0] += g * g
    return loss


@numba.njit(nogil=True, cache=True)
def row_deltas(table: np.ndarray, base: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[i] = table[rows[i]] - base[rows[i]]: a rank's changes since the last exchange."""
    for i in range(len(rows)):
        r = rows[i]
        for j in range(table.shape[1]):
            out[i, j] = table[r, j] - base[r, j]


@numba.njit(nogil=True, cache=True)
def add_rows(table: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """table[rows[i]] += values[i] for distinct rows (one pass; torch's index_add_ on CPU
    was several times slower at this size)."""
    for i in range(len(rows)):
        r = rows[i]
        for j in range(table.shape[1]):
            table[r, j] += values[i, j]


@numba.njit(nogil=True, cache=True)
def pack_rows(out: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
    """out[positions[i]] = values[i], zeros in every other row of `out`: a rank's deltas
    placed among the union's rows, in one pass (`positions` ascending)."""
    j = 0
    for i in range(out.shape[0]):
        if j < len(positions) and positions[j] == i:
            for k in range(out.shape[1]):
                out[i, k] = values[j, k]
            j += 1
        else:
            for k in range(out.shape[1]):
                out[i, k] = 0.0


@numba.njit(nogil=True, cache=True)
def merge_sums(
    base: np.ndarray, union: np.ndarray, sums: np.ndarray, positions: np.ndarray, own: np.ndarray
) -> None:
    """base[union] += sums; sums less this rank's own deltas (at ascending `positions`),
    which its tables hold already: what the tables still lack. One pass."""
    j = 0
    for i in range(len(union)):
        r = union[i]
        mine = j < len(positions) and positions[j] == i
        for k in range(sums.shape[1]):
            base[r, k] += sums[i, k]
            if mine:
                sums[i, k] -= own[j, k]
        if mine:
            j += 1
