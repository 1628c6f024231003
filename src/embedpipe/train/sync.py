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

Staleness: a rank sees another rank's change of interval k after the boundary that ends
interval k + 1, so it trains without at most the last two intervals of the other ranks'
changes: 2 x sync_every x (world - 1) words. Word2vec's Hogwild threads already train on
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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from embedpipe.train.kernels import add_rows, row_deltas


@dataclass
class Exchange:
    """One launched exchange: my rows and deltas, and (when done) the union and the sums."""

    rows: list[torch.Tensor]  # per table: rows I touched (sorted, int64)
    deltas: list[torch.Tensor]  # per table: tables - base on those rows, at launch
    unions: list[torch.Tensor] | None = None  # per table: rows any rank touched
    sums: list[torch.Tensor] | None = None  # per table: the other ranks' deltas, on unions
    error: BaseException | None = None


class RowSync:
    """The overlapped delta exchange of `tables` between the ranks of `group`."""

    def __init__(
        self,
        tables: Sequence[torch.Tensor],
        group: dist.ProcessGroup | None,
        world: int,
        payload: torch.dtype = torch.float32,
    ) -> None:
        self.tables = list(tables)
        self.base = [t.detach().clone() for t in self.tables]
        self.group = group
        self.world = world
        self.payload = payload
        # Rows touched since the last boundary, marked by the loop per batch (numpy: cheap).
        self.touched = [np.zeros(t.shape[0], dtype=np.bool_) for t in self.tables]
        self.pending: tuple[Exchange, threading.Thread] | None = None
        self.syncs = 0
        self.bytes = 0  # payload this rank sent: row ids gathered + values reduced

    def mark(self, table: int, rows: np.ndarray) -> None:
        """Note that a batch touches `rows` of table number `table`."""
        self.touched[table][rows] = True

    def boundary(self) -> None:
        """End an interval: apply the previous exchange, launch this interval's."""
        self._apply_pending()
        exchange = self._snapshot()
        thread = threading.Thread(target=self._run, args=(exchange,), daemon=True)
        thread.start()
        self.pending = (exchange, thread)

    def finish(self) -> None:
        """Exchange everything now; afterwards every rank's tables equal the common base
        (checked: a checksum of the tables, compared across ranks)."""
        self._apply_pending()
        exchange = self._snapshot()
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

    def summary(self) -> dict[str, int]:
        """What the exchange cost this rank: syncs and bytes sent."""
        return {
            "syncs": self.syncs,
            "bytes_sent": self.bytes,
            "bytes_per_sync": round(self.bytes / max(self.syncs, 1)),
        }

    def _snapshot(self) -> Exchange:
        rows, deltas = [], []
        for table, base, touched in zip(self.tables, self.base, self.touched, strict=True):
            r = torch.from_numpy(np.flatnonzero(touched)).to(table.device)
            touched[:] = False
            rows.append(r)
            if table.device.type == "cpu":
                delta = torch.empty((len(r), *table.shape[1:]), dtype=table.dtype)
                row_deltas(as_rows(table), as_rows(base), r.numpy(), as_rows(delta))
            else:
                delta = table.detach()[r] - base[r]
            deltas.append(delta)
        return Exchange(rows, deltas)

    def _apply_pending(self) -> None:
        if self.pending is None:
            return
        exchange, thread = self.pending
        self.pending = None
        thread.join()
        self._apply(exchange)

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
                    add_rows(as_rows(table), union.numpy(), as_rows(others.contiguous()))
                else:
                    table.index_add_(0, union, others)

    def _run(self, exchange: Exchange) -> None:
        """On the exchange thread: the sum over ranks, added to the base; then what the
        tables lack of it (the sum less this rank's own delta, which they hold already).
        The base is read again only at the next boundary, after this thread is joined."""
        try:
            unions, sums = self._sum_over_ranks(exchange)
            with torch.no_grad():
                for i, (union, total) in enumerate(zip(unions, sums, strict=True)):
                    if total.device.type == "cpu":
                        add_rows(as_rows(self.base[i]), union.numpy(), as_rows(total))
                    else:
                        self.base[i].index_add_(0, union, total)
                    total[torch.searchsorted(union, exchange.rows[i])] -= exchange.deltas[i]
            exchange.unions, exchange.sums = unions, sums
        except BaseException as e:  # surfaced by _apply on the training thread
            exchange.error = e

    def _sum_over_ranks(self, exchange: Exchange) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """All-gather every table's row ids at once, then one all-reduce over the unions."""
        rows, device = exchange.rows, self.tables[0].device
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64, device=device)
        widths = gather(counts, self.world, self.group).max(dim=0).values.tolist()
        starts = np.cumsum([0, *widths]).tolist()
        mine = torch.full((starts[-1],), -1, dtype=torch.int32, device=device)
        for r, start in zip(rows, starts, strict=False):
            mine[start : start + len(r)] = r
        every = gather(mine, self.world, self.group)
        unions = []
        for start, stop in zip(starts, starts[1:], strict=False):
            ids = every[:, start:stop].reshape(-1)
            unions.append(torch.unique(ids[ids >= 0]).long())  # sorted
        shapes = [(len(u), *t.shape[1:]) for u, t in zip(unions, self.tables, strict=True)]
        offsets = np.cumsum([0, *(int(np.prod(s)) for s in shapes)]).tolist()
        values = torch.zeros(offsets[-1], dtype=self.payload, device=device)
        views = []
        for i, union in enumerate(unions):
            view = values[offsets[i] : offsets[i + 1]].view(shapes[i])
            view[torch.searchsorted(union, rows[i])] = exchange.deltas[i].to(self.payload)
            views.append(view)
        dist.all_reduce(values, group=self.group)
        self.syncs += 1
        self.bytes += mine.numel() * mine.element_size() + values.numel() * values.element_size()
        return unions, [v.to(self.tables[i].dtype) for i, v in enumerate(views)]


def as_rows(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a 2-D numpy view (rows x width; a 1-D table is one column)."""
    array = tensor.detach().numpy()
    return array.reshape(len(array), int(np.prod(array.shape[1:], dtype=np.int64)))


def gather(tensor: torch.Tensor, world: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's `tensor`, stacked (world, *shape)."""
    every = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(every, tensor, group=group)
    return torch.stack(every)
