"""The artefact store: numbered versions, aliases, hashes, name checks, concurrent publishers."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from embedpipe.artefacts import (
    ArtefactError,
    ArtefactStore,
    open_store,
    sha256_file,
    store_root,
    verify,
)


def make_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def store(tmp_path: Path) -> ArtefactStore:
    return ArtefactStore(tmp_path / "store")


def test_publish_numbers_versions_and_moves_latest(store: ArtefactStore, tmp_path: Path) -> None:
    a = make_file(tmp_path / "a.bin", b"first")
    b = make_file(tmp_path / "b.bin", b"second")

    v1 = store.publish("emb", {"data.bin": a}, {"note": "one"})
    assert v1 == store.root / "emb" / "v0001"
    assert store.versions("emb") == ["v0001"]
    assert store.aliases("emb") == {"latest": "v0001"}

    v2 = store.publish("emb", {"data.bin": b}, {"note": "two"})
    assert v2.name == "v0002"
    assert store.versions("emb") == ["v0001", "v0002"]
    assert store.resolve("emb") == v2
    assert store.aliases("emb") == {"latest": "v0002"}
    # The old version is untouched.
    assert (v1 / "data.bin").read_bytes() == b"first"
    assert (v2 / "data.bin").read_bytes() == b"second"
    assert store.names() == ["emb"]
    # Nothing but the versions, the aliases and the permanent claims: no temporary leftovers.
    base = store.root / "emb"
    assert sorted(p.name for p in base.iterdir()) == [".claims", "aliases", "v0001", "v0002"]
    assert sorted(p.name for p in (base / ".claims").iterdir()) == ["v0001", "v0002"]


def test_published_files_are_read_only_and_manifest_hashes_are_right(
    store: ArtefactStore, tmp_path: Path
) -> None:
    big = os.urandom((1 << 20) + 123)  # crosses the 1 MiB block boundary
    src = {
        "vectors.safetensors": make_file(tmp_path / "v", big),
        "sub/vocab.parquet": make_file(tmp_path / "w", b"vocab"),
    }
    before = datetime.now(timezone.utc)
    version = store.publish("emb", src, {"dim": 3, "corpus": "tiny"})

    manifest_text = (version / "manifest.json").read_text()
    manifest = json.loads(manifest_text)
    assert manifest_text == json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    assert manifest["name"] == "emb"
    assert manifest["version"] == "v0001"
    assert manifest["dim"] == 3 and manifest["corpus"] == "tiny"
    created = datetime.fromisoformat(manifest["created"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    assert before <= created <= datetime.now(timezone.utc)
    assert manifest["files"] == {
        "vectors.safetensors": {"sha256": hashlib.sha256(big).hexdigest(), "bytes": len(big)},
        "sub/vocab.parquet": {"sha256": hashlib.sha256(b"vocab").hexdigest(), "bytes": 5},
    }
    assert sha256_file(version / "vectors.safetensors") == hashlib.sha256(big).hexdigest()
    for file in [version / "vectors.safetensors", version / "sub/vocab.parquet"]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o444
    assert stat.S_IMODE((version / "manifest.json").stat().st_mode) == 0o444
    checked = verify(version)
    assert checked.to_json() == manifest
    assert checked.extra == {"dim": 3, "corpus": "tiny"}
    assert checked.files["sub/vocab.parquet"].bytes == 5


def test_verify_detects_modified_and_missing_files(store: ArtefactStore, tmp_path: Path) -> None:
    src = {
        "a.bin": make_file(tmp_path / "a", b"abcdef"),
        "b.bin": make_file(tmp_path / "b", b"ghijkl"),
    }
    version = store.publish("emb", src, {})
    target = version / "b.bin"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=r"b\.bin was modified after publish: sha256 mismatch"):
        verify(version)

    (version / "a.bin").chmod(0o644)
    (version / "a.bin").unlink()
    with pytest.raises(ArtefactError, match=r"a\.bin is listed in .* but missing"):
        verify(version)


def test_verify_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtefactError, match="manifest.json not found"):
        verify(tmp_path)


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "a\\b", "/abs", ".hidden", "", "x\0y"])
def test_bad_names_are_refused(store: ArtefactStore, tmp_path: Path, bad: str) -> None:
    src = make_file(tmp_path / "a", b"a")
    with pytest.raises(ArtefactError, match="invalid artefact name"):
        store.publish(bad, {"a.bin": src}, {})
    with pytest.raises(ArtefactError, match="invalid"):
        store.resolve(bad)
    store.publish("ok", {"a.bin": src}, {})
    with pytest.raises(ArtefactError, match="invalid alias"):
        store.set_alias("ok", bad, "v0001")
    assert store.aliases("ok") == {"latest": "v0001"}
    assert not (store.root / "a").exists()


@pytest.mark.parametrize("bad", ["..", "../x", "a/../../b", "/abs", ".hidden", "", ".", "a\\b"])
def test_bad_file_names_are_refused(store: ArtefactStore, tmp_path: Path, bad: str) -> None:
    src = make_file(tmp_path / "a", b"a")
    with pytest.raises(ArtefactError, match="invalid file name"):
        store.publish("ok", {bad: src}, {})
    assert store.versions("ok") == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a"]  # refused before any write


def test_reserved_and_missing_files_are_refused_and_leave_nothing(
    store: ArtefactStore, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "a", b"a")
    with pytest.raises(ArtefactError, match="reserved"):
        store.publish("emb", {"manifest.json": src}, {})
    with pytest.raises(ArtefactError, match="nope.bin not found"):
        store.publish("emb", {"a.bin": src, "b.bin": tmp_path / "nope.bin"}, {})
    with pytest.raises(ArtefactError, match="not JSON-serialisable"):
        store.publish("emb", {"a.bin": src}, {"bad": object()})
    assert store.versions("emb") == []
    assert not (store.root / "emb").exists()  # refused before any write


def test_aliases_resolve(store: ArtefactStore, tmp_path: Path) -> None:
    for i in range(3):
        store.publish("emb", {"x": make_file(tmp_path / f"x{i}", bytes([i]))}, {"i": i})
    root = store.root / "emb"

    store.set_alias("emb", "prod", "v0002")
    store.set_alias("emb", "old", 1)
    store.set_alias("emb", "same-as-prod", "prod")
    assert store.aliases("emb") == {
        "latest": "v0003",
        "old": "v0001",
        "prod": "v0002",
        "same-as-prod": "v0002",
    }
    assert store.resolve("emb", "prod") == root / "v0002"
    assert store.resolve("emb", "old") == root / "v0001"
    assert store.resolve("emb") == root / "v0003"
    assert store.resolve("emb", "3") == root / "v0003"
    assert store.resolve("emb", 2) == root / "v0002"
    assert store.resolve("emb", "v0001") == root / "v0001"
    assert json.loads((store.resolve("emb", "prod") / "manifest.json").read_text())["i"] == 1

    # Re-pointing an alias replaces it; no temporary files are left behind.
    store.set_alias("emb", "prod", "latest")
    assert store.resolve("emb", "prod") == root / "v0003"
    assert sorted(p.name for p in (root / "aliases").iterdir()) == [
        "latest",
        "old",
        "prod",
        "same-as-prod",
    ]

    with pytest.raises(ArtefactError, match=r"'emb' has no version v0009"):
        store.resolve("emb", 9)
    with pytest.raises(ArtefactError, match=r"'emb' has no alias 'staging'"):
        store.resolve("emb", "staging")
    with pytest.raises(ArtefactError, match=r"no artefact named 'other'"):
        store.resolve("other")
    with pytest.raises(ArtefactError, match="has no version v0007"):
        store.set_alias("emb", "prod", "v0007")
    with pytest.raises(ArtefactError, match="looks like a version"):
        store.set_alias("emb", "v0002", "v0001")


def test_incomplete_and_temporary_dirs_are_invisible(store: ArtefactStore, tmp_path: Path) -> None:
    src = make_file(tmp_path / "a", b"a")
    store.publish("emb", {"a": src}, {})
    (store.root / "emb" / "v0005").mkdir()  # e.g. left by a crashed foreign tool
    (store.root / "emb" / ".tmp-crashed").mkdir()
    (store.root / "empty").mkdir()
    assert store.versions("emb") == ["v0001"]
    assert store.names() == ["emb"]
    # The next number skips past the incomplete directory instead of reusing it.
    assert store.publish("emb", {"a": src}, {}).name == "v0006"
    assert store.versions("emb") == ["v0001", "v0006"]


def test_store_root_is_explicit_then_environment_then_artefacts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMBEDPIPE_STORE", str(tmp_path / "env"))
    assert store_root(tmp_path / "given") == tmp_path / "given"
    assert store_root("memory://bucket/store/") == "memory://bucket/store"
    assert store_root() == tmp_path / "env"
    assert store_root("") == tmp_path / "env"  # an empty setting is no setting
    monkeypatch.setenv("EMBEDPIPE_STORE", "")
    assert store_root() == Path("artefacts")
    monkeypatch.delenv("EMBEDPIPE_STORE")
    assert store_root() == Path("artefacts")
    assert open_store().root.resolve() == tmp_path / "artefacts"
    store = ArtefactStore(tmp_path / "s")
    assert open_store(store) is store
    assert open_store(str(tmp_path / "s")).root == tmp_path / "s"


def test_run_config_store_defaults_to_the_store_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`RunConfig.store` None means the default; a config's store wins over the environment."""
    from embedpipe.config import RunConfig, load_config

    monkeypatch.setenv("EMBEDPIPE_STORE", str(tmp_path / "env"))
    assert RunConfig().store is None
    assert open_store(RunConfig().store).root == tmp_path / "env"
    config = load_config(None, [f"store={tmp_path / 'run'}"])
    assert open_store(config.store).root == tmp_path / "run"


PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from embedpipe.artefacts.store import ArtefactStore

    root, writer, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    sources = []
    for i in range(2):
        src = go.parent / f"src-{writer}-{i}.bin"
        src.write_bytes(f"{writer}:{i};".encode() * 5000)
        sources.append(src)
    store = ArtefactStore(root)
    while not go.exists():
        time.sleep(0.001)
    for i, src in enumerate(sources):
        store.publish("emb", {"payload.bin": src}, {"writer": writer, "i": i})
    """
)


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_concurrent_publishers_get_distinct_complete_versions(tmp_path: Path, as_url: bool) -> None:
    """Four processes publish two versions each at once, through a path or a file:// URL."""
    root = tmp_path / "store"
    go = tmp_path / "go"
    writers = [str(w) for w in range(4)]
    given = root.as_uri() if as_url else str(root)
    procs = [
        subprocess.Popen([sys.executable, "-c", PUBLISHER, given, w, str(go)]) for w in writers
    ]
    time.sleep(0.3)  # let the interpreters start so they race on the go signal
    go.touch()
    assert [p.wait(timeout=60) for p in procs] == [0] * len(procs)

    store = ArtefactStore(root)
    versions = store.versions("emb")
    assert versions == [f"v{n:04d}" for n in range(1, 9)]
    seen = set()
    for v in versions:
        manifest = verify(root / "emb" / v)
        assert manifest.version == v
        writer, i = manifest.extra["writer"], manifest.extra["i"]
        payload = (root / "emb" / v / "payload.bin").read_bytes()
        assert payload == f"{writer}:{i};".encode() * 5000
        seen.add((writer, i))
    assert seen == {(w, i) for w in writers for i in range(2)}
    assert store.aliases("emb") == {"latest": "v0008"}
    assert sorted(p.name for p in (root / "emb").iterdir()) == [".claims", "aliases", *versions]
    assert sorted(p.name for p in (root / "emb" / ".claims").iterdir()) == versions
    assert [p.name for p in (root / "emb" / "aliases").iterdir()] == ["latest"]
