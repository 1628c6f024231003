"""The stage commit's layout, its lock and its clean-up (no Spark: a small fake stage).

The kills at every commit point are in tests/test_fault_injection.py."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from embedpipe.corpus.spark.commit import run_stage
from embedpipe.corpus.spark.lock import (
    StageBusyError,
    StageLock,
    StageLockLost,
    lock_leftover_pid,
)
from embedpipe.workdir import MANIFEST, Workdir, side_output

_spec = importlib.util.spec_from_file_location(
    "fault_driver", Path(__file__).resolve().parents[1] / "fault_driver.py"
)
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_layout_one_run_per_table_and_side_tables_beside_it(tmp_path: Path) -> None:
    work = tmp_path / "work"
    first = driver.run_fake(str(work), 1)
    second = driver.run_fake(str(work), 2)
    assert not first["skipped"] and not second["skipped"]
    assert driver.run_fake(str(work), 2)["skipped"]
    wd = Workdir(str(work))
    manifest = wd.require("fake")
    assert manifest["data"] == second["data"] != first["data"]
    assert wd.table_path("fake") == f"{work}/fake/{second['data']}"
    assert wd.table_path("fake", "rejects") == f"{work}/fake.rejects/{second['data']}"
    assert wd.table_path("fake", "_rejects") == wd.table_path("fake", "rejects")
    assert sorted(p.name for p in (work / "fake").iterdir()) == [MANIFEST, second["data"]]
    assert [p.name for p in (work / "fake.rejects").iterdir()] == [second["data"]]
    assert {k: list(v) for k, v in manifest["sides"].items()} == {"rejects": ["part-00000.parquet"]}
    assert set(manifest["files"]) == {
        "_model.bin",
        *(f"bucket={i % 2}/part-{i:05d}.parquet" for i in range(driver.FAKE_PARTS)),
    }
    # A plain glob of the table reads one run's parts, and not the side table.
    parts = glob.glob(f"{work}/fake/**/*.parquet", recursive=True)
    assert len(parts) == driver.FAKE_PARTS
    rows = pq.read_table(parts).column("x").to_pylist()
    assert sorted(rows) == sorted(2000 + i * 10 + j for i in range(4) for j in range(10))
    # As does a directory read of the table, through table_path or of <table>/ itself.
    assert pq.read_table(wd.table_path("fake")).num_rows == len(rows)
    duckdb = pytest.importorskip("duckdb")
    glob_read = f"SELECT count(*) FROM read_parquet('{work}/fake/**/*.parquet')"
    assert duckdb.sql(glob_read).fetchall() == [(len(rows),)]
    assert list((work / ".staging").iterdir()) == []


def test_a_manifest_without_a_run_directory_is_the_table_directory(tmp_path: Path) -> None:
    """Tables written before run directories (and test fixtures) keep being read."""
    table = tmp_path / "vocab"
    table.mkdir()
    (table / MANIFEST).write_text(json.dumps({"fingerprint": "f"}))
    wd = Workdir(str(tmp_path))
    assert wd.table_path("vocab") == str(table)
    assert wd.table_path("vocab", "counts") == f"{table}/_counts"
    with pytest.raises(FileNotFoundError, match="no complete output"):
        wd.table_path("tokens")
    assert wd.tokenizer_model == f"{tmp_path}/tokens/_sentencepiece.model"
    assert side_output(f"{tmp_path}/tokens/run-x", "_counts") == f"{tmp_path}/tokens.counts/run-x"


def test_an_old_layout_table_is_replaced_whole(tmp_path: Path) -> None:
    work = tmp_path / "work"
    old = work / "fake"
    (old / "_rejects").mkdir(parents=True)
    (old / "part-00000.parquet").write_bytes(b"old")
    (old / "_rejects" / "part-00000.parquet").write_bytes(b"old")
    (old / MANIFEST).write_text(json.dumps({"fingerprint": "old"}))
    manifest = driver.run_fake(str(work), 1)
    assert sorted(p.name for p in old.iterdir()) == [MANIFEST, manifest["data"]]


@pytest.mark.parametrize("url", ["file", "memory"])
def test_a_second_run_refuses_naming_the_holder(tmp_path: Path, url: str) -> None:
    root = str(tmp_path) if url == "file" else f"memory://locks-{os.getpid()}-{time.time_ns()}"
    path = f"{root}/.staging/encode.lock"
    with StageLock(root, "encode", path, wait=0):
        holder = json.loads(fsspec.open(path).open().read())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(StageBusyError) as refused:
            StageLock(root, "encode", path, wait=0.3).acquire()
        message = str(refused.value)
        assert f"stage encode on workdir {root}" in message
        assert f"host {socket.gethostname()} pid {os.getpid()} since {holder['started']}" in message
    fs, p = fsspec.core.url_to_fs(path)
    assert not fs.exists(p)  # released


def test_a_second_run_waits_for_the_first(tmp_path: Path) -> None:
    path = f"{tmp_path}/.staging/encode.lock"
    first = StageLock(str(tmp_path), "encode", path, wait=0).acquire()
    threading.Timer(0.5, first.release).start()
    started = time.monotonic()
    with StageLock(str(tmp_path), "encode", path, wait=20):
        assert 0.4 < time.monotonic() - started < 15


def test_a_lock_whose_holder_is_gone_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / ".staging" / "encode.lock"
    path.parent.mkdir()
    gone = {"host": socket.gethostname(), "pid": dead_pid(), "started": "then", "token": "x"}
    path.write_text(json.dumps({**gone, "heartbeat": time.time()}))
    with pytest.warns(UserWarning, match=f"pid {gone['pid']} since then: process .* is gone"):
        lock = StageLock(str(tmp_path), "encode", str(path), wait=0).acquire()
    lock.release()
    # Another host's holder is judged by its heartbeat alone.
    far = {"host": "elsewhere", "pid": 1, "started": "then", "token": "y"}
    path.write_text(json.dumps({**far, "heartbeat": time.time()}))
    with pytest.raises(StageBusyError, match="host elsewhere pid 1"):
        StageLock(str(tmp_path), "encode", str(path), wait=0, stale_after=60).acquire()
    path.write_text(json.dumps({**far, "heartbeat": time.time() - 120}))
    with pytest.warns(UserWarning, match="no heartbeat for 120 s"):
        StageLock(str(tmp_path), "encode", str(path), wait=0, stale_after=60).acquire().release()
    assert not path.exists()


def test_a_holder_renews_its_heartbeat_and_notices_a_takeover(tmp_path: Path) -> None:
    path = tmp_path / ".staging" / "encode.lock"
    lock = StageLock(str(tmp_path), "encode", str(path), wait=0, stale_after=1.0).acquire()
    beat = json.loads(path.read_text())["heartbeat"]
    time.sleep(0.5)
    assert json.loads(path.read_text())["heartbeat"] > beat
    lock.check()
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "other"}))
    with pytest.raises(StageLockLost, match="taken over .* does not commit"):
        lock.check()
    lock.release()
    assert path.exists()  # not ours to remove


def test_leftovers_of_killed_runs_are_removed_by_the_next_run(tmp_path: Path) -> None:
    work = tmp_path / "work"
    committed = driver.run_fake(str(work), 1)
    # A killed run's: an uncommitted run directory, its side table, a manifest temporary,
    # its lock, a lock temporary of a dead process, an earlier version's staging dir.
    pid = dead_pid()
    (work / "fake" / "run-20000101T000000-deadbeef" / "bucket=0").mkdir(parents=True)
    (work / "fake.rejects" / "run-20000101T000000-deadbeef").mkdir(parents=True)
    (work / "fake" / f"{MANIFEST}.run-20000101T000000-deadbeef.tmp").write_text("{")
    host = socket.gethostname()
    lock = {"host": host, "pid": pid, "started": "then", "token": "t", "heartbeat": time.time()}
    (work / ".staging" / "fake.lock").write_text(json.dumps(lock))
    (work / ".staging" / f"fake.lock.{host}.{pid}.tabcdef12.tmp").write_text("")
    old_staging = work / ".staging" / "fake-0123456789ab"
    old_staging.mkdir()
    os.utime(old_staging, (time.time() - 7200, time.time() - 7200))
    young_staging = work / ".staging" / "fake-ba9876543210"  # may be a live older version's
    young_staging.mkdir()
    with pytest.warns(UserWarning, match="taking over"):
        again = driver.run_fake(str(work), 1)  # a skip: it tidies all the same
    assert again["skipped"]
    assert sorted(p.name for p in (work / "fake").iterdir()) == [MANIFEST, committed["data"]]
    assert [p.name for p in (work / "fake.rejects").iterdir()] == [committed["data"]]
    assert [p.name for p in (work / ".staging").iterdir()] == [young_staging.name]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    from embedpipe.config import load_config

    def write(out: str) -> dict:
        driver.write_fake(out, 3)
        raise RuntimeError("the job failed")

    config = load_config(None, [f"workdir={tmp_path / 'work'}"])
    with pytest.raises(RuntimeError, match="the job failed"):
        run_stage(driver.fake_stage(), config, write, {"variant": 3})
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [".staging"]
    assert list((tmp_path / "work" / ".staging").iterdir()) == []


def test_lock_leftover_names() -> None:
    assert lock_leftover_pid("encode.lock.node-1.example.com.4242.t0a1b2c3d.tmp", "encode") == (
        "node-1.example.com",
        4242,
    )
    assert lock_leftover_pid("encode.lock.10.0.0.5.77.t12345678.beat.tmp", "encode") == (
        "10.0.0.5",
        77,
    )
    assert lock_leftover_pid("encode.lock", "encode") is None
    assert lock_leftover_pid("bucket.lock.h.1.tabc.tmp", "encode") is None
