"""Window batches: the examples of skip-gram and CBOW in the form word2vec.c walks them.

A chunk of sequences becomes its kept tokens (after subsampling), and per kept token a
context range within its sequence (a dynamic window b ~ U{1..window} on both sides, after
subsampling, as word2vec.c) and K negatives from the noise table. A batch is
`batch_size` consecutive centre words with the span of tokens their windows reach
(`SpanBatch`, global ids: a single CPU process trains the tables in place from it), or in
compact form, the distinct rows it touches and positions in them (`WindowBatch`: what
ranks exchange and tensor hardware gathers). Skip-gram trains every
(context, centre) pair of a window against the centre's K negatives; CBOW trains the mean
of the contexts against them. Batches never cut a window: a batch's span reaches `window`
tokens into its neighbours, so the examples do not depend on the batch size.

All draws come from the chunk's generator in a fixed order (keep coins, windows,
negatives), so a batch can be rebuilt from (seed, epoch, rank, chunk, batch).

The formulas (word2vec.c's):
- keep probability of a word with count f among T tokens, threshold s:
  p = (sqrt(f / (s T)) + 1) * (s T) / f, capped at 1; special tokens get 0 (never trained);
- noise distribution: count ** 0.75, normalised; special tokens never drawn. Negatives are
  drawn with Walker's alias method (exact, O(1) a draw, O(V) memory).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numba
import numpy as np
import pyarrow as pa
import torch

from embedpipe import schemas as S


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Subsampling keep probability per id; special tokens (and count-0 ids) get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    keep = np.zeros_like(counts)
    words = counts > 0
    if sample <= 0:
        keep[words] = 1.0
    else:
        threshold = sample * counts.sum()
        f = counts[words]
        keep[words] = np.minimum((np.sqrt(f / threshold) + 1.0) * threshold / f, 1.0)
    keep[: len(S.SPECIAL_TOKENS)] = 0.0
    return keep


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """Unigram ** power, normalised; ids with count 0 (the specials) get probability 0."""
    weights = np.asarray(counts, dtype=np.float64) ** power
    weights[: len(S.SPECIAL_TOKENS)] = 0.0
    return weights / weights.sum()


def noise_table(vocab: pa.Table, power: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The alias table negatives are drawn from: the vocabulary's `noise_prob` column
    (power None: vocab.noise_power's, from the build_vocab stage) or count ** `power`, for
    a model that sets its own (`noise_distribution`, the same formula). `vocab` sorted by id."""
    if power is None:
        return alias_table(vocab.column(S.NOISE_PROB).to_numpy())
    return alias_table(noise_distribution(vocab.column(S.COUNT).to_numpy(), power))


def alias_table(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table of a distribution: (threshold per slot, alias per slot).

    Slot i (drawn uniformly) yields i with probability threshold[i], else alias[i].
    """
    p = np.asarray(probs, dtype=np.float64)
    n = len(p)
    scaled = p * (n / p.sum())
    threshold = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = [int(i) for i in np.flatnonzero(scaled < 1.0)]
    large = [int(i) for i in np.flatnonzero(scaled >= 1.0)]
    while small and large:
        s, g = small.pop(), large.pop()
        threshold[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    # Leftovers are 1 up to rounding: they keep their own slot (threshold 1).
    return threshold, alias


def alias_probabilities(threshold: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The exact distribution an alias table samples (for checks)."""
    n = len(threshold)
    p = threshold.copy()
    np.add.at(p, alias, 1.0 - threshold)
    return p / n


def sample_alias(
    threshold: np.ndarray, alias: np.ndarray, size: int | tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Draws from an alias table, one uniform double each (slot and coin from its bits)."""
    return _alias_draws(rng.random(size), threshold, alias)


@numba.njit(nogil=True, cache=True)
def _alias_draws(x: np.ndarray, threshold: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The alias table's draw for each uniform double of `x` (one pass, no temporaries:
    the numpy form of this took a third of the data thread's time)."""
    n = len(threshold)
    flat = x.ravel()
    out = np.empty(flat.size, np.int64)
    for i in range(flat.size):
        u = flat[i] * n
        slot = min(np.int64(u), n - 1)
        out[i] = slot if u - slot < threshold[slot] else alias[slot]
    return out.reshape(x.shape)


class RowCompactor:
    """Sorted distinct ids of an index array and each entry's position among them.

    `np.unique(ids, return_inverse=True)` in O(n + V) with two reusable V-sized buffers
    instead of a sort, which costs far more on batches of Zipf-distributed ids.
    """

    def __init__(self, vocab_size: int) -> None:
        self.seen = np.zeros(vocab_size, dtype=bool)
        self.position = np.zeros(vocab_size, dtype=np.int64)

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.seen[ids] = True
        rows = np.flatnonzero(self.seen)
        self.seen[rows] = False
        self.position[rows] = np.arange(len(rows))
        return rows, self.position[ids]


def compact_rows(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, inverse) of `ids`, as `np.unique(..., return_inverse=True)`."""
    return RowCompactor(vocab_size)(np.asarray(ids).ravel())


class ChunkWindows(NamedTuple):
    """A chunk's kept tokens, their context ranges [left, right] and negatives."""

    ids: np.ndarray  # (n,) int64 kept token ids, in corpus order
    left: np.ndarray  # (n,) int64 first context position (in `ids`)
    right: np.ndarray  # (n,) int64 last context position, inclusive
    negatives: np.ndarray  # (n, K) int64 noise ids

    @property
    def examples(self) -> np.ndarray:
        """Contexts per kept token (the token itself excluded)."""
        return self.right - self.left


def chunk_windows(
    flat: np.ndarray,
    offsets: np.ndarray,
    keep_prob: np.ndarray,
    window: int,
    negatives: int,
    noise: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> ChunkWindows:
    """Subsample a chunk (flat ids, sequence offsets) and draw its windows and negatives."""
    seq = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    kept = rng.random(len(flat)) < keep_prob[flat]
    ids, seq = flat[kept].astype(np.int64), seq[kept]
    reach = rng.integers(1, window + 1, size=len(ids))
    noise_ids = sample_alias(*noise, (len(ids), negatives), rng)
    position = np.arange(len(ids))
    # Each kept token's sequence spans [first, last] of the kept tokens (seq is sorted).
    kept_per_sequence = np.bincount(seq, minlength=len(offsets) - 1)
    ends = np.cumsum(kept_per_sequence)
    first, last = (ends - kept_per_sequence)[seq], ends[seq] - 1
    left = np.maximum(position - reach, first)
    right = np.minimum(position + reach, last)
    return ChunkWindows(ids, left, right, noise_ids)


class SpanBatch(NamedTuple):
    """One step's centre words over global ids: what the in-place CPU kernels take.

    The span is the run of kept tokens the batch's windows reach; positions index it.
    """

    span: np.ndarray  # (m,) int64 token ids of the span (input table rows)
    left: np.ndarray  # (n,) first context position in the span, per centre word
    right: np.ndarray  # (n,) last context position in the span (inclusive)
    centre_span: np.ndarray  # (n,) the centre word's own position in the span
    centres: np.ndarray  # (n,) centre word ids (output table rows)
    negatives: np.ndarray  # (n, K) noise ids (output table rows)


class WindowBatch(NamedTuple):
    """One step's centre words in compact form (the arguments of `kernels.*_window_sgd`
    on copies of the touched rows, and of the tensor steps): `compact_batch` of a
    `SpanBatch`."""

    in_rows: torch.Tensor  # (R_in,) distinct ids of the span's tokens (input table)
    span: torch.Tensor  # (m,) each span token's position in in_rows
    left: torch.Tensor  # (n,) first context position in the span, per centre word
    right: torch.Tensor  # (n,) last context position in the span (inclusive)
    centre_span: torch.Tensor  # (n,) the centre word's own position in the span
    out_rows: torch.Tensor  # (R_out,) distinct ids of the centres and negatives (output table)
    centre_out: torch.Tensor  # (n,) each centre word's position in out_rows
    neg_out: torch.Tensor  # (n, K) its negatives' positions in out_rows


def span_batches(
    windows: ChunkWindows, batch_size: int, first_batch: int
) -> Iterator[tuple[SpanBatch, int]]:
    """(batch, examples in it) for batches `first_batch`.. of `batch_size` centre words."""
    n = len(windows.ids)
    for lo in range(first_batch * batch_size, n, batch_size):
        hi = min(lo + batch_size, n)
        start, stop = int(windows.left[lo:hi].min()), int(windows.right[lo:hi].max()) + 1
        batch = SpanBatch(
            windows.ids[start:stop],
            windows.left[lo:hi] - start,
            windows.right[lo:hi] - start,
            np.arange(lo - start, hi - start),
            windows.ids[lo:hi],
            windows.negatives[lo:hi],
        )
        yield batch, int(windows.examples[lo:hi].sum())


def compact_batch(batch: SpanBatch, compact: RowCompactor) -> WindowBatch:
    """The batch over the distinct rows it touches: what ranks exchange, and what tensor
    hardware gathers (the in-place path needs none of it)."""
    n, k = batch.negatives.shape
    in_rows, span = compact(batch.span)
    out_rows, out_pos = compact(np.concatenate([batch.centres, batch.negatives.reshape(-1)]))
    return WindowBatch(
        *(
            torch.from_numpy(a)
            for a in (
                in_rows, span, batch.left, batch.right, batch.centre_span,
                out_rows, out_pos[:n], out_pos[n:].reshape(n, k),
            )
        )
    )  # fmt: skip


def window_batches(
    windows: ChunkWindows, batch_size: int, first_batch: int, compact: RowCompactor
) -> Iterator[tuple[WindowBatch, int]]:
    """`span_batches` in compact form."""
    for batch, examples in span_batches(windows, batch_size, first_batch):
        yield compact_batch(batch, compact), examples


def batch_count(windows: ChunkWindows, batch_size: int) -> int:
    """Batches of a chunk (at least one, possibly empty, so every chunk moves the cursor)."""
    return max(1, -(-len(windows.ids) // batch_size))


def window_contexts(batch: WindowBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, context): every (centre index, context position in in_rows) of a batch.

    The expanded form for tensor hardware (`sgns_step`, `cbow_step`) and for checks.
    """
    left, right, me = batch.left, batch.right, batch.centre_span
    sizes = right - left + 1
    owner = torch.repeat_interleave(torch.arange(len(left), device=left.device), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    position = left[owner] + torch.arange(len(owner), device=left.device) - starts[owner]
    live = position != me[owner]
    return owner[live], batch.span[position[live]]
