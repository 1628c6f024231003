"""Fault injection: processes SIGKILLed at every commit point of a stage and of a checkpoint.

For each crash point (`embedpipe.faults`) a process is killed there, then:
(a) a reader sees a complete table, the old one or the new one, every file the manifest
    lists intact and byte for byte what an uninterrupted run wrote (or no table at all);
(b) the rerun leaves the workdir byte-equal to an uninterrupted run's;
(c) nothing is left over (no run directory, temporary, lock).
Checkpoints alike: a run killed mid-save resumes from the newest complete checkpoint, ends
with the weights of an uninterrupted run, and leaves no temporary directory. Two runs of a
stage started at once never interleave. Each test prints its counts (kill points x trials,
failures): `pytest -s tests/test_fault_injection.py` shows them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.parquet as pq
import pytest
import torch
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

import embedpipe
from embedpipe.corpus.spark import commit, lock
from embedpipe.corpus.spark.commit import table_damage
from embedpipe.faults import CRASH_AT
from embedpipe.train.checkpoint import (
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
)
from embedpipe.workdir import MANIFEST, Workdir

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "fault_driver.py"
SRC = Path(embedpipe.__file__).resolve().parents[1]
RUN = re.compile(r"^run-\d{8}T\d{6}-[0-9a-f]{8}$")  # a stage run's directory
VOLATILE = ("started", "seconds", "data")  # manifest entries that differ from run to run


def load_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


driver = load_module("fault_driver", DRIVER)


# ------------------------------------------------------------------ processes


def child_env(crash: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    if crash:
        env[CRASH_AT] = crash
    return env | extra


def run_driver(
    args: list[str], crash: str | None = None, timeout: float = 180, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DRIVER), *args],
        env=child_env(crash, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def killed(proc: subprocess.CompletedProcess[str], point: str) -> None:
    assert proc.returncode == -9, (
        f"not killed at {point} (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
        f"{proc.stderr[-3000:]}"
    )


class Tally:
    """Trials and failures of one test; a failing trial is recorded, the rest still run."""

    def __init__(self, name: str) -> None:
        self.name, self.trials, self.failures = name, Counter(), []

    @contextlib.contextmanager
    def trial(self, label: str) -> Iterator[None]:
        self.trials[label] += 1
        try:
            yield
        except AssertionError as e:
            self.failures.append(f"{label}: {e}")

    def report(self) -> None:
        points, trials = len(self.trials), sum(self.trials.values())
        print(
            f"\nfault injection [{self.name}]: {points} kill points/cases, {trials} trials, "
            f"{len(self.failures)} failures",
            flush=True,
        )
        assert not self.failures, "\n".join(self.failures)


# ------------------------------------------------------------------ workdir contents


def snapshot(root: str) -> dict[str, bytes | None]:
    """Every file and directory under a workdir (local or fsspec URL): its path with a run
    directory's name as `run` -> its bytes (None for a directory); manifests without the
    entries that differ from run to run. Two runs of one table would collide: refused."""
    fs, base = fsspec.core.url_to_fs(root)
    base = base.rstrip("/")
    found: dict[str, bytes | None] = {}
    if not fs.exists(base):
        return found
    for path, info in sorted(fs.find(base, withdirs=True, detail=True).items()):
        relative = path[len(base) :].strip("/")
        if not relative:
            continue
        name = "/".join("run" if RUN.match(part) else part for part in relative.split("/"))
        assert name not in found, f"two runs of one table under {root}: {path}"
        if info["type"] == "directory":
            found[name] = None
            continue
        data = fs.cat_file(path)
        if path.endswith(f"/{MANIFEST}"):
            manifest = json.loads(data)
            data = json.dumps({k: v for k, v in manifest.items() if k not in VOLATILE}).encode()
        found[name] = data
    return found


def committed_files(root: str, table: str) -> tuple[dict[str, Any] | None, dict[str, bytes]]:
    """What a reader of `table` sees: (its manifest, {file of the run (side tables as
    `<side>:<file>`): bytes}); checks that every file the manifest lists is there."""
    wd = Workdir(root)
    manifest = wd.read_manifest(table)
    if manifest is None:
        return None, {}
    damage = table_damage(wd, table, manifest)
    assert damage is None, f"a reader sees a damaged table: {damage}"
    files = {}
    for side in [None, *manifest.get("sides", {})]:
        fs, path = fsspec.core.url_to_fs(wd.table_path(table, side, manifest))
        for name in manifest["files"] if side is None else manifest["sides"][side]:
            files[f"{side or ''}:{name}"] = fs.cat_file(f"{path}/{name}")
    return manifest, files


def leftovers(snap: dict[str, bytes | None], want: dict[str, bytes | None]) -> set[str]:
    return set(snap) ^ set(want)


# ------------------------------------------------------------------ the stage: local disk

# Points of run_stage and of the fake write, in order; `@N` is the N-th hit.
STAGE_POINTS = (
    "lock.acquired",
    "stage.locked",
    "stage.cleaned",
    "fake.part@2",
    "stage.data_written",
    "stage.manifest_staged",
    "stage.committed",
    "stage.retiring@2",  # one of the old run's two directories removed, not the other
    "stage.retired",
)
COMMITTED_FROM = STAGE_POINTS.index("stage.committed")


def expected_variant(point: str, old: int | None) -> int | None:
    return 2 if STAGE_POINTS.index(point) >= COMMITTED_FROM else old


def test_stage_killed_at_each_commit_point(tmp_path: Path) -> None:
    """Fresh (no table yet) and replacing (an old table of another config), on a local disk."""
    for variant in (1, 2):
        driver.run_fake(str(tmp_path / f"ref-{variant}"), variant)
    driver.run_fake(str(tmp_path / "ref-12"), 1)
    driver.run_fake(str(tmp_path / "ref-12"), 2)
    reference = {v: committed_files(str(tmp_path / f"ref-{v}"), "fake")[1] for v in (1, 2)}
    final = {None: snapshot(str(tmp_path / "ref-2")), 1: snapshot(str(tmp_path / "ref-12"))}

    trials = []
    for old in (None, 1):
        for point in STAGE_POINTS:
            if old is None and point.startswith("stage.retiring"):
                continue  # nothing to retire
            work = tmp_path / f"{point}-{old}"
            if old is not None:
                driver.run_fake(str(work), old)
            trials.append((old, point, work))

    def kill(trial: tuple) -> subprocess.CompletedProcess[str]:
        _, point, work = trial
        return run_driver(["fake", str(work), "2"], crash=point)

    tally = Tally("stage commit, local disk")
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(kill, trials))
    for (old, point, work), proc in zip(trials, procs, strict=True):
        with tally.trial(f"{point} over {'no table' if old is None else 'an old table'}"):
            killed(proc, point)
            # (a) the reader sees the old table or the new one, whole, or none.
            manifest, files = committed_files(str(work), "fake")
            want = expected_variant(point, old)
            got = None if manifest is None else manifest["counts"]["variant"]
            assert got == want, f"a reader sees variant {got}, expected {want}"
            if want is not None:
                assert files == reference[want], "the committed files differ from a whole run's"
                rows = pq.read_table(Workdir(str(work)).table_path("fake")).column("x")
                assert len(rows) == driver.FAKE_PARTS * 10
            # (b) the rerun ends as an uninterrupted run; (c) nothing left over.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rerun = driver.run_fake(str(work), 2)
            assert rerun["skipped"] == (want == 2)
            assert any("taking over the lock" in str(w.message) for w in caught), (
                "the dead run's lock was not taken over"
            )
            snap = snapshot(str(work))
            assert not leftovers(snap, final[old]), f"left over: {leftovers(snap, final[old])}"
            assert snap == final[old], "the rerun's workdir differs from an uninterrupted run's"
    tally.report()


# ------------------------------------------------------------------ the stage: object store


class Killed(BaseException):
    """A simulated SIGKILL: carries the memory filesystem as it was at the crash point."""


def frozen_store() -> tuple[dict[str, bytes], list[str]]:
    store = {k: bytes(v.getbuffer()) for k, v in MemoryFileSystem.store.items()}
    return store, list(MemoryFileSystem.pseudo_dirs)


def thaw_store(frozen: tuple[dict[str, bytes], list[str]]) -> None:
    store, dirs = frozen
    MemoryFileSystem.store.clear()
    MemoryFileSystem.store.update({k: MemoryFile(None, k, v) for k, v in store.items()})
    MemoryFileSystem.pseudo_dirs[:] = dirs


@contextlib.contextmanager
def kill_in_process(monkeypatch: pytest.MonkeyPatch, target: str) -> Iterator[None]:
    """Every crash point raises Killed at `target`, holding the store as it was then; the
    store is put back so (whatever `except`/`finally` blocks did on the way out) it is what
    a SIGKILL would have left."""
    point, _, nth = target.partition("@")
    hits: Counter[str] = Counter()

    def crash_point(name: str) -> None:
        if name == point:
            hits[name] += 1
            if hits[name] == int(nth or 1):
                raise Killed(frozen_store())

    with monkeypatch.context() as m:
        for module in (commit, lock, embedpipe.faults):
            m.setattr(module, "crash_point", crash_point)
        try:
            yield
        except Killed as e:
            thaw_store(e.args[0])
        else:
            raise AssertionError(f"the run did not reach {target}")


def test_stage_killed_at_each_commit_point_on_an_object_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same on fsspec's memory filesystem (no rename; the manifest is one PUT)."""
    base = f"memory://faults-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    try:
        for variant in (1, 2):
            driver.run_fake(f"{base}/ref-{variant}", variant)
        driver.run_fake(f"{base}/ref-12", 1)
        driver.run_fake(f"{base}/ref-12", 2)
        reference = {v: committed_files(f"{base}/ref-{v}", "fake")[1] for v in (1, 2)}
        final = {None: snapshot(f"{base}/ref-2"), 1: snapshot(f"{base}/ref-12")}
        tally = Tally("stage commit, object store (memory://, simulated kill)")
        for old in (None, 1):
            for point in STAGE_POINTS:
                if old is None and point.startswith("stage.retiring"):
                    continue
                work = f"{base}/{point}-{old}"
                with tally.trial(f"{point} over {'no table' if old is None else 'an old table'}"):
                    if old is not None:
                        driver.run_fake(work, old)
                    with kill_in_process(monkeypatch, point):
                        driver.run_fake(work, 2)
                    manifest, files = committed_files(work, "fake")
                    want = expected_variant(point, old)
                    got = None if manifest is None else manifest["counts"]["variant"]
                    assert got == want, f"a reader sees variant {got}, expected {want}"
                    if want is not None:
                        assert files == reference[want]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        driver.run_fake(work, 2)
                    snap = snapshot(work)
                    assert snap == final[old], f"differs: {leftovers(snap, final[old])}"
        tally.report()
    finally:
        fs.rm(base.removeprefix("memory://"), recursive=True)


# ------------------------------------------------------------------ two runs at once


def test_two_runs_of_a_stage_at_once_never_interleave(tmp_path: Path) -> None:
    """Two processes start the stage together (other configs, or the same): with a wait
    both end well, one after the other; without, the second refuses naming the holder.
    The table is always one run's whole output."""
    reference = {}
    for variant in (1, 2):
        driver.run_fake(str(tmp_path / f"ref-{variant}"), variant)
        reference[variant] = committed_files(str(tmp_path / f"ref-{variant}"), "fake")[1]
    tally = Tally("two runs of one stage at once")
    outcomes: Counter[str] = Counter()
    cases = [("wait", (1, 2)), ("wait", (2, 2)), ("refuse", (1, 2))]
    for trial in range(4):
        for mode, variants in cases:
            work = tmp_path / f"{mode}-{variants[0]}{variants[1]}-{trial}"
            wait = "60" if mode == "wait" else "0"
            with tally.trial(f"{mode}, variants {variants}"):
                procs = [
                    subprocess.Popen(
                        [sys.executable, str(DRIVER), "fake", str(work), str(v), wait],
                        env=child_env(**{driver.SLOW_ENV: "0.15"}),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                    for v in variants
                ]
                results = [(p, *p.communicate(timeout=120)) for p in procs]
                for proc, _, err in results:
                    assert "FileNotFoundError" not in err, err[-3000:]
                    if proc.returncode != 0:
                        assert mode == "refuse", err[-3000:]
                        assert "StageBusyError" in err and f"on workdir {work}" in err, err
                        assert "stage fake" in err and "pid" in err and "since" in err, err
                ok = [
                    json.loads(out.splitlines()[-1]) for p, out, _ in results if p.returncode == 0
                ]
                assert ok, "neither run ended"
                ran = [m for m in ok if not m["skipped"]]
                outcomes[
                    f"{mode}: {len(ok)} ended, {len(ran)} ran, {len(results) - len(ok)} refused"
                ] += 1
                manifest, files = committed_files(str(work), "fake")
                assert manifest is not None
                assert files == reference[manifest["counts"]["variant"]]
                assert manifest["data"] == max(ran, key=lambda m: m["started"])["data"]
                entries = sorted(p.name for p in (work / "fake").iterdir())
                assert entries == sorted([MANIFEST, manifest["data"]]), entries
                assert not list((work / ".staging").iterdir())
    print("\n" + "\n".join(f"  {n} x {o}" for o, n in sorted(outcomes.items())))
    tally.report()


# ------------------------------------------------------------------ checkpoints

CHECKPOINT_POINTS = (
    ("checkpoint.weights_written@1", None),  # the first save: nothing to resume from
    ("checkpoint.weights_written@2", 3),  # the second (step 6): step 3 is the newest whole
    ("checkpoint.state_written@2", 3),
    ("checkpoint.marked@2", 3),
    ("checkpoint.renamed@2", 6),
    ("checkpoint.pruned@2", 6),
)


def test_training_killed_mid_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    write_workdir = load_module("train_conftest", HERE / "train" / "conftest.py").write_workdir
    workdir = str(write_workdir(tmp_path / "work"))
    full = driver.run_train(workdir, str(tmp_path / "full"))
    expected = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))[0]
    want_names = [p.name for p in (tmp_path / "full" / "checkpoints").iterdir()]

    def kill(point: str) -> subprocess.CompletedProcess[str]:
        return run_driver(["train", workdir, str(tmp_path / point)], crash=point)

    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(kill, [p for p, _ in CHECKPOINT_POINTS]))
    tally = Tally("training checkpoints")
    for (point, newest), proc in zip(CHECKPOINT_POINTS, procs, strict=True):
        with tally.trial(point):
            killed(proc, point)
            root = tmp_path / point / "checkpoints"
            latest = latest_checkpoint(root)
            assert (latest and int(latest.name.split("-")[1])) == newest, latest
            if latest is not None:
                load_checkpoint(latest)  # complete and intact
            summary = driver.run_train(workdir, str(tmp_path / point))
            assert summary["steps"] == full["steps"]
            got = load_checkpoint(latest_checkpoint(root))[0]
            for name in ("input", "output"):
                assert torch.equal(expected[name], got[name]), name
            names = sorted(p.name for p in root.iterdir())
            assert names == sorted(want_names), f"left over: {names}"
            assert [p.name for p in complete_checkpoints(root)] == want_names
    tally.report()


# ------------------------------------------------------------------ a real Spark stage


@pytest.mark.spark
def test_spark_stage_killed_mid_commit(spark, tmp_path: Path) -> None:
    """build_vocab on Spark, replacing a table of another config: killed after its data
    is written, and after its manifest is committed."""
    from embedpipe.corpus.registry import STAGES

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the cat {i % 7} sat on mat {i % 5} w{i % 40}\n" for i in range(60)))
    base = tmp_path / "base"
    STAGES["tokenize"].run(spark, driver.spark_config(str(base), 1, f'corpus.paths=["{corpus}"]'))

    def stage(workdir: Path, min_count: int) -> dict[str, Any]:
        return STAGES["build_vocab"].run(spark, driver.spark_config(str(workdir), min_count))

    def copy(name: str) -> Path:
        shutil.copytree(base, tmp_path / name)
        return tmp_path / name

    ref = copy("ref")
    stage(ref, 1)
    old = committed_files(str(ref), "vocab")[1]
    stage(ref, 2)
    new = committed_files(str(ref), "vocab")[1]
    want = snapshot(str(ref))
    assert old != new
    tally = Tally("real Spark stage (build_vocab)")
    for point, sees in (("stage.data_written", old), ("stage.committed", new)):
        with tally.trial(point):
            work = copy(point)
            stage(work, 1)
            proc = run_driver(["spark", str(work), "2"], crash=point, timeout=300)
            killed(proc, point)
            assert committed_files(str(work), "vocab")[1] == sees
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stage(work, 2)
            snap = snapshot(str(work))
            assert snap == want, f"differs: {leftovers(snap, want)}"
    tally.report()
