"""Deleting versions: alias protection, force, tombstoned numbers, gc, leftovers of crashes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from embedpipe.artefacts import ArtefactError, ArtefactStore


@pytest.fixture
def store(tmp_path: Path) -> ArtefactStore:
    # No grace period: gc deletes superseded versions at once (test_store_races.py tests it).
    return ArtefactStore(tmp_path / "store", grace=0)


def publish_n(store: ArtefactStore, tmp_path: Path, n: int, name: str = "emb") -> None:
    for i in range(n):
        src = tmp_path / f"src-{name}-{i}.bin"
        src.write_bytes(f"payload {i}".encode())
        (sub := tmp_path / f"sub-{name}-{i}.bin").write_bytes(b"nested")
        store.publish(name, {"data.bin": src, "nested/x.bin": sub}, {"i": i})


def hidden(store: ArtefactStore, name: str = "emb") -> list[str]:
    return sorted(p.name for p in (store.root / name).iterdir() if p.name.startswith(".deleting"))


def test_delete_removes_an_unaliased_version_and_its_read_only_files(
    store: ArtefactStore, tmp_path: Path
) -> None:
    publish_n(store, tmp_path, 3)
    v2 = store.root / "emb" / "v0002"
    assert stat.S_IMODE((v2 / "data.bin").stat().st_mode) == 0o444

    assert store.delete("emb", "v0002") == []
    assert not v2.exists()
    assert store.versions("emb") == ["v0001", "v0003"]
    assert store.aliases("emb") == {"latest": "v0003"}
    assert hidden(store) == []
    with pytest.raises(ArtefactError, match="has no version v0002"):
        store.resolve("emb", 2)
    with pytest.raises(ArtefactError, match="has no version v0002"):
        store.delete("emb", 2)


def test_delete_refuses_a_version_an_alias_names_unless_forced(
    store: ArtefactStore, tmp_path: Path
) -> None:
    publish_n(store, tmp_path, 3)
    store.set_alias("emb", "prod", "v0001")
    store.set_alias("emb", "canary", "v0001")

    with pytest.raises(ArtefactError, match=r"v0001: alias\(es\) canary, prod point at it"):
        store.delete("emb", "v0001")
    with pytest.raises(ArtefactError, match="alias\\(es\\) latest point at it"):
        store.delete("emb", 3)
    assert store.versions("emb") == ["v0001", "v0002", "v0003"]

    assert store.delete("emb", "1", force=True) == ["canary", "prod"]
    assert store.versions("emb") == ["v0002", "v0003"]
    assert store.aliases("emb") == {"latest": "v0003"}


def test_forced_delete_of_latest_moves_it_and_numbers_are_never_reused(
    store: ArtefactStore, tmp_path: Path
) -> None:
    publish_n(store, tmp_path, 3)
    assert store.delete("emb", "v0003", force=True) == ["latest"]
    assert store.aliases("emb") == {"latest": "v0002"}
    assert store.resolve("emb").name == "v0002"

    # The next publish skips the deleted number: "v0003" keeps meaning the deleted bytes.
    src = tmp_path / "new.bin"
    src.write_bytes(b"new")
    assert store.publish("emb", {"data.bin": src}, {}).name == "v0004"
    assert store.versions("emb") == ["v0001", "v0002", "v0004"]
    assert store.aliases("emb") == {"latest": "v0004"}


def test_deleting_the_last_version_removes_latest(store: ArtefactStore, tmp_path: Path) -> None:
    publish_n(store, tmp_path, 1)
    store.delete("emb", 1, force=True)
    assert store.versions("emb") == []
    assert store.aliases("emb") == {}
    assert store.names() == []
    with pytest.raises(ArtefactError, match="no alias 'latest'"):
        store.resolve("emb")
    publish_n(store, tmp_path, 1)
    assert store.versions("emb") == ["v0002"]


def test_delete_takes_versions_not_aliases(store: ArtefactStore, tmp_path: Path) -> None:
    publish_n(store, tmp_path, 2)
    store.set_alias("emb", "prod", 1)
    for alias in ("prod", "latest"):
        with pytest.raises(ArtefactError, match=f"not the alias '{alias}'"):
            store.delete("emb", alias, force=True)
    assert store.versions("emb") == ["v0001", "v0002"]
    with pytest.raises(ArtefactError, match="no artefact named 'other'"):
        store.delete("other", 1)
    with pytest.raises(ArtefactError, match="invalid artefact name"):
        store.delete("../emb", 1)


def test_gc_keeps_the_newest_and_every_aliased_version(
    store: ArtefactStore, tmp_path: Path
) -> None:
    publish_n(store, tmp_path, 6)
    store.set_alias("emb", "prod", "v0002")
    publish_n(store, tmp_path, 1, name="other")

    assert store.gc("emb", keep=2) == ["v0001", "v0003", "v0004"]
    assert store.versions("emb") == ["v0002", "v0005", "v0006"]
    assert store.aliases("emb") == {"latest": "v0006", "prod": "v0002"}
    assert store.gc("emb", keep=2) == []

    # keep=0 still spares what an alias names, latest included.
    assert store.gc("emb", keep=0) == ["v0005"]
    assert store.versions("emb") == ["v0002", "v0006"]
    assert store.versions("other") == ["v0001"]
    assert store.gc("missing", keep=1) == []
    for bad in (-1, 1.5, True):
        with pytest.raises(ArtefactError, match="keep must be an integer >= 0"):
            store.gc("emb", keep=bad)  # type: ignore[arg-type]


def test_gc_removes_leftovers_of_an_interrupted_delete(
    store: ArtefactStore, tmp_path: Path
) -> None:
    publish_n(store, tmp_path, 2)
    # A delete that crashed after its rename: invisible to readers, removed by the next gc.
    (store.root / "emb" / "v0001").rename(store.root / "emb" / ".deleting-crashed")
    assert store.versions("emb") == ["v0002"]
    assert hidden(store) == [".deleting-crashed"]
    assert store.gc("emb", keep=5) == []
    assert hidden(store) == []
    assert store.versions("emb") == ["v0002"]
