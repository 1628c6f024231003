"""The store on a local path, a file:// URL and memory://, through the same code.

Every test runs on the three roots: a version is published, aliased, deleted, collected,
verified and loaded the same way whatever the filesystem; only the form of the locations
handed back differs (Path for a path, URL string for a URL).
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from safetensors.numpy import save_file

import embedpipe
from embedpipe.artefacts import ArtefactError, ArtefactStore, load, read_manifest, verify
from embedpipe.artefacts.export import export
from embedpipe.artefacts.store import filesystem, join
from embedpipe.cli import main
from embedpipe.schemas import SPECIAL_TOKENS

WORDS = ["king", "queen", "apple", "pear"]
TOKENS = [*SPECIAL_TOKENS, *WORDS]


@pytest.fixture(params=["path", "file-url", "memory-url"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """A store root of each kind; a memory:// root is unique to the test and removed after."""
    if request.param == "path":
        yield tmp_path / "store"
    elif request.param == "file-url":
        yield (tmp_path / "store").as_uri()
    else:
        url = f"memory://embedpipe-{uuid.uuid4().hex}/store"
        yield url
        fs, path = filesystem(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def artefact_files(directory: Path, scale: float = 1.0) -> dict[str, Path]:
    """vectors.safetensors and vocab.parquet of TOKENS; `scale` makes versions differ."""
    directory.mkdir(parents=True, exist_ok=True)
    vectors = np.arange(len(TOKENS) * 3, dtype=np.float32).reshape(-1, 3) * np.float32(scale)
    save_file({"vectors": vectors}, directory / "vectors.safetensors")
    vocab = pa.table(
        {
            "id": pa.array(range(len(TOKENS)), pa.int32()),
            "token": TOKENS,
            "count": pa.array([0] * len(SPECIAL_TOKENS) + [40, 30, 20, 10], pa.int64()),
        }
    )
    pq.write_table(vocab, directory / "vocab.parquet")
    return {name: directory / name for name in ("vectors.safetensors", "vocab.parquet")}


def publish_n(store: ArtefactStore, tmp_path: Path, n: int, name: str = "emb") -> list:
    return [
        store.publish(name, artefact_files(tmp_path / f"src-{name}-{i}", 1.0 + i), {"i": i})
        for i in range(n)
    ]


def overwrite(location: Path | str, data: bytes) -> None:
    """Replace a published file's bytes behind the store's back (local files are 0444)."""
    fs, path = filesystem(location)
    if isinstance(location, Path) or str(location).startswith("file:"):
        os.chmod(path, 0o644)
    fs.pipe_file(path, data)


def test_publish_resolve_and_load(root: Path | str, tmp_path: Path) -> None:
    store = ArtefactStore(root)
    v1, v2 = publish_n(store, tmp_path, 2)

    # Locations come back in the form of the root: a Path, or a URL string.
    assert v1 == join(root, "emb", "v0001") and v2 == join(root, "emb", "v0002")
    assert isinstance(v1, Path) == isinstance(root, Path)
    assert store.versions("emb") == ["v0001", "v0002"]
    assert store.aliases("emb") == {"latest": "v0002"}
    assert store.names() == ["emb"]
    assert store.resolve("emb") == v2 and store.resolve("emb", 1) == v1

    latest = embedpipe.load("emb", store=root)
    assert latest.path == v2 and latest.manifest.version == "v0002"
    np.testing.assert_array_equal(latest["king"], [30.0, 32.0, 34.0])  # row 5, scale 1 + 1
    first = load(v1)
    assert first.manifest.extra["i"] == 0 and first.vocab == TOKENS
    np.testing.assert_array_equal(first["king"], [15.0, 16.0, 17.0])
    np.testing.assert_array_equal(latest.vectors, 2 * first.vectors)
    assert load("emb", version="v0001", store=store).path == v1
    assert verify(v2) == read_manifest(v2) == latest.manifest

    # The layout is the same on every filesystem: versions, aliases, permanent claims.
    fs, base = filesystem(join(root, "emb"))
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(base, detail=False))
    assert names == [".claims", "aliases", "v0001", "v0002"]
    claims = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{base}/.claims", detail=False))
    assert claims == ["v0001", "v0002"]
    assert json.loads(fs.cat_file(f"{base}/.claims/v0002"))["pid"] == os.getpid()


def test_aliases_delete_protection_and_retention(root: Path | str, tmp_path: Path) -> None:
    store = ArtefactStore(root, grace=0)  # gc deletes superseded versions at once
    publish_n(store, tmp_path, 5)
    store.set_alias("emb", "production", "v0002")
    store.set_alias("emb", "candidate", "latest")
    assert store.aliases("emb") == {
        "candidate": "v0005",
        "latest": "v0005",
        "production": "v0002",
    }
    assert load("emb", version="production", store=root).manifest.extra["i"] == 1

    with pytest.raises(ArtefactError, match=r"v0002: alias\(es\) production point at it"):
        store.delete("emb", "v0002")
    assert store.gc("emb", keep=2) == ["v0001", "v0003"]  # v0002 is spared: production
    assert store.versions("emb") == ["v0002", "v0004", "v0005"]

    # Moving an alias replaces it in one step; the old target becomes deletable.
    store.set_alias("emb", "production", "v0004")
    assert store.delete("emb", "v0002") == []
    assert store.delete("emb", "v0005", force=True) == ["candidate", "latest"]
    assert store.aliases("emb") == {"latest": "v0004", "production": "v0004"}
    # Deleted numbers are never handed out again.
    assert publish_n(store, tmp_path, 1, "emb")[0] == join(root, "emb", "v0006")
    assert store.versions("emb") == ["v0004", "v0006"]

    # Retention as a store option: every publish keeps the newest 2 and the aliased ones.
    kept = ArtefactStore(root, keep=2, grace=0)
    publish_n(kept, tmp_path, 3, "other")
    assert kept.versions("other") == ["v0002", "v0003"]
    publish_n(kept, tmp_path, 1, "emb")
    assert kept.versions("emb") == ["v0004", "v0006", "v0007"]  # v0004: production
    with pytest.raises(ArtefactError, match="keep must be an integer >= 1"):
        ArtefactStore(root, keep=0)


def test_tampered_added_and_missing_files_fail_with_clear_messages(
    root: Path | str, tmp_path: Path
) -> None:
    store = ArtefactStore(root)
    (v1,) = publish_n(store, tmp_path, 1)
    vectors = join(v1, "vectors.safetensors")
    data = bytearray(filesystem(vectors)[0].cat_file(filesystem(vectors)[1]))
    data[-1] ^= 0x01  # one bit of the last float
    overwrite(vectors, bytes(data))
    message = f"{vectors} was modified after publish: sha256 mismatch"
    with pytest.raises(ArtefactError) as caught:
        load("emb", store=root)
    assert str(caught.value) == message
    with pytest.raises(ArtefactError, match="sha256 mismatch"):
        export(v1, "parquet", tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()

    (v2,) = publish_n(store, tmp_path, 1)
    fs, path = filesystem(v2)
    fs.pipe_file(f"{path}/extra.bin", b"smuggled")
    with pytest.raises(ArtefactError, match=r"extra\.bin is not listed in .*: added after publish"):
        verify(v2)
    fs.rm_file(f"{path}/extra.bin")
    verify(v2)
    if isinstance(v2, Path) or str(v2).startswith("file:"):
        os.chmod(f"{path}/vocab.parquet", 0o644)
    fs.rm_file(f"{path}/vocab.parquet")
    with pytest.raises(ArtefactError, match=r"vocab\.parquet is listed in .* but missing"):
        load(v2)


def test_names_escaping_the_store_are_refused(root: Path | str, tmp_path: Path) -> None:
    store = ArtefactStore(root)
    files = artefact_files(tmp_path / "src")
    for bad in ("..", "../outside", "/abs", "a/b", ".claims", ""):
        with pytest.raises(ArtefactError, match="invalid artefact name"):
            store.publish(bad, files, {})
        with pytest.raises(ArtefactError, match="nor an artefact name"):
            load(bad, store=root)
        with pytest.raises(ArtefactError, match="invalid artefact name"):
            store.resolve(bad)
    for bad in ("../../outside.bin", "/etc/x", "a/../../b"):
        with pytest.raises(ArtefactError, match="invalid file name"):
            store.publish("emb", {bad: files["vocab.parquet"]}, {})
    store.publish("emb", files, {})
    for bad in ("..", "a/b", "v3"):
        with pytest.raises(ArtefactError, match="invalid alias"):
            store.set_alias("emb", bad, "v0001")
    # A manifest crafted to point outside its version is refused when read.
    fs, path = filesystem(join(root, "crafted", "v0001"))
    fs.makedirs(path, exist_ok=True)
    crafted = {"name": "crafted", "version": "v0001", "created": "2026-01-01T00:00:00+00:00"}
    crafted["files"] = {"../../x": {"sha256": "0" * 64, "bytes": 1}}
    fs.pipe_file(f"{path}/manifest.json", json.dumps(crafted).encode())
    with pytest.raises(ArtefactError, match=r"invalid file name '\.\.'"):
        verify(join(root, "crafted", "v0001"))
    # Nothing was written outside the store, and nothing under a refused name inside it.
    fs, store_path = filesystem(root)
    assert not [p for p in fs.find(store_path.rsplit("/", 1)[0]) if "outside" in p]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(store_path, detail=False)) == [
        "crafted",
        "emb",
    ]
    assert store.names() == ["crafted", "emb"]  # crafted: committed, but fails verify


def test_interrupted_publishes_are_invisible_and_collected(
    root: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtefactStore(root)
    publish_n(store, tmp_path, 1)
    fs, base = filesystem(join(root, "emb"))

    # A publish that fails half-way removes its files; its number stays claimed.
    copy = ArtefactStore._copy
    calls = []

    def failing_copy(self: ArtefactStore, *args: object) -> dict:
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return copy(self, *args)

    monkeypatch.setattr(ArtefactStore, "_copy", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        store.publish("emb", artefact_files(tmp_path / "half"), {})
    monkeypatch.undo()
    assert not fs.exists(f"{base}/v0002")
    assert store.versions("emb") == ["v0001"]

    # Publishers killed before their commit: claimed directories without a manifest.
    for version, age in (("v0003", timedelta(days=2)), ("v0004", timedelta(minutes=1))):
        claimed = (datetime.now(timezone.utc) - age).isoformat()
        fs.pipe_file(f"{base}/.claims/{version}", json.dumps({"claimed": claimed}).encode())
        fs.makedirs(f"{base}/{version}", exist_ok=True)
        fs.pipe_file(f"{base}/{version}/vectors.safetensors", b"partial")
    assert store.versions("emb") == ["v0001"]
    assert store.resolve("emb") == join(root, "emb", "v0001")
    with pytest.raises(ArtefactError, match="has no version v0003"):
        store.resolve("emb", 3)
    assert publish_n(store, tmp_path, 1)[0] == join(root, "emb", "v0005")

    # gc removes the abandoned one; the young one may still be being written.
    assert store.gc("emb", keep=5) == []
    assert not fs.exists(f"{base}/v0003") and fs.exists(f"{base}/v0004")
    assert store.gc("emb", keep=5, abandoned_after=0) == []
    assert not fs.exists(f"{base}/v0004")
    assert store.versions("emb") == ["v0001", "v0005"]


def test_a_stale_listing_cannot_reuse_a_claimed_number(
    root: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two publishers that listed the store at the same moment try the same number: the
    exclusive claim lets one have it and sends the other on to the next (simulated here by a
    listing that never sees anything)."""
    store = ArtefactStore(root)
    publish_n(store, tmp_path, 2)
    monkeypatch.setattr(ArtefactStore, "_max_number", lambda self, name: 0)
    v3 = store.publish("emb", artefact_files(tmp_path / "late", 9.0), {"late": True})
    assert v3 == join(root, "emb", "v0003")
    assert [verify(store.resolve("emb", n)).extra["i"] for n in (1, 2)] == [0, 1]
    assert verify(v3).extra["late"] is True
    assert store.versions("emb") == ["v0001", "v0002", "v0003"]


class NonExclusiveMemoryFileSystem(MemoryFileSystem):
    """A memory filesystem that silently treats exclusive creation as overwriting."""

    protocol = "memnox"
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, str) and path.startswith("memnox://"):
            path = "memory://" + path.removeprefix("memnox://")
        return super()._strip_protocol(path)

    def _open(self, path: str, mode: str = "rb", **kwargs: object):  # noqa: ANN202
        return super()._open(path, mode.replace("x", "w"), **kwargs)


def test_a_filesystem_without_exclusive_create_is_detected(tmp_path: Path) -> None:
    fsspec.register_implementation("memnox", NonExclusiveMemoryFileSystem, clobber=True)
    store = ArtefactStore(f"memnox://embedpipe-{uuid.uuid4().hex}/store")
    with pytest.warns(RuntimeWarning, match="does not honour exclusive file creation"):
        publish_n(store, tmp_path, 1)
    # One publisher at a time still gets distinct numbers, checked before each claim.
    publish_n(store, tmp_path, 1)
    assert store.versions("emb") == ["v0001", "v0002"]
    NonExclusiveMemoryFileSystem.store.clear()


def test_nothing_is_unpickled(
    root: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (v1,) = publish_n(ArtefactStore(root), tmp_path, 1)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("something tried to unpickle")

    for module, attr in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, attr, refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    emb = load("emb", store=root)
    assert emb.most_similar("king", topn=1)[0][0] in WORDS
    assert export(v1, "parquet", tmp_path / "v.parquet") == tmp_path / "v.parquet"
    layer, ids = emb.to_torch()
    assert layer.weight.shape == (len(TOKENS), 3) and ids["king"] == 5


def test_cli_on_the_store(
    root: Path | str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish_n(ArtefactStore(root), tmp_path, 3)
    store = ["--store", str(root)]
    main(["artefacts", "alias", "emb", "production", "v0001", *store])
    assert capsys.readouterr().out == "emb: production -> v0001\n"
    main(["artefacts", "list", *store])
    assert capsys.readouterr().out.splitlines() == [
        "emb\tv0001\tproduction",
        "emb\tv0002\t",
        "emb\tv0003\tlatest",
    ]
    main(["artefacts", "verify", "emb", "--version", "production", *store])
    assert (
        capsys.readouterr().out == f"{join(root, 'emb', 'v0001')}: every file matches its sha256\n"
    )
    main(["artefacts", "show", "emb", *store])
    assert json.loads(capsys.readouterr().out)["i"] == 2
    main(["artefacts", "diff", "emb", "v0001", "v0003", "--json", *store])
    diff = json.loads(capsys.readouterr().out)
    assert (diff["a"]["version"], diff["b"]["version"]) == ("v0001", "v0003")
    with pytest.raises(ArtefactError, match="production"):
        main(["--debug", "artefacts", "delete", "emb", "v0001", *store])
    main(["artefacts", "gc", "emb", "--keep", "1", "--grace", "0", *store])
    assert capsys.readouterr().out == "deleted: v0002\n"
    out = join(root, "exports", "v.txt")
    main(["artefacts", "export", "emb", "--format", "w2v-text", "--out", str(out), *store])
    assert capsys.readouterr().out.strip() == str(out)
    fs, path = filesystem(out)
    assert fs.cat_file(path).decode().splitlines()[:2] == ["4 3", "king 45 48 51"]
    main(["neighbors", "emb", "king", "-k", "1", *store])
    assert capsys.readouterr().out.split()[1] in WORDS
