"""Concurrent publishes, gcs and readers: nothing raises after succeeding, readers keep the
version they resolved for a grace period, and otherwise get a retryable VersionGoneError."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from embedpipe.artefacts import (
    ArtefactError,
    ArtefactStore,
    VersionGoneError,
    load,
    read_embeddings,
    verify,
)
from embedpipe.artefacts import loader as loader_module
from embedpipe.schemas import SPECIAL_TOKENS

TOKENS = [*SPECIAL_TOKENS, "king", "queen"]


def artefact_files(directory: Path, scale: float) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    vectors = np.arange(len(TOKENS) * 2, dtype=np.float32).reshape(-1, 2) * np.float32(scale)
    save_file({"vectors": vectors}, str(directory / "vectors.safetensors"))
    vocab = pa.table(
        {
            "id": pa.array(range(len(TOKENS)), pa.int32()),
            "token": TOKENS,
            "count": pa.array([0] * len(TOKENS), pa.int64()),
        }
    )
    pq.write_table(vocab, directory / "vocab.parquet")
    return {name: directory / name for name in ("vectors.safetensors", "vocab.parquet")}


def publish_n(store: ArtefactStore, tmp_path: Path, n: int, start: int = 0) -> list[str]:
    out = []
    for i in range(start, start + n):
        files = artefact_files(tmp_path / f"src-{i}", 1.0 + i)
        out.append(Path(store.publish("emb", files, {"i": i})).name)
    return out


def start_all(script: str, args: list[list[str]], go: Path) -> list[subprocess.Popen[str]]:
    """Start `script` once per argument list; they wait for the file `go`, touched here."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *a, str(go)], stdout=subprocess.PIPE, text=True
        )
        for a in args
    ]
    time.sleep(0.5)  # let the interpreters start so they race on the go signal
    go.touch()
    return procs


PUBLISHER = textwrap.dedent(
    """
    import json, sys, time, warnings
    from pathlib import Path
    from embedpipe.artefacts import ArtefactStore

    warnings.simplefilter("error")  # a failed post-commit step must not pass as a warning
    root, writer, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    src = go.parent / f"src-{writer}.bin"
    src.write_bytes(writer.encode() * 1000)
    store = ArtefactStore(root, keep=2, grace=0)
    while not go.exists():
        time.sleep(0.001)
    published, errors = [], []
    for i in range(n):
        try:
            published.append(Path(store.publish("emb", {"p.bin": src}, {"w": writer})).name)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({"published": published, "errors": errors}))
    """
)


READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from embedpipe.artefacts import ArtefactStore, VersionGoneError, verify

    root, go = sys.argv[1], Path(sys.argv[2])
    store = ArtefactStore(root)
    while not go.exists():
        time.sleep(0.001)
    reads, gone, errors = 0, 0, []
    deadline = time.monotonic() + 60
    while not (go.parent / "stop").exists() and time.monotonic() < deadline:
        try:
            listed = store.versions("emb")
            if not listed:
                continue
            for location in [store.resolve("emb")] + [store.location("emb", v) for v in listed]:
                verify(location)
                reads += 1
        except VersionGoneError:
            gone += 1  # deleted under the reader: retryable, and named
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({"reads": reads, "gone": gone, "errors": errors[:5]}))
    """
)


def test_concurrent_publishers_with_retention_never_raise(tmp_path: Path) -> None:
    """Two processes publish 60 versions each with keep=2 (and no grace period), so each
    one's retention deletes versions the other is deleting too: no publish may raise. A
    third process reads meanwhile: every error it sees is a VersionGoneError."""
    root = tmp_path / "store"
    go = tmp_path / "go"
    reader = start_all(READER, [[str(root)]], go)[0]
    procs = start_all(PUBLISHER, [[str(root), w, "60"] for w in "ab"], go)
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    (tmp_path / "stop").touch()
    read = json.loads(reader.communicate(timeout=120)[0])
    assert [p.returncode for p in procs] == [0, 0]
    assert read["errors"] == [] and read["reads"] > 0, read
    assert [r["errors"] for r in results] == [[], []]
    published = [v for r in results for v in r["published"]]
    assert len(published) == len(set(published)) == 120
    store = ArtefactStore(root)
    newest = sorted(published)[-2:]
    assert store.versions("emb") == newest
    assert store.aliases("emb") == {"latest": newest[-1]}
    assert sorted(p.name for p in (root / "emb").iterdir()) == [
        ".claims", ".deleted", "aliases", *newest,
    ]  # fmt: skip
    assert [p.name for p in (root / "emb" / "aliases").iterdir()] == ["latest"]


COLLECTOR = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from embedpipe.artefacts import ArtefactStore

    root, go = sys.argv[1], Path(sys.argv[2])
    store = ArtefactStore(root, grace=0)
    while not go.exists():
        time.sleep(0.001)
    print(json.dumps(store.gc("emb", keep=2)))
    """
)


def test_concurrent_gcs_never_raise_and_split_the_work(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ArtefactStore(root, grace=0)
    publish_n(store, tmp_path, 3)
    for round_ in range(3):
        src = tmp_path / "payload.bin"
        for i in range(30):
            src.write_bytes(f"{round_}-{i}".encode() * 500)
            store.publish("emb", {"p.bin": src, "sub/q.bin": src}, {"i": i})
        before = store.versions("emb")
        go = tmp_path / f"go-{round_}"
        procs = start_all(COLLECTOR, [[str(root)]] * 3, go)
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        deleted = [json.loads(out) for out in outs]
        flat = [v for d in deleted for v in d]
        assert sorted(flat) == before[:-2] and len(set(flat)) == len(flat)  # each once
        assert store.versions("emb") == before[-2:]
        assert sorted(p.name for p in (root / "emb").iterdir()) == [
            ".claims", ".deleted", "aliases", *before[-2:],
        ]  # fmt: skip


def test_a_version_resolved_as_latest_stays_readable_for_the_grace_period(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    store = ArtefactStore(root, keep=1)  # the default grace period
    publish_n(store, tmp_path, 1)
    resolved = store.resolve("emb")  # a reader resolves latest, then two publishes land
    publish_n(store, tmp_path, 2, start=1)
    assert store.versions("emb") == ["v0001", "v0002", "v0003"]
    assert read_embeddings(resolved).manifest.version == "v0001"

    # Past the grace period gc deletes them; a reader then gets a retryable, named error.
    time.sleep(0.3)
    assert store.gc("emb", keep=1, grace=0.2) == ["v0001", "v0002"]
    with pytest.raises(VersionGoneError, match=r"emb v0001 .* was deleted") as caught:
        read_embeddings(resolved)
    assert (caught.value.name, caught.value.version) == ("emb", "v0001")
    assert isinstance(caught.value, ArtefactError)
    with pytest.raises(VersionGoneError, match="v0001"):
        verify(resolved)
    assert store.manifests("emb")[0].version == "v0003"


def test_the_grace_period_runs_from_when_a_version_was_superseded(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "store", grace=0)
    publish_n(store, tmp_path, 2)
    time.sleep(0.4)
    publish_n(store, tmp_path, 1, start=2)  # v0003 supersedes v0002 now
    # v0001 was superseded 0.4 s ago, v0002 just now.
    assert store.gc("emb", keep=1, grace=0.3) == ["v0001"]
    assert store.versions("emb") == ["v0002", "v0003"]
    with pytest.raises(ArtefactError, match="grace must be a number of seconds"):
        store.gc("emb", keep=1, grace=-1)
    with pytest.raises(ArtefactError, match="grace must be a number of seconds"):
        ArtefactStore(tmp_path / "store", grace="1")  # type: ignore[arg-type]


def test_a_file_vanishing_mid_read_is_a_version_gone_error(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "store", grace=0)
    publish_n(store, tmp_path, 2)
    v1 = store.resolve("emb", 1)
    store.delete("emb", 1)
    # The reader had listed v0001; its files vanish: not a raw FileNotFoundError.
    with pytest.raises(VersionGoneError, match="v0001"):
        read_embeddings(v1)
    with pytest.raises(VersionGoneError):
        load(v1)


def test_load_of_latest_resolves_again_when_its_version_is_deleted_mid_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtefactStore(tmp_path / "store", grace=0)
    publish_n(store, tmp_path, 2)
    real = loader_module._read_embeddings
    calls = []

    def racing(directory: Path) -> object:
        calls.append(Path(directory).name)
        if len(calls) == 1:  # a publish lands and a forced delete removes what we resolved
            publish_n(store, tmp_path, 1, start=2)
            store.delete("emb", Path(directory).name, force=True)
        return real(directory)

    monkeypatch.setattr(loader_module, "_read_embeddings", racing)
    assert load("emb", store=store).manifest.version == "v0003"
    assert calls == ["v0002", "v0003"]

    # An explicit version is not replaced by another one: the error says it is gone.
    calls.clear()

    def deleting(directory: Path) -> object:
        store.delete("emb", Path(directory).name, force=True)
        return real(directory)

    monkeypatch.setattr(loader_module, "_read_embeddings", deleting)
    with pytest.raises(VersionGoneError, match="v0003"):
        load("emb", version="v0003", store=store)


def test_a_failure_after_the_commit_is_a_warning_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that sees publish raise retries it: a version committed must not raise."""
    store = ArtefactStore(tmp_path / "store", keep=1, grace=0)

    def broken_gc(*args: object, **kwargs: object) -> list[str]:
        raise PermissionError("the store is read-only for deletes")

    monkeypatch.setattr(store, "gc", broken_gc)
    with pytest.warns(RuntimeWarning, match=r"emb v0001 is published, but .* read-only"):
        location = store.publish("emb", artefact_files(tmp_path / "s", 1.0), {})
    assert Path(location).name == "v0001"
    assert store.versions("emb") == ["v0001"]


def test_a_publish_rerun_with_skip_unchanged_does_not_publish_twice(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "store")
    files = artefact_files(tmp_path / "s", 1.0)
    first = store.publish("emb", files, {"i": 1}, skip_unchanged=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.publish("emb", files, {"i": 1}, skip_unchanged=True) == first
    assert store.publish("emb", files, {"i": 2}, skip_unchanged=True) != first  # details
    changed = artefact_files(tmp_path / "t", 2.0)
    assert Path(store.publish("emb", changed, {"i": 2}, skip_unchanged=True)).name == "v0003"
    assert Path(store.publish("emb", files, {"i": 1})).name == "v0004"  # not asked: a copy
    assert store.versions("emb") == ["v0001", "v0002", "v0003", "v0004"]
