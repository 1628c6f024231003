"""The overlapped row exchange between two real gloo ranks (processes on 127.0.0.1)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from embedpipe.train.sync import RowSync

ROWS, WIDTH, INTERVALS, PER_INTERVAL = 50, 4, 6, 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def changes(rank: int, interval: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """What `rank` adds to each table in one interval: (table, rows, values), reproducible."""
    rng = np.random.default_rng([rank, interval])
    out = []
    for table, width in ((0, WIDTH), (1, None)):
        rows = rng.choice(ROWS, PER_INTERVAL, replace=False)
        shape = (PER_INTERVAL, width) if width else (PER_INTERVAL,)
        out.append((table, rows, rng.standard_normal(shape).astype(np.float32)))
    return out


def with_changes(
    tables: list[torch.Tensor],
    ranks: range,
    intervals: range,
    only: np.ndarray | None = None,
) -> list[torch.Tensor]:
    """`tables` plus the changes of `ranks` in `intervals` (to the rows the mask `only` marks)."""
    for rank in ranks:
        for interval in intervals:
            for table, rows, values in changes(rank, interval):
                keep = np.ones(len(rows), dtype=bool) if only is None else only[rows]
                tables[table][torch.from_numpy(rows[keep])] += torch.from_numpy(values[keep])
    return tables


def initial_tables() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(ROWS, WIDTH, generator=g), torch.randn(ROWS, generator=g)]


def hot_mask(hot: int | str) -> np.ndarray:
    """The hot rows as a mask: the first `hot` rows, or ("even") the even-numbered ones."""
    rows = np.arange(ROWS)
    return rows % 2 == 0 if hot == "even" else rows < hot


def expected_after(
    rank: int, interval: int, hot: int | str, rare_every: int, settled: bool = False
) -> list[torch.Tensor]:
    """What a rank's tables hold after the boundary that ends `interval` (staleness).

    Its own changes up to `interval`; the other rank's hot rows up to interval - 1 (that
    interval's exchange is still in flight), or up to `interval` once it is `settled`; its
    rare rows up to the last applied boundary that sent them (every `rare_every`-th).
    """
    other = range(1 - rank, 2 - rank)
    seen = interval + 1 if settled else interval  # the other rank's intervals applied
    last_full = seen // rare_every * rare_every  # boundaries are numbered from 1
    tables = with_changes(initial_tables(), range(rank, rank + 1), range(interval + 1))
    tables = with_changes(tables, other, range(seen), hot_mask(hot))
    return with_changes(tables, other, range(last_full), ~hot_mask(hot))


def assert_tables(tables: list[torch.Tensor], expected: list[torch.Tensor], tol: float, at: str):
    for t in range(2):
        gap = float((tables[t] - expected[t]).abs().max())
        assert gap < tol, f"{at} table {t}: {gap}"


def worker(
    rank: int, port: int, out: str, payload: str, hot: int | str, rare_every: int, settle: bool
) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tables = initial_tables()
    group = dist.new_group(backend="gloo")
    # "even": each table's hot rows given as a mask (`RowSync`'s per-table form)
    hot_rows = [hot_mask(hot)] * 2 if hot == "even" else hot
    sync = RowSync(
        tables, group, 2, getattr(torch, payload), hot_rows=hot_rows, full_every=rare_every
    )
    tolerance = 1e-5 if payload == "float32" else 0.05
    for interval in range(INTERVALS):
        for table, rows, values in changes(rank, interval):
            tables[table][torch.from_numpy(rows)] += torch.from_numpy(values)
            sync.mark(table, rows)
        sync.boundary()
        expected = expected_after(rank, interval, hot, rare_every)
        assert_tables(tables, expected, tolerance, f"rank {rank} interval {interval}")
        if settle:  # as the loop does partway into the next interval (sync_overlap < 1)
            sync.settle()
            expected = expected_after(rank, interval, hot, rare_every, settled=True)
            assert_tables(tables, expected, tolerance, f"rank {rank} settled {interval}")
    sync.finish()
    torch.save(
        {"tables": tables, "bytes": sync.bytes, "syncs": sync.syncs, "summary": sync.summary()},
        Path(out) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


@pytest.mark.parametrize(
    ("payload", "hot", "rare_every", "settle"),
    [
        ("float32", ROWS, 1, False),
        ("bfloat16", ROWS, 1, False),
        ("float32", 20, 3, False),
        ("float32", "even", 3, False),
        ("float32", 20, 3, True),
    ],
    ids=["float32", "bfloat16", "rare-rows-every-3rd", "hot-rows-by-mask", "settled-early"],
)
def test_two_ranks_end_with_identical_tables_holding_every_change(
    tmp_path: Path,
    payload: str,
    hot: int | str,
    rare_every: int,
    settle: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The spawned ranks import this module by name: from the repository root.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    args = (free_port(), str(tmp_path), payload, hot, rare_every, settle)
    mp.spawn(worker, args=args, nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected = with_changes(initial_tables(), range(2), range(INTERVALS))
    tolerance = 1e-5 if payload == "float32" else 0.05  # bf16 keeps 8 bits of mantissa
    for t in range(2):
        a, b = results[0]["tables"][t], results[1]["tables"][t]
        assert torch.equal(a, b)  # bit-identical replicas after finish()
        assert float((a - expected[t]).abs().max()) < tolerance
    assert results[0]["syncs"] == INTERVALS + 1
    # Traffic is bounded by the rows touched, never the table: ids + values of the union.
    bound = (INTERVALS + 1) * 2 * PER_INTERVAL * (4 + (WIDTH + 1) * 4 * 2)
    assert 0 < results[0]["bytes"] <= bound
    # Where the time went: every figure recorded, none negative.
    summary = results[0]["summary"]
    assert summary["exchange_seconds"] >= summary["exchange_cpu_seconds"] > 0
    assert summary["boundary_seconds"] >= 0 and summary["wait_seconds"] >= 0
