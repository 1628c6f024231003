"""Fault injection: SIGKILL at every commit point of a publish, an alias move, a delete and a gc.

Each scenario is a job (a list of steps) run on a store prepared by its setup. First the job
runs uninterrupted once per crash point, with that point armed past its last hit: this counts
the point's hits and gives the reference store. Then, for every point and every hit k, a fresh
copy of the setup runs the job in a forked process armed with `EMBEDPIPE_CRASH_AT=point@k`,
which SIGKILLs itself there. After each kill:

* readers: every listed version loads (verified against its manifest), and `latest` and every
  alias resolve to a version that loads: no reader ever sees a partial version;
* the job is rerun from the step that was killed, as a caller retrying it would (a publish with
  `skip_unchanged`, a delete of the version if it is still listed, an alias set again, gc
  again), ending with a gc that removes leftovers (no grace period);
* the store then equals the reference: the same versions in the same order, each with the
  same manifest (but `version` and `created`) and the same files byte for byte (sha256 of
  every file on disk, none missing or added), the same aliases, the same tombstones and no
  leftovers (no uncommitted version directory, no temporary file).

Version numbers: equal to the reference's, except that a publish killed after claiming its
number and before committing burns that number (it is never handed out again, by design):
then exactly one claimed number has neither version nor tombstone, and every later number
is one higher than in the reference.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from embedpipe import faults
from embedpipe.artefacts import ArtefactStore, load, retention
from embedpipe.artefacts.layout import version_number
from embedpipe.schemas import SPECIAL_TOKENS

pytestmark = pytest.mark.slow

NAME = "emb"
POINTS = (
    "publish.claimed",
    "publish.copied",
    "publish.manifest-written",
    "publish.committed",
    "publish.aliased",
    "alias.written",
    "delete.tombstone-written",
    "delete.tombstoned",
    "delete.unlinked",
    "delete.moved",
    "remove.entry",
    "gc.deleted",
)
# Points before a publish's commit: a kill there burns the claimed number.
BURNS = {"publish.claimed", "publish.copied", "publish.manifest-written"}
HOUSEKEEPING = ("gc", 1000)  # the job's last step: deletes nothing, removes leftovers
TOKENS = [*SPECIAL_TOKENS, "king", "queen", "apple"]
STORE_DIRS = {".claims", ".deleted", "aliases"}

Step = tuple[Any, ...]


def sources(directory: Path, i: int) -> dict[str, Path]:
    """The files of publish number i: an embedding artefact plus a nested extra file."""
    out = directory / f"src-{i}"
    if not out.exists():
        (out / "nested").mkdir(parents=True)
        vectors = np.arange(len(TOKENS) * 4, dtype=np.float32).reshape(-1, 4) * (i + 1)
        save_file({"vectors": vectors}, str(out / "vectors.safetensors"))
        vocab = pa.table(
            {
                "id": pa.array(range(len(TOKENS)), pa.int32()),
                "token": TOKENS,
                "count": pa.array(range(len(TOKENS)), pa.int64()),
            }
        )
        pq.write_table(vocab, out / "vocab.parquet")
        (out / "nested" / "extra.bin").write_bytes(os.urandom(3000))
    return {
        "vectors.safetensors": out / "vectors.safetensors",
        "vocab.parquet": out / "vocab.parquet",
        "nested/extra.bin": out / "nested" / "extra.bin",
    }


def run_step(root: Path | str, src: Path, step: Step) -> None:
    """One step of a job, written as a caller retrying it after a crash would write it."""
    kind, *args = step
    store = ArtefactStore(root, keep=args[1] if kind == "publish" else None, grace=0)
    if kind == "publish":
        store.publish(NAME, sources(src, args[0]), {"i": args[0]}, skip_unchanged=True)
    elif kind == "alias":
        store.set_alias(NAME, args[0], args[1])
    elif kind == "delete":
        if args[0] in store.versions(NAME):
            store.delete(NAME, args[0], force=True)
    elif kind == "gc":
        store.gc(NAME, args[0], grace=0)
    else:
        raise ValueError(step)


def run_job(root: Path | str, src: Path, job: list[Step], done: Any = None) -> None:
    for i, step in enumerate(job):
        run_step(root, src, step)
        if done is not None:
            done.value = i + 1


SCENARIOS: dict[str, tuple[list[Step], list[Step]]] = {
    # name: (setup, job)
    "publish": ([], [("publish", 0, None), ("publish", 1, None), ("publish", 2, None)]),
    "publish-keep": (
        [("publish", 0, None), ("alias", "prod", "v0001")],
        [("publish", 1, 2), ("publish", 2, 2), ("publish", 3, 2)],
    ),
    "alias": (
        [("publish", i, None) for i in range(3)],
        [("alias", "prod", "v0001"), ("alias", "prod", "v0003"), ("alias", "canary", "v0002")],
    ),
    "delete": (
        [*(("publish", i, None) for i in range(4)), ("alias", "prod", "v0002")],
        [("delete", "v0004"), ("delete", "v0001"), ("delete", "v0002")],
    ),
    "gc": (
        [*(("publish", i, None) for i in range(6)), ("alias", "prod", "v0002")],
        [("gc", 2), ("gc", 0)],
    ),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, Any]:
    """What a store holds, by content: versions (manifest but version and created; every
    file's sha256), aliases (as positions in the version list), numbers, and leftovers."""
    store = ArtefactStore(root)
    base = root / NAME
    versions = store.versions(NAME)
    content = []
    for v in versions:
        manifest = json.loads((base / v / "manifest.json").read_text())
        for key in ("version", "created"):
            manifest.pop(key)
        files = {
            str(p.relative_to(base / v)): sha256(p)
            for p in sorted((base / v).rglob("*"))
            if p.is_file() and p.name != "manifest.json"
        }
        content.append((manifest, files))
    alias_files = {p.name: p.read_text().strip() for p in (base / "aliases").iterdir()}
    claims = sorted(p.name for p in (base / ".claims").iterdir())
    deleted = base / ".deleted"
    tombstones = sorted(p.name for p in deleted.iterdir()) if deleted.exists() else []
    position = {v: i for i, v in enumerate(versions)}
    return {
        "content": content,
        "aliases": {a: position[v] for a, v in store.aliases(NAME).items()},
        "alias files": {a: position.get(v, v) for a, v in alias_files.items()},
        "numbers": [version_number(v) for v in versions],
        "tombstones": [version_number(t) for t in tombstones],
        "burned": [version_number(c) for c in claims if c not in {*versions, *tombstones}],
        "leftovers": sorted(
            p.name for p in base.iterdir() if p.name not in {*versions, *STORE_DIRS}
        ),
    }


def check_readers(root: Path) -> None:
    """Every listed version loads (verified); latest and every alias name one that loads."""
    store = ArtefactStore(root)
    listed = store.versions(NAME)
    for v in listed:
        assert load(store.location(NAME, v)).manifest.version == v
    for alias, target in store.aliases(NAME).items():
        assert target in listed, (alias, target, listed)
        assert load(NAME, alias, store=store).manifest.version == target
    if listed:
        assert store.resolve(NAME) == store.location(NAME, listed[-1])


def armed(point: str, k: int, fn: Callable[[], None]) -> None:
    """Run fn with crash point `point@k` armed (the hit counter reset)."""
    old = os.environ.get(faults.CRASH_AT)
    os.environ[faults.CRASH_AT] = f"{point}@{k}"
    faults._hits.clear()
    try:
        fn()
    finally:
        faults._hits.clear()
        if old is None:
            del os.environ[faults.CRASH_AT]
        else:
            os.environ[faults.CRASH_AT] = old


def killed_run(root: Path | str, src: Path, job: list[Step], point: str, k: int) -> int:
    """Run the job in a forked process that SIGKILLs itself at `point@k`; return the index of
    the step it was killed in."""
    ctx = multiprocessing.get_context("fork")
    done = ctx.Value("i", 0)

    def child() -> None:
        armed(point, k, lambda: run_job(root, src, job, done))

    process = ctx.Process(target=child)
    process.start()
    process.join(60)
    assert process.exitcode == -9, f"{point}@{k}: exit code {process.exitcode}, not killed"
    return int(done.value)


def count_hits(template: Path, src: Path, job: list[Step], point: str, root: Path) -> int:
    """How often `point` is hit when the job runs uninterrupted on a copy of `template`."""
    shutil.copytree(template, root)
    counts: list[int] = []

    def run() -> None:
        run_job(root, src, job)
        counts.append(faults._hits[point])

    armed(point, 1 << 30, run)
    return counts[0]


def assert_same(expected: dict[str, Any], got: dict[str, Any], may_burn: bool, what: str) -> None:
    """`got` equals the reference `expected`, numbers shifted past a burned one if allowed."""
    assert got["leftovers"] == [], what
    for key in ("content", "aliases", "alias files"):
        assert got[key] == expected[key], f"{what}: {key}"
    burned = sorted(set(got["burned"]) - set(expected["burned"]))
    assert len(burned) <= (1 if may_burn else 0), f"{what}: burned {burned}"
    for b in burned:
        for key in ("numbers", "tombstones"):
            expected = {**expected, key: [n + (n >= b) for n in expected[key]]}
    assert got["numbers"] == expected["numbers"], what
    assert got["tombstones"] == expected["tombstones"], what


@pytest.mark.parametrize("trial", ["path", "file-url"])
def test_a_kill_at_any_commit_point_loses_and_leaks_nothing(
    tmp_path: Path, trial: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every point of every scenario, killed at each of its hits; the store given as a path
    or as a file:// URL."""
    # No writer runs beside the job: its temporary files may be removed at once.
    monkeypatch.setattr(retention, "TEMPORARY_AGE", 0.0)
    src = tmp_path / "src"
    src.mkdir()
    kills: dict[str, int] = {}
    for scenario, (setup, job) in SCENARIOS.items():
        work = tmp_path / scenario
        template = work / "template"
        template.mkdir(parents=True)
        run_job(template, src, setup)
        job = [*job, HOUSEKEEPING]
        expected = None
        for point in POINTS:
            hits = count_hits(template, src, job, point, work / f"reference-{point}")
            reference = snapshot(work / f"reference-{point}")
            expected = expected or reference
            assert reference == expected, f"{scenario}: uninterrupted runs differ"
            for k in range(1, hits + 1):
                root = work / f"{point}-{k}"
                shutil.copytree(template, root)
                given = root.as_uri() if trial == "file-url" else root
                step = killed_run(given, src, job, point, k)
                check_readers(root)
                run_job(given, src, job[step:])
                check_readers(root)
                assert_same(expected, snapshot(root), point in BURNS, f"{scenario} {point}@{k}")
                kills[point] = kills.get(point, 0) + 1
    assert set(kills) == set(POINTS), f"points never hit: {set(POINTS) - set(kills)}"
    print(f"\n{trial}: {len(kills)} points, {sum(kills.values())} kills, 0 failures: {kills}")
