"""Tables as part files read and written by the Python side of Spark tasks.

The stages whose rows are made in Python (Arrow batches) write them with pyarrow from the
task itself instead of handing them back to the JVM, and the stages that consume such a
table read its part files with pyarrow, one task per file (`map_parts`): Spark's
conversions of Arrow lists to rows and back, its Parquet reader and writer for nested
columns were the largest costs of the tokenize, encode and cooccur stages. Spark still
reads the raw text, schedules the tasks, shuffles (vocabulary counts, co-occurrence
blocks) and retries; nothing that grows with the corpus reaches the driver.

Each task writes one file named after its partition (`part-00007.parquet`), through a
hidden temporary name and a rename, so a reader never sees half a file and a retried or
speculative attempt replaces it with the same bytes (a partition's content is a function of
the input). A table read by `map_parts` is cut into tasks by its files alone, so the same
input gives the same output files whatever the cluster (local[*], standalone, YARN). The
stage output becomes visible only when the stage commits (see `commit.run_stage`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

from embedpipe import schemas as S

ROW_GROUP_ROWS = 1 << 17  # rows buffered per Parquet row group of a part file
READ_BATCH_ROWS = 1 << 16  # rows per batch read from a part file
_ROWS_SCHEMA = pa.schema([pa.field("rows", pa.int64())])
_TEMPORARY = re.compile(r"^\.part-\d+\.parquet\.[0-9a-f]{12}$")


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch from Spark with `schema`: Spark's batches carry their own nullability and
    list item names, which Arrow counts as a different schema."""
    if batch.schema.equals(schema):
        return batch
    columns = [c.cast(f.type) for c, f in zip(batch.columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def table_of(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """All the batches of a task's input as one table of `schema` (none: an empty table)."""
    return pa.Table.from_batches([conform(b, schema) for b in batches], schema=schema)


def part_name(partition: int) -> str:
    return f"part-{partition:05d}.parquet"


def task_partition() -> int:
    """The partition index of the running Spark task (0 outside Spark)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.partitionId() if context is not None else 0


class PartWriter:
    """Writes batches into one Parquet file, in row groups of about `row_group_rows` rows.

    Nothing is created until the first row; `close` renames the file into place.
    """

    def __init__(
        self,
        url: str,
        schema: pa.Schema,
        row_group_rows: int = ROW_GROUP_ROWS,
        options: dict[str, Any] | None = None,
    ):
        self.url, self.schema, self.row_group_rows = url, schema, row_group_rows
        self.options = options or {}  # pyarrow ParquetWriter options (encodings)
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.file: Any = None
        self.tmp = ""

    def write(self, batch: pa.RecordBatch) -> None:
        """Add a batch (cast to the file's schema: Spark's batches have nullable fields and
        `element` list items)."""
        if batch.num_rows == 0:
            return
        batch = conform(batch, self.schema)
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        if self.pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self, final: bool = False) -> None:
        """Write the pending rows in whole row groups (and the rest too when `final`)."""
        rows = (
            self.pending_rows
            if final
            else self.pending_rows // self.row_group_rows * self.row_group_rows
        )
        if rows == 0:
            return
        if self.writer is None:
            parent, name = self.path.rsplit("/", 1)
            self.fs.makedirs(parent, exist_ok=True)
            self.tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}"
            self.file = self.fs.open(self.tmp, "wb")
            self.writer = pq.ParquetWriter(self.file, self.schema, **self.options)
        table = pa.Table.from_batches(self.pending, schema=self.schema)
        self.writer.write_table(table.slice(0, rows), row_group_size=self.row_group_rows)
        rest = table.slice(rows)
        self.pending = rest.to_batches() if rest.num_rows else []
        self.pending_rows = rest.num_rows
        self.rows += rows

    def close(self) -> int:
        """Finish the file (if any row was written); returns the rows written."""
        self._flush(final=True)
        if self.writer is not None:
            self.writer.close()
            self.file.close()
            self.fs.mv(self.tmp, self.path)
            self.writer = None
        return self.rows

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
                self.file.close()
            finally:
                self.fs.rm(self.tmp)
            self.writer = None


def write_table(
    table: pa.Table,
    url: str,
    row_group_rows: int = 1 << 20,
    empty_ok: bool = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Write a whole table as one file (temporary name, then rename); an empty table
    writes nothing unless `empty_ok`."""
    if table.num_rows == 0 and empty_ok:
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            pq.write_table(table, f)
        return
    writer = PartWriter(url, table.schema, row_group_rows, options)
    try:
        for batch in table.to_batches():
            writer.write(batch)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def data_files(url: str) -> list[str]:
    """The Parquet files of a table directory, leaving out hidden (`.`, `_`) files and dirs."""
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        return []
    return sorted(
        p
        for p in fs.find(root)
        if p.endswith(".parquet")
        and not any(part.startswith((".", "_")) for part in p[len(root) :].split("/") if part)
    )


def read_batches(
    url: str, columns: list[str], batch_rows: int = READ_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The rows of one Parquet file, in order, in batches of `batch_rows` (one thread:
    a Spark task has one core)."""
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        yield from pq.ParquetFile(f).iter_batches(
            batch_size=batch_rows, columns=columns, use_threads=False
        )


def map_parts(
    spark: SparkSession,
    table_url: str,
    columns: list[str],
    function: Callable[[Iterator[pa.RecordBatch], int], Iterator[pa.RecordBatch]],
    schema: pa.Schema,
) -> DataFrame:
    """A DataFrame of `function(batches of part i, i)` over the part files of a table, one
    Spark task per file (task i reads file i with pyarrow; nothing passes through the JVM
    but the task's result rows, of `schema`)."""
    fs, _ = fsspec.core.url_to_fs(table_url)
    files = [fs.unstrip_protocol(p) for p in data_files(table_url)]
    if not files:
        raise FileNotFoundError(f"{table_url} holds no Parquet files")

    def run(items: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for item in items:
            for i in item.column(0).to_pylist():
                yield from function(read_batches(files[i], columns), i)

    n = len(files)
    return spark.range(0, n, numPartitions=n).mapInArrow(run, S.spark_ddl(schema))


def write_dataframe(df: DataFrame, url: str, schema: pa.Schema) -> int:
    """Write a DataFrame's rows (columns named as `schema`) as `part-<partition>.parquet`
    files from its tasks, in partition order; returns the number of rows.

    Used for the tables Spark computes, so that every table of the pipeline is written
    the same way: Spark's own writer (parquet-mr) lists each column's encodings in a hash
    order that differs from one JVM to the next, so its files are not byte-identical
    between runs in different processes.
    """
    out = url.rstrip("/")

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        writer = PartWriter(f"{out}/{part_name(task_partition())}", schema)
        try:
            for batch in batches:
                writer.write(batch)
            rows = writer.close()
        except BaseException:
            writer.abort()
            raise
        yield pa.RecordBatch.from_pylist([{"rows": rows}], schema=_ROWS_SCHEMA)

    written = df.select(*schema.names).mapInArrow(write_partition, "rows bigint").collect()
    finish_table(out, schema)
    return sum(r["rows"] for r in written)


def finish_table(url: str, schema: pa.Schema) -> None:
    """After the job: remove temporary files that failed or lost attempts left behind, and
    give a table with no data file one empty file so readers learn its schema (Spark's
    writer does the same for an empty result)."""
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        for path in fs.find(root):
            if _TEMPORARY.match(path.rsplit("/", 1)[-1]):
                fs.rm(path)
    if not data_files(url):
        write_table(schema.empty_table(), f"{url.rstrip('/')}/{part_name(0)}", empty_ok=True)
