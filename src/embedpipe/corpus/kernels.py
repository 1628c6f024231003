"""Compiled kernels of the co-occurrence count (numba, no GIL held).

A pair of ids (a <= b) seen at distance d adds L / d units, L = lcm(1..window) (see
`cooccur`). A map task counts unordered pairs: pairs of frequent ids in a dense table, the
rest as packed keys ((a, b, d) in one int64) that are sorted and reduced into runs. Its
output is laid out as ordered entries (row, col) sorted by (shard, row, col), both
directions of every pair. A reduce task merges such sorted runs.

The dense table has GloVe's shape: row a holds the cells b in [a, lim[a]) with
(a + 1) * (b + 1) under a bound chosen to fill a cell budget, so it covers most pairs of a
Zipfian corpus. A cell that would overflow its integer type stops growing and the pair's
further units go to the sparse keys instead: sums stay exact.
"""

from __future__ import annotations

import numba
import numpy as np


def dense_layout(vocab_size: int, budget: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(lim, base, cells) of the largest product-bounded upper triangle within `budget` cells.

    Cell (a, b), a <= b < lim[a], lives at base[a] + b.
    """
    a = np.arange(vocab_size, dtype=np.int64)

    def limits(bound: int) -> np.ndarray:
        return np.maximum(np.minimum(vocab_size, -(-bound // (a + 1))), a)

    low, high = 1, vocab_size * vocab_size + 1
    while low < high:
        mid = (low + high + 1) // 2
        if int((limits(mid) - a).sum()) <= budget:
            low = mid
        else:
            high = mid - 1
    lim = limits(low)
    sizes = lim - a
    base = np.zeros(vocab_size, np.int64)
    np.cumsum(sizes[:-1], out=base[1:])
    return lim, base - a, int(sizes.sum())


@numba.njit(nogil=True, cache=True)
def count_windows(
    values: np.ndarray,
    offsets: np.ndarray,
    seq: int,
    pos: int,
    window: int,
    first_id: int,
    lim: np.ndarray,
    base: np.ndarray,
    dense: np.ndarray,
    room: np.ndarray,
    units: np.ndarray,
    keys: np.ndarray,
    n_keys: int,
    id_bits: int,
    d_bits: int,
) -> tuple[int, int, int]:
    """Count the pairs of sequences seq.. from flat position pos; stop when `keys` is full.

    Returns (seq, pos, n_keys) to resume from; seq == len(offsets) - 1 when done.
    Ids below `first_id` (special tokens) hold their position but are not counted.
    """
    n_seq = len(offsets) - 1
    cap = len(keys)
    while seq < n_seq:
        end = offsets[seq + 1]
        if pos < offsets[seq]:
            pos = offsets[seq]
        while pos < end:
            if n_keys + window > cap:
                return seq, pos, n_keys
            x = np.int64(values[pos])
            if x >= first_id:
                stop = min(end, pos + window + 1)
                for j in range(pos + 1, stop):
                    y = np.int64(values[j])
                    if y < first_id:
                        continue
                    d = j - pos
                    a, b = (x, y) if x <= y else (y, x)
                    if b < lim[a]:
                        c = base[a] + b
                        cur = np.int64(dense[c])
                        if cur <= room[d]:
                            dense[c] = cur + units[d]
                            continue
                    keys[n_keys] = (((a << id_bits) | b) << d_bits) | d
                    n_keys += 1
            pos += 1
        seq += 1
    return seq, pos, n_keys


@numba.njit(nogil=True, cache=True)
def reduce_packed(
    keys: np.ndarray, d_bits: int, units: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted packed (pair, distance) keys -> (pair keys, summed units), one per pair."""
    out_keys = np.empty(len(keys), np.int64)
    out_units = np.empty(len(keys), np.int64)
    m = -1
    prev = np.int64(-1)
    mask = (np.int64(1) << d_bits) - 1
    for i in range(len(keys)):
        pair = keys[i] >> d_bits
        if pair != prev:
            m += 1
            out_keys[m] = pair
            out_units[m] = 0
            prev = pair
        out_units[m] += units[keys[i] & mask]
    return out_keys[: m + 1], out_units[: m + 1]


@numba.njit(nogil=True, cache=True)
def merge_two(
    keys_a: np.ndarray, units_a: np.ndarray, keys_b: np.ndarray, units_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two runs of sorted, distinct keys, summing the units of keys in both."""
    n_a, n_b = len(keys_a), len(keys_b)
    keys = np.empty(n_a + n_b, np.int64)
    units = np.empty(n_a + n_b, np.int64)
    i = j = m = 0
    while i < n_a and j < n_b:
        ka, kb = keys_a[i], keys_b[j]
        if ka < kb:
            keys[m], units[m] = ka, units_a[i]
            i += 1
        elif kb < ka:
            keys[m], units[m] = kb, units_b[j]
            j += 1
        else:
            keys[m], units[m] = ka, units_a[i] + units_b[j]
            i += 1
            j += 1
        m += 1
    while i < n_a:
        keys[m], units[m] = keys_a[i], units_a[i]
        i += 1
        m += 1
    while j < n_b:
        keys[m], units[m] = keys_b[j], units_b[j]
        j += 1
        m += 1
    return keys[:m], units[:m]


@numba.njit(nogil=True, cache=True)
def unordered_pairs(
    lim: np.ndarray,
    base: np.ndarray,
    dense: np.ndarray,
    sparse_keys: np.ndarray,
    sparse_units: np.ndarray,
    id_bits: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, units) of every counted pair a <= b, sorted: the dense cells merged with a run."""
    nonzero = 0
    for c in range(len(dense)):
        if dense[c] != 0:
            nonzero += 1
    n = nonzero + len(sparse_keys)
    left = np.empty(n, np.int32)
    right = np.empty(n, np.int32)
    units = np.empty(n, np.int64)
    mask = (np.int64(1) << id_bits) - 1
    m = p = 0
    n_sparse = len(sparse_keys)
    for a in range(len(lim)):
        for b in range(a, lim[a]):
            u = np.int64(dense[base[a] + b])
            if u == 0:
                continue
            key = (np.int64(a) << id_bits) | b
            while p < n_sparse and sparse_keys[p] < key:
                left[m] = sparse_keys[p] >> id_bits
                right[m] = sparse_keys[p] & mask
                units[m] = sparse_units[p]
                m += 1
                p += 1
            if p < n_sparse and sparse_keys[p] == key:
                u += sparse_units[p]
                p += 1
            left[m], right[m], units[m] = a, b, u
            m += 1
    while p < n_sparse:
        left[m] = sparse_keys[p] >> id_bits
        right[m] = sparse_keys[p] & mask
        units[m] = sparse_units[p]
        m += 1
        p += 1
    return left[:m], right[:m], units[:m]


@numba.njit(nogil=True, cache=True)
def ordered_by_shard(
    left: np.ndarray, right: np.ndarray, units: np.ndarray, vocab_size: int, shards: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both directions of sorted unordered pairs, sorted by (row % shards, row, col).

    A counting sort by row: for row r, the pairs (a, r) with a < r are placed first (in a
    order), then (r, b) with b >= r (in b order), so each row comes out sorted by col. The
    diagonal (a, a) is one entry with twice the units (it is counted in both directions).
    Returns keys (row << 32 | col), units and the start of each shard (shards + 1 offsets).
    """
    count = np.zeros(vocab_size, np.int64)
    for i in range(len(left)):
        count[left[i]] += 1
        if left[i] != right[i]:
            count[right[i]] += 1
    cursor = np.empty(vocab_size, np.int64)
    starts = np.zeros(shards + 1, np.int64)
    total = 0
    for s in range(shards):
        starts[s] = total
        for r in range(s, vocab_size, shards):
            cursor[r] = total
            total += count[r]
    starts[shards] = total
    keys = np.empty(total, np.int64)
    out_units = np.empty(total, np.int64)
    for i in range(len(left)):
        a, b = np.int64(left[i]), np.int64(right[i])
        if a != b:
            q = cursor[b]
            keys[q], out_units[q] = (b << 32) | a, units[i]
            cursor[b] = q + 1
    for i in range(len(left)):
        a, b = np.int64(left[i]), np.int64(right[i])
        q = cursor[a]
        keys[q] = (a << 32) | b
        out_units[q] = units[i] * 2 if a == b else units[i]
        cursor[a] = q + 1
    return keys, out_units, starts


def merge_runs(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted, distinct-key runs pairwise in a balanced tree (each key O(log runs) times)."""
    if not runs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    while len(runs) > 1:
        merged = [merge_two(*runs[i], *runs[i + 1]) for i in range(0, len(runs) - 1, 2)]
        runs = merged + ([runs[-1]] if len(runs) % 2 else [])
    return runs[0]


@numba.njit(nogil=True, cache=True, inline="always")
def _put_varint(out: np.ndarray, p: int, value: np.uint64) -> int:
    """Write `value` at out[p:] as LEB128 (7 bits a byte, low first); returns the end."""
    while value >= 0x80:
        out[p] = (value & np.uint64(0x7F)) | np.uint64(0x80)
        value >>= np.uint64(7)
        p += 1
    out[p] = value
    return p + 1


@numba.njit(nogil=True, cache=True, inline="always")
def _get_varint(buf: np.ndarray, p: int) -> tuple[np.uint64, int]:
    value = np.uint64(0)
    shift = np.uint64(0)
    while True:
        byte = np.uint64(buf[p])
        p += 1
        value |= (byte & np.uint64(0x7F)) << shift
        if byte < 0x80:
            return value, p
        shift += np.uint64(7)


@numba.njit(nogil=True, cache=True)
def encode_run(keys: np.ndarray, units: np.ndarray) -> np.ndarray:
    """A sorted run of (row << 32 | col, units >= 0) as LEB128 varints (about 3 bytes an
    entry instead of 8): the entries; then per row, the row's gap from the previous row and
    its number of entries, and per entry the gap from the previous col (the col itself
    first) and the units."""
    n = len(keys)
    out = np.empty(10 + 20 * n, np.uint8)  # room for the worst case
    p = _put_varint(out, 0, np.uint64(n))
    prev_row = np.int64(0)
    i = 0
    while i < n:
        row = keys[i] >> 32
        j = i + 1
        while j < n and (keys[j] >> 32) == row:
            j += 1
        p = _put_varint(out, p, np.uint64(row - prev_row))
        p = _put_varint(out, p, np.uint64(j - i))
        prev_col = np.int64(0)
        for k in range(i, j):
            col = keys[k] & 0xFFFFFFFF
            p = _put_varint(out, p, np.uint64(col - prev_col))
            p = _put_varint(out, p, np.uint64(units[k]))
            prev_col = col
        prev_row = row
        i = j
    return out[:p].copy()


@numba.njit(nogil=True, cache=True)
def decode_run(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, units) of an `encode_run` buffer (uint8)."""
    count, p = _get_varint(buf, 0)
    n = np.int64(count)
    keys = np.empty(n, np.int64)
    units = np.empty(n, np.int64)
    row = np.int64(0)
    m = 0
    while m < n:
        gap, p = _get_varint(buf, p)
        row += np.int64(gap)
        entries, p = _get_varint(buf, p)
        col = np.int64(0)
        for _ in range(np.int64(entries)):
            gap, p = _get_varint(buf, p)
            col += np.int64(gap)
            value, p = _get_varint(buf, p)
            keys[m] = (row << 32) | col
            units[m] = np.int64(value)
            m += 1
    return keys, units
