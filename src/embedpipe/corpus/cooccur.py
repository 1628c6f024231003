"""cooccur: sequences -> a sparse (row, col, weight) matrix, sharded by row.

Map side, one task per part file of the sequences table (`parts.map_parts`, read with
pyarrow; `PairCounter`, compiled kernels in `kernels`): pairs of frequent ids are summed in
a dense table, the rest sorted and reduced into runs; the task's sums leave as a few large
binary blocks per (shard, group), each a sorted run of (row, col, units) as varints of
gaps, a few bytes an entry instead of 8 as fixed-width integers (the shuffle's bytes move
through Arrow, the JVM and its compression twice). Spark shuffles those blocks to one
reduce task per (shard, group) (`repartitionById`), which merges the runs and writes its
slice of the table as one Parquet file. The JVM moves and stores blocks; it never sees a row per pair, and the
driver receives one line of counts per file (Spark's own group-by of per-pair rows is
far slower: a row, a shuffle record and a sort key per pair).

Special-token ids (including [UNK]) take up their position in the window but are not
counted, so distances are those of the text.

Weights are summed exactly, as integers: a pair at distance d adds L / d, where L is the
least common multiple of 1..window, and the sum is divided by L once at the end. The result
is then independent of partitioning and summation order, so a cluster run writes the same
bytes as a local one.

Shard k holds the rows with row % S == k. (Contiguous row ranges would be badly unbalanced:
ids are sorted by frequency, so the first range would hold most of the entries.) A shard
is cut into G groups by row range (G from an upper bound on the entries, so that a reduce
task's memory is bounded whatever the corpus size); group g of shard k is the file
`shard=k/part-<g>.parquet`, sorted by (row, col), and the files of a shard in name order
are the shard in (row, col) order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from embedpipe import schemas as S
from embedpipe.config import CooccurConfig
from embedpipe.corpus.spark.parts import finish_table, map_parts, part_name, table_of, write_table

DENSE_CELLS = 1 << 24  # cells of a map task's dense table (uint32: 64 MiB)
SPARSE_KEYS = 1 << 23  # raw sparse pairs buffered before a sort-and-reduce (64 MiB)
MAX_SPARSE = 1 << 24  # distinct sparse pairs a map task holds before it emits its sums
BLOCK_ENTRIES = 1 << 20  # entries per shuffled block (about 3 MiB)
GROUP_ENTRIES = 1 << 24  # bound on the entries one reduce task merges
# Parquet row group size of the output files: GloVe training reads row groups in a random
# order and shuffles pools of them (`train.glove_trainer`), so groups stay small.
ROW_GROUP_ROWS = 1 << 13
# Sorted row and col: delta encoding (standard Parquet, read by Spark 3.3+, DuckDB, pyarrow)
# makes files smaller than dictionaries and writes faster; weights repeat: dictionary.
PARQUET_OPTIONS = {
    "use_dictionary": [S.WEIGHT],
    "column_encoding": {S.ROW: "DELTA_BINARY_PACKED", S.COL: "DELTA_BINARY_PACKED"},
}

PID, RUN, CHUNK, BLOCK = "pid", "run", "chunk", "block"
_BLOCK_SCHEMA = pa.schema(
    [
        pa.field(PID, pa.int32()),
        pa.field(RUN, pa.int64()),
        pa.field(CHUNK, pa.int32()),
        pa.field(BLOCK, pa.binary()),
    ]
)
GROUP, ENTRIES, WEIGHT_SUM = "group", "entries", "weight_sum"
_WRITTEN_SCHEMA = pa.schema(
    [
        pa.field(S.SHARD, pa.int32()),
        pa.field(GROUP, pa.int32()),
        pa.field(ENTRIES, pa.int64()),
        pa.field(WEIGHT_SUM, pa.float64()),
    ]
)


def _kernels() -> ModuleType:
    """The compiled kernels (`kernels`), imported where pairs are counted: in the tasks.
    The driver only plans the stage, so it never loads numba (README, whole `prepare`)."""
    from embedpipe.corpus import kernels

    return kernels


def weight_scale(window: int) -> int:
    """L = lcm(1..window): every 1/d weight is the integer L / d in these units."""
    return math.lcm(*range(1, window + 1))


class PairCounter:
    """Sums pair units over many batches of id lists, in memory bounded by its buffers.

    `add` counts unordered pairs; `drain` returns the sums as ordered entries (both
    directions) sorted by (row % shards, row, col) and starts afresh.
    """

    def __init__(
        self,
        window: int,
        vocab_size: int,
        dense_cells: int = DENSE_CELLS,
        sparse_keys: int = SPARSE_KEYS,
    ) -> None:
        scale = weight_scale(window)
        self.window, self.vocab_size = window, vocab_size
        self.units = np.array([0] + [scale // d for d in range(1, window + 1)], np.int64)
        self.id_bits = max(1, (vocab_size - 1).bit_length())
        self.d_bits = window.bit_length()
        if 2 * self.id_bits + self.d_bits > 63:
            raise ValueError(f"vocabulary of {vocab_size} ids and window {window}: too large")
        if dense_cells > 0:
            self.lim, self.base, cells = _kernels().dense_layout(vocab_size, dense_cells)
        else:  # no dense table: every row is empty (lim[a] = a)
            self.lim = np.arange(vocab_size, dtype=np.int64)
            self.base, cells = np.zeros(vocab_size, np.int64), 0
        # uint32 cells while a few units fit (window <= 12); a full cell spills to the keys.
        dtype = np.uint32 if scale <= 1 << 16 else np.int64
        self.dense = np.zeros(cells, dtype)
        self.room = np.iinfo(dtype).max - self.units
        self.keys = np.empty(max(sparse_keys, 2 * window), np.int64)
        self.n_keys = 0
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    @property
    def sparse_pairs(self) -> int:
        """Distinct pairs held in sorted runs (an upper bound: runs may share pairs)."""
        return sum(len(k) for k, _ in self.runs)

    def add(self, ids: pa.ListArray) -> None:
        """Count the pairs of every id list (a ListArray of int32, possibly sliced)."""
        offsets = np.asarray(ids.offsets, dtype=np.int64)
        values = ids.values.to_numpy(zero_copy_only=False)
        if len(ids) == 0 or offsets[-1] == offsets[0]:
            return
        top = int(values[offsets[0] : offsets[-1]].max())
        if top >= self.vocab_size:
            raise ValueError(f"id {top} is outside the vocabulary of {self.vocab_size} ids")
        seq, pos = 0, int(offsets[0])
        while seq < len(ids):
            seq, pos, self.n_keys = _kernels().count_windows(
                values, offsets, seq, pos, self.window, len(S.SPECIAL_TOKENS),
                self.lim, self.base, self.dense, self.room, self.units,
                self.keys, self.n_keys, self.id_bits, self.d_bits,
            )  # fmt: skip
            if seq < len(ids):
                self.flush()

    def flush(self) -> None:
        """Sort and reduce the buffered keys into a run; merge runs of similar size."""
        if self.n_keys == 0:
            return
        keys = np.sort(self.keys[: self.n_keys])
        self.runs.append(_kernels().reduce_packed(keys, self.d_bits, self.units))
        self.n_keys = 0
        while len(self.runs) > 1 and 2 * len(self.runs[-1][0]) >= len(self.runs[-2][0]):
            last = self.runs.pop()
            self.runs.append(_kernels().merge_two(*self.runs.pop(), *last))

    def drain(self, shards: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, units, shard starts) of every entry, key = row << 32 | col, sorted by
        (row % shards, row, col); shard k is keys[starts[k]:starts[k + 1]]."""
        self.flush()
        sparse_keys, sparse_units = _kernels().merge_runs(self.runs)
        left, right, units = _kernels().unordered_pairs(
            self.lim, self.base, self.dense, sparse_keys, sparse_units, self.id_bits
        )
        self.runs = []
        self.dense[:] = 0
        return _kernels().ordered_by_shard(left, right, units, self.vocab_size, shards)


def warm_up(window: int = CooccurConfig().window) -> None:
    """Run every kernel the stage's tasks run, on a few ids and the tasks' own argument
    types, so that this process holds their machine code: the fork server calls it, and
    the workers forked from it count from their first batch (no numba set-up, no cache
    loading, in each of them)."""
    ids = pa.ListArray.from_arrays(
        pa.array([0, 5, 9], pa.int32()), pa.array([5, 6, 7, 5, 6, 7, 5, 6, 7], pa.int32())
    )
    for dense_cells in (DENSE_CELLS, 0):  # the dense table, then only sorted runs
        counter = PairCounter(window, 8, dense_cells=dense_cells, sparse_keys=2 * window)
        counter.add(ids)
        counter.add(ids)  # a second run: runs are merged
        blocks = block_rows(*counter.drain(2), [0, 8], 0)  # Arrow blocks, as shuffled
        merge_blocks(pa.Table.from_batches(list(blocks), _BLOCK_SCHEMA))


def count_pairs(
    ids: pa.ListArray, window: int, vocab_size: int | None = None, dense_cells: int = DENSE_CELLS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed (row, col, weight) of one batch of id lists, sorted by (row, col)."""
    if vocab_size is None:
        flat = ids.flatten().to_numpy(zero_copy_only=False)
        vocab_size = int(flat.max()) + 1 if len(flat) else len(S.SPECIAL_TOKENS)
    counter = PairCounter(window, vocab_size, dense_cells=dense_cells)
    counter.add(ids)
    keys, units, _ = counter.drain()
    return (
        (keys >> 32).astype(np.int32),
        (keys & 0xFFFFFFFF).astype(np.int32),
        units / weight_scale(window),
    )


def group_bounds(
    counts: np.ndarray, window: int, shards: int, group_entries: int = GROUP_ENTRIES
) -> list[int]:
    """Row ranges [b[g], b[g+1]) that cut every shard into groups of bounded entries.

    Row i has at most min(2 * window * count_i, V) entries; the groups split the sum of
    these bounds evenly, as many as needed for each (shard, group) to stay under
    `group_entries` (shards take every S-th row, so each gets about 1/S of a range).
    """
    vocab_size = len(counts)
    bound = np.minimum(2 * window * counts.astype(np.int64), vocab_size)
    bound[: len(S.SPECIAL_TOKENS)] = 0
    total = int(bound.sum())
    groups = max(1, math.ceil(total / (shards * group_entries)))
    cum = np.cumsum(bound)
    cuts = [int(np.searchsorted(cum, total * g / groups, side="left")) for g in range(1, groups)]
    return sorted({0, *cuts, vocab_size})


def encode_block(keys: np.ndarray, units: np.ndarray) -> bytes:
    """A sorted run of (row << 32 | col, units) as compact bytes (`kernels.encode_run`:
    varints of row and col gaps and units, about 3 bytes an entry)."""
    return _kernels().encode_run(keys, units).tobytes()


def decode_block(block: pa.Buffer | bytes) -> tuple[np.ndarray, np.ndarray]:
    """(keys, units) of an `encode_block` run."""
    return _kernels().decode_run(np.frombuffer(block, np.uint8))


def block_rows(
    keys: np.ndarray, units: np.ndarray, starts: np.ndarray, bounds: Sequence[int], run: int
) -> Iterator[pa.RecordBatch]:
    """Blocks of one drained run, one or more per non-empty (shard, group), as batches."""
    groups = len(bounds) - 1
    key_bounds = np.asarray(bounds, np.int64) << 32
    for shard in range(len(starts) - 1):
        lo, hi = int(starts[shard]), int(starts[shard + 1])
        cuts = lo + np.searchsorted(keys[lo:hi], key_bounds)
        for group in range(groups):
            a, b = int(cuts[group]), int(cuts[group + 1])
            if a == b:
                continue
            blocks = pa.array(
                [
                    encode_block(
                        keys[i : min(i + BLOCK_ENTRIES, b)], units[i : min(i + BLOCK_ENTRIES, b)]
                    )
                    for i in range(a, b, BLOCK_ENTRIES)
                ],
                pa.binary(),
            )
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(np.full(len(blocks), shard * groups + group, np.int32)),
                    pa.array(np.full(len(blocks), run, np.int64)),
                    pa.array(np.arange(len(blocks), dtype=np.int32)),
                    blocks,
                ],
                schema=_BLOCK_SCHEMA,
            )


def merge_blocks(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Merge the blocks of one (shard, group): chunks of a run in order, then runs."""
    table = table.sort_by([(RUN, "ascending"), (CHUNK, "ascending")])
    runs: list[tuple[np.ndarray, np.ndarray]] = []
    current, parts = None, []
    for run, block in zip(table.column(RUN).to_pylist(), table.column(BLOCK), strict=True):
        if run != current and parts:
            runs.append(_concat(parts))
            parts = []
        current = run
        parts.append(decode_block(block.as_buffer()))
    if parts:
        runs.append(_concat(parts))
    return _kernels().merge_runs(runs)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([k for k, _ in parts]), np.concatenate([u for _, u in parts])


def entries_table(keys: np.ndarray, units: np.ndarray, window: int, min_weight: float) -> pa.Table:
    """COOCCUR_SCHEMA rows of merged (key, units): weight = units / L as float32."""
    weight = units.astype(np.float64) / float(weight_scale(window))
    if min_weight > 0:
        keep = weight >= min_weight
        keys, weight = keys[keep], weight[keep]
    return pa.Table.from_arrays(
        [
            pa.array((keys >> 32).astype(np.int32)),
            pa.array((keys & 0xFFFFFFFF).astype(np.int32)),
            pa.array(weight.astype(np.float32)),
        ],
        schema=S.COOCCUR_SCHEMA,
    )


def write_cooccur(
    spark: SparkSession,
    sequences_url: str,
    config: CooccurConfig,
    counts: np.ndarray,
    out: str,
    group_entries: int = GROUP_ENTRIES,
) -> list[dict[str, Any]]:
    """Count the co-occurrences of the sequences table into `out` (shard=k/part-g.parquet).

    Map tasks: one per part file of the sequences table (`parts.map_parts`).
    `counts`: the vocabulary's counts by id (model-sized). Returns one dict per written
    file: shard, group, entries, weight_sum.
    """
    window, shards, min_weight = config.window, config.num_shards, config.min_weight
    vocab_size = len(counts)
    bounds = group_bounds(counts, window, shards, group_entries)
    groups = len(bounds) - 1
    out = out.rstrip("/")

    def count_part(batches: Iterator[pa.RecordBatch], part: int) -> Iterator[pa.RecordBatch]:
        counter, flushes = PairCounter(window, vocab_size), 0
        for batch in batches:
            counter.add(batch.column(S.IDS))
            if counter.sparse_pairs >= MAX_SPARSE:
                yield from block_rows(*counter.drain(shards), bounds, (part << 24) + flushes)
                flushes += 1
        yield from block_rows(*counter.drain(shards), bounds, (part << 24) + flushes)

    def merge_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = table_of(batches, _BLOCK_SCHEMA)
        for pid in sorted(set(table.column(PID).to_pylist())):
            shard, group = divmod(pid, groups)
            part = table.filter(pc.equal(table.column(PID), pid))
            merged = entries_table(*merge_blocks(part), window, min_weight)
            if merged.num_rows:
                url = f"{out}/{S.SHARD}={shard}/{part_name(group)}"
                write_table(merged, url, ROW_GROUP_ROWS, options=PARQUET_OPTIONS)
            weight_sum = float(np.sum(merged.column(S.WEIGHT).to_numpy(), dtype=np.float64))
            yield pa.RecordBatch.from_pylist(
                [{S.SHARD: shard, GROUP: group, ENTRIES: merged.num_rows, WEIGHT_SUM: weight_sum}],
                schema=_WRITTEN_SCHEMA,
            )

    blocks = map_parts(spark, sequences_url, [S.IDS], count_part, _BLOCK_SCHEMA)
    written = blocks.repartitionById(shards * groups, PID).mapInArrow(
        merge_partition, S.spark_ddl(_WRITTEN_SCHEMA)
    )
    files = sorted((r.asDict() for r in written.collect()), key=lambda r: (r[S.SHARD], r[GROUP]))
    finish_table(out, S.COOCCUR_SCHEMA)
    return files
