"""Periodic, overlapped exchange of the rows ranks changed: local training, summed deltas.

Every rank trains its own replica of the tables in place, as one process does, and marks
the rows each batch touches. At every sync boundary (the loop calls `boundary()` every
`sync_every` words a rank, at the same step on every rank) a rank

1. waits for the exchange it launched at the previous boundary and applies it: the base
   (the state every rank agrees on) has gained the sum S of all ranks' deltas on the union
   of their rows (on the exchange thread), and the rank's tables gain S minus its own delta
   d, which they already hold (one pass over the union rows on the training thread);
2. snapshots its new delta d = tables - base on the rows it touched since, and hands it to
   a background thread that sums it over ranks (one all-gather of row ids, one dense
   all-reduce of the values over the union of rows) while the next interval trains.

The loop applies the exchange launched at a boundary (`settle()`) once a share `overlap`
of the next interval has trained (`sync_overlap`, at the same step on every rank: words
are agreed), or at the next boundary, whichever comes first.

Staleness: a rank sees another rank's change of interval k once a share `overlap` of
interval k + 1 has trained, so it trains without at most (1 + overlap) x sync_every x
(world - 1) words of the other ranks' changes (2 x sync_every x (world - 1) with overlap 1).
With `hot_rows`, that holds for the rows of the most frequent words; the other rows go at
every `full_every`-th boundary, so a rank may miss up to (full_every + overlap) x
sync_every x (world - 1) words of the other ranks' changes to a rare word (a few occurrences: most rows of the output table are touched only as
negative samples, with tiny steps). Word2vec's Hogwild threads already train on
rows that other threads change under them; local SGD with periodic averaging (Ji et al.
2016, pWord2Vec) converges the same way for these sparse, small-step updates, and the
bench measures the scores (bench/scaleout.py).

Traffic per boundary is the union of touched rows x width (float32, or bfloat16 with
`payload=torch.bfloat16`): it grows with `sync_every`, never with the vocabulary. The
exchange runs on its own process group, so its collectives never interleave with the
loop's (`agree`, cursors) in another order on another rank. `finish()` drains everything
and sets every rank's tables to the base: after it, all ranks hold bit-identical tables
(the state checkpoints save).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from embedpipe.train.kernels import add_rows, merge_sums, pack_rows, row_deltas


@dataclass
class Exchange:
    """One launched exchange: my rows and deltas, and (when done) the union and the sums."""

    rows: list[torch.Tensor]  # per table: rows I send (sorted, int64)
    deltas: list[torch.Tensor]  # per table: tables - base on those rows, at launch
    unions: list[torch.Tensor] | None = None  # per table: rows any rank sent
    sums: list[torch.Tensor] | None = None  # per table: the other ranks' deltas, on unions
    error: BaseException | None = None


class RowSync:
    """The overlapped delta exchange of `tables` between the ranks of `group`.

    Rows are vocabulary ids, which the vocabulary sorts by count: the first `hot_rows` of a
    table are its most frequent words. Those are exchanged at every boundary; the others,
    touched far less often, at every `full_every`-th boundary (their deltas keep adding up
    in the tables meanwhile, so nothing is lost, only seen later). `hot_rows` may instead
    give each table its own hot rows, as a boolean mask (a table whose hot rows are not
    its first ones: fastText's n-gram rows) or None (every row hot).
    """

    def __init__(
        self,
        tables: Sequence[torch.Tensor],
        group: dist.ProcessGroup | None,
        world: int,
        payload: torch.dtype = torch.float32,
        hot_rows: int | Sequence[np.ndarray | None] | None = None,
        full_every: int = 1,
    ) -> None:
        self.tables = list(tables)
        self.base = [t.detach().clone() for t in self.tables]
        self.group = group
        self.world = world
        self.payload = payload
        self.hot: list[int | np.ndarray | None] = (
            list(hot_rows) if isinstance(hot_rows, Sequence) else [hot_rows] * len(self.tables)
        )
        self.full_every = full_every
        # Rows touched since they were last sent, marked by the loop per batch (numpy: cheap).
        self.touched = [np.zeros(t.shape[0], dtype=np.bool_) for t in self.tables]
        self.pending: tuple[Exchange, threading.Thread] | None = None
        self.boundaries = 0
        self.syncs = 0
        self.bytes = 0  # payload this rank sent: row ids gathered + values reduced
        # Where the exchange's time goes: seconds the exchange thread ran (wall) and its own
        # CPU seconds (packing, the base update; gloo's copies run on gloo's threads), seconds
        # the training thread spends in snapshots and applies, and waits for an exchange.
        self.exchange_seconds = self.exchange_cpu = 0.0
        self.boundary_seconds = self.wait_seconds = 0.0
        # Grow-only buffers, reused by every exchange: fresh ones of tens of MB each time
        # cost page faults (kernel time) on every boundary.
        self._deltas = [torch.empty(0, dtype=t.dtype) for t in self.tables]
        self._values = torch.empty(0, dtype=torch.float32)
        self._wire = torch.empty(0, dtype=payload)

    def mark(self, table: int, rows: np.ndarray) -> None:
        """Note that a batch touches `rows` of table number `table`."""
        self.touched[table][rows] = True

    def boundary(self) -> None:
        """End an interval: apply the previous exchange (unless settled), launch this one's."""
        self.settle()
        self.boundaries += 1
        start = time.perf_counter()
        exchange = self._snapshot(full=self.boundaries % self.full_every == 0)
        self.boundary_seconds += time.perf_counter() - start
        thread = threading.Thread(target=self._run, args=(exchange,), daemon=True)
        thread.start()
        self.pending = (exchange, thread)

    def settle(self) -> None:
        """Apply the exchange launched at the last boundary, waiting for it if it still runs
        (nothing when none is pending). Called at the same step on every rank."""
        if self.pending is None:
            return
        exchange, thread = self.pending
        self.pending = None
        start = time.perf_counter()
        thread.join()
        joined = time.perf_counter()
        self._apply(exchange)
        self.wait_seconds += joined - start
        self.boundary_seconds += time.perf_counter() - joined

    def finish(self) -> None:
        """Exchange everything now; afterwards every rank's tables equal the common base
        (checked: a checksum of the tables, compared across ranks)."""
        self.settle()
        exchange = self._snapshot(full=True)
        self._run(exchange)
        self._apply(exchange)
        with torch.no_grad():
            for table, base in zip(self.tables, self.base, strict=True):
                table.copy_(base)
        self.check_replicas()

    def check_replicas(self) -> None:
        """Raise unless every rank's base holds the same values (an order-sensitive checksum
        per table: equal data gives bit-equal sums, as every rank sums in the same order)."""
        sums = []
        for base in self.base:
            flat = base.detach().reshape(-1).double()
            weights = torch.arange(1, len(flat) + 1, dtype=torch.float64, device=flat.device)
            sums += [flat.sum(), (flat * weights.remainder_(7919)).sum()]
        mine = torch.stack(sums)
        every = gather(mine, self.world, self.group)
        if not bool((every == mine).all()):
            raise RuntimeError(f"ranks hold different tables after an exchange: {every.tolist()}")

    def summary(self) -> dict[str, int | float]:
        """What the exchange cost this rank: syncs, bytes sent, and seconds (as __init__)."""
        return {
            "syncs": self.syncs,
            "bytes_sent": self.bytes,
            "bytes_per_sync": round(self.bytes / max(self.syncs, 1)),
            "exchange_seconds": round(self.exchange_seconds, 3),
            "exchange_cpu_seconds": round(self.exchange_cpu, 3),
            "boundary_seconds": round(self.boundary_seconds, 3),
            "wait_seconds": round(self.wait_seconds, 3),
        }

    def _snapshot(self, full: bool) -> Exchange:
        """On the training thread: the rows to send (all touched ones, or the hot ones) and
        their deltas, which stop counting as touched."""
        rows, deltas = [], []
        for i, (table, base, touched) in enumerate(
            zip(self.tables, self.base, self.touched, strict=True)
        ):
            r = torch.from_numpy(take_rows(touched, None if full else self.hot[i]))
            r = r.to(table.device)
            rows.append(r)
            if table.device.type == "cpu":
                self._deltas[i] = grown(self._deltas[i], (len(r), *table.shape[1:]))
                delta = self._deltas[i][: len(r)]
                row_deltas(as_rows(table), as_rows(base), r.numpy(), as_rows(delta))
            else:
                delta = table.detach()[r] - base[r]
            deltas.append(delta)
        return Exchange(rows, deltas)

    def _apply(self, exchange: Exchange) -> None:
        """Add the other ranks' changes to the tables: one pass over the union rows on the
        training thread (the base was updated by the exchange thread)."""
        if exchange.error is not None:
            raise RuntimeError("the row exchange between ranks failed") from exchange.error
        assert exchange.unions is not None and exchange.sums is not None
        with torch.no_grad():
            for table, union, others in zip(
                self.tables, exchange.unions, exchange.sums, strict=True
            ):
                if table.device.type == "cpu":
                    add_rows(as_rows(table), union.numpy(), as_rows(others))
                else:
                    table.index_add_(0, union, others)

    def _run(self, exchange: Exchange) -> None:
        """On the exchange thread: the sum over ranks, added to the base; then what the
        tables lack of it (the sum less this rank's own delta, which they hold already).
        The base is read again only at the next boundary, after this thread is joined."""
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            unions, positions = self._unions(exchange.rows)
            sums = self._sum_over_ranks(exchange, unions, positions)
            with torch.no_grad():
                for i, (union, total) in enumerate(zip(unions, sums, strict=True)):
                    if total.device.type == "cpu":
                        merge_sums(
                            as_rows(self.base[i]),
                            union.numpy(),
                            as_rows(total),
                            positions[i].numpy(),
                            as_rows(exchange.deltas[i]),
                        )
                    else:
                        self.base[i].index_add_(0, union, total)
                        total[positions[i]] -= exchange.deltas[i]
            exchange.unions, exchange.sums = unions, sums
        except BaseException as e:  # surfaced by _apply on the training thread
            exchange.error = e
        self.exchange_cpu += time.thread_time() - cpu
        self.exchange_seconds += time.perf_counter() - start

    def _unions(self, rows: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """All-gather every table's row ids at once: per table the sorted union of the rows
        any rank sends, and where this rank's rows sit in it."""
        device = self.tables[0].device
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64, device=device)
        widths = gather(counts, self.world, self.group).max(dim=0).values.tolist()
        starts = np.cumsum([0, *widths]).tolist()
        mine = torch.full((starts[-1],), -1, dtype=torch.int32, device=device)
        for r, start in zip(rows, starts, strict=False):
            mine[start : start + len(r)] = r
        every = gather(mine, self.world, self.group)
        self.bytes += mine.numel() * mine.element_size()
        unions, positions = [], []
        for table, r, start, stop in zip(self.tables, rows, starts, starts[1:], strict=False):
            ids = every[:, start:stop].reshape(-1)
            if device.type == "cpu":  # a bitmap over the rows: linear, no sort
                member = np.zeros(table.shape[0], dtype=np.bool_)
                member[ids.numpy()] = True  # a -1 pad marks the last row, cleared next
                member[-1] = bool((ids == table.shape[0] - 1).any())
                union = torch.from_numpy(np.flatnonzero(member))
                index = np.cumsum(member, dtype=np.int64) - 1
                where = torch.from_numpy(index[r.numpy()])
            else:
                union = torch.unique(ids[ids >= 0]).long()  # sorted
                where = torch.searchsorted(union, r)
            unions.append(union)
            positions.append(where)
        return unions, positions

    def _sum_over_ranks(
        self, exchange: Exchange, unions: list[torch.Tensor], positions: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """One all-reduce of every table's deltas, placed on the union rows (zeros where this
        rank sent none); returns the sums per table, as float32 views of one buffer."""
        shapes = [(len(u), *t.shape[1:]) for u, t in zip(unions, self.tables, strict=True)]
        offsets = np.cumsum([0, *(int(np.prod(s)) for s in shapes)]).tolist()
        device = self.tables[0].device
        if device.type == "cpu":
            self._values = grown(self._values, (offsets[-1],))
            values = self._values[: offsets[-1]]
        else:
            values = torch.empty(offsets[-1], dtype=torch.float32, device=device)
        views = [
            values[a:b].view(shape)
            for a, b, shape in zip(offsets, offsets[1:], shapes, strict=False)
        ]
        for view, where, delta in zip(views, positions, exchange.deltas, strict=True):
            if device.type == "cpu":
                pack_rows(as_rows(view), where.numpy(), as_rows(delta))
            else:
                view.zero_()[where] = delta
        if self.payload == torch.float32:
            dist.all_reduce(values, group=self.group)
        else:
            if device.type == "cpu":
                self._wire = grown(self._wire, (offsets[-1],))
                wire = self._wire[: offsets[-1]]
            else:
                wire = torch.empty(offsets[-1], dtype=self.payload, device=device)
            wire.copy_(values)
            dist.all_reduce(wire, group=self.group)
            values.copy_(wire)
        self.syncs += 1
        self.bytes += values.numel() * torch.finfo(self.payload).bits // 8
        return views


def take_rows(touched: np.ndarray, hot: int | np.ndarray | None) -> np.ndarray:
    """The touched rows due now, which stop counting as touched: all of them (hot None),
    those below `hot` (an int) or those the mask `hot` marks."""
    if hot is None:
        rows = np.flatnonzero(touched)
        touched[:] = False
    elif isinstance(hot, np.ndarray):
        rows = np.flatnonzero(touched & hot)
        touched[rows] = False
    else:
        rows = np.flatnonzero(touched[:hot])
        touched[:hot] = False
    return rows


def grown(buffer: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`buffer` if it holds at least prod(shape) elements, else a new one 1.5x that size;
    returned reshaped to hold `shape` rows first: callers slice `[:n]`."""
    need = int(np.prod(shape))
    if buffer.numel() < need:
        buffer = torch.empty(int(need * 1.5) + 1, dtype=buffer.dtype)
    rows = buffer.numel() // max(int(np.prod(shape[1:])), 1)
    return buffer[: rows * int(np.prod(shape[1:]))].view(rows, *shape[1:])


def as_rows(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a 2-D numpy view (rows x width; a 1-D table is one column)."""
    array = tensor.detach().numpy()
    return array.reshape(len(array), int(np.prod(array.shape[1:], dtype=np.int64)))


def gather(tensor: torch.Tensor, world: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's `tensor`, stacked (world, *shape)."""
    every = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(every, tensor, group=group)
    return torch.stack(every)
