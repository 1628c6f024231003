"""Artefact edge cases: symbolic links, names shadowed by the working directory, malformed
encoder.json, `latest` behind a killed publish, and what interrupted writers leave."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from embedpipe.artefacts import (
    ArtefactError,
    ArtefactPathError,
    ArtefactStore,
    load,
    verify,
)
from embedpipe.artefacts.encoder import ENCODER_CONFIG_FILE, FORMAT
from embedpipe.artefacts.loader import ENCODER_FILE
from embedpipe.faults import CRASH_AT
from embedpipe.schemas import SPECIAL_TOKENS

TOKENS = [*SPECIAL_TOKENS, "king", "queen", "apple"]


def artefact_files(directory: Path, scale: float = 1.0) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    vectors = np.arange(len(TOKENS) * 4, dtype=np.float32).reshape(-1, 4) * np.float32(scale)
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


@pytest.fixture
def store(tmp_path: Path) -> ArtefactStore:
    return ArtefactStore(tmp_path / "store")


# -- symbolic links ------------------------------------------------------------------------


def test_a_symlinked_artefact_file_is_refused(store: ArtefactStore, tmp_path: Path) -> None:
    version = Path(store.publish("emb", artefact_files(tmp_path / "src"), {}))
    # The same bytes outside the store: the checksum alone would not notice.
    outside = tmp_path / "outside.safetensors"
    shutil.copy(version / "vectors.safetensors", outside)
    (version / "vectors.safetensors").unlink()
    (version / "vectors.safetensors").symlink_to(outside)
    for call in (lambda: load(version), lambda: load("emb", store=store), lambda: verify(version)):
        with pytest.raises(ArtefactPathError, match=r"v0001/vectors\.safetensors is a symbolic"):
            call()


def test_a_symlinked_manifest_or_subdirectory_is_refused(
    store: ArtefactStore, tmp_path: Path
) -> None:
    files = artefact_files(tmp_path / "src")
    (tmp_path / "src" / "extra.bin").write_bytes(b"x")
    version = Path(
        store.publish("emb", {**files, "sub/extra.bin": tmp_path / "src" / "extra.bin"}, {})
    )
    outside = tmp_path / "outside-sub"
    shutil.copytree(version / "sub", outside)
    shutil.rmtree(version / "sub")
    (version / "sub").symlink_to(outside)
    with pytest.raises(ArtefactPathError, match=r"v0001/sub is a symbolic link"):
        verify(version)

    second = Path(store.publish("other", files, {}))
    shutil.copy(second / "manifest.json", tmp_path / "manifest.json")
    (second / "manifest.json").unlink()
    (second / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(ArtefactPathError, match=r"v0001/manifest\.json is a symbolic link"):
        load(second)


def test_a_symlinked_version_directory_is_not_a_version(
    store: ArtefactStore, tmp_path: Path
) -> None:
    store.publish("emb", artefact_files(tmp_path / "a"), {"i": 1})
    elsewhere = ArtefactStore(tmp_path / "elsewhere")
    foreign = Path(elsewhere.publish("emb", artefact_files(tmp_path / "b", 2.0), {"i": 2}))
    (store.root / "emb" / "v0002").symlink_to(foreign)
    assert store.versions("emb") == ["v0001"]
    assert store.resolve("emb").name == "v0001"  # latest is not the link
    assert load("emb", store=store).manifest.extra == {"i": 1}
    with pytest.raises(ArtefactPathError, match=r"emb/v0002 is a symbolic link"):
        store.resolve("emb", "v0002")
    with pytest.raises(ArtefactPathError, match=r"emb/v0002 is a symbolic link"):
        load(store.root / "emb" / "v0002")
    # gc neither follows nor removes what the store did not make.
    store.gc("emb", keep=1, grace=0)
    assert (store.root / "emb" / "v0002").is_symlink() and (foreign / "manifest.json").exists()


def test_a_symlinked_name_directory_is_refused(store: ArtefactStore, tmp_path: Path) -> None:
    store.publish("emb", artefact_files(tmp_path / "a"), {})
    elsewhere = ArtefactStore(tmp_path / "elsewhere")
    elsewhere.publish("emb", artefact_files(tmp_path / "b"), {})
    (store.root / "linked").symlink_to(elsewhere.root / "emb")
    with pytest.raises(ArtefactPathError, match=r"store/linked is a symbolic link"):
        load("linked", store=store)
    assert store.names() == ["emb"]


# -- names and the working directory ---------------------------------------------------------


def test_a_name_with_a_store_means_the_stores_artefact(
    store: ArtefactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish("emb", artefact_files(tmp_path / "a"), {"where": "store"})
    cwd = tmp_path / "cwd"
    decoy = ArtefactStore(tmp_path / "decoy")
    shutil.copytree(decoy.publish("emb", artefact_files(tmp_path / "b", 3.0), {"where": "cwd"}),
                    cwd / "emb")  # fmt: skip
    monkeypatch.chdir(cwd)
    assert load("emb", store=store).manifest.extra == {"where": "store"}
    assert load("emb", store=str(store.root)).manifest.extra == {"where": "store"}
    assert load(Path("emb"), store=store).manifest.extra == {"where": "store"}
    assert load("./emb", store=store).manifest.extra == {"where": "cwd"}  # a path: the directory
    assert load("emb").manifest.extra == {"where": "cwd"}  # no store: a directory wins


# -- encoder.json ----------------------------------------------------------------------------

GOOD = {"vocab_size": len(TOKENS), "width": 4, "layers": 1, "heads": 2, "ffn": 8, "max_len": 8}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([1, 2], "must hold a JSON object, not list"),
        ({"format": "other/1"}, "field 'format' must be"),
        ({"format": FORMAT}, "field 'architecture' is missing or not an object"),
        ({"format": FORMAT, "architecture": [GOOD]}, "field 'architecture' is missing or not"),
        ({"format": FORMAT, "architecture": {"width": 4}}, "'architecture.vocab_size' is missing"),
        ({"format": FORMAT, "architecture": {**GOOD, "heads": "2"}},
         "'architecture.heads' must be a non-negative int, not '2'"),
        ({"format": FORMAT, "architecture": {**GOOD, "layers": -1}},
         "'architecture.layers' must be a non-negative int"),
        ({"format": FORMAT, "architecture": {**GOOD, "dropout": None}},
         "'architecture.dropout' must be a float"),
        ({"format": FORMAT, "architecture": {**GOOD, "heads": 0}}, "'architecture' is invalid"),
        ({"format": FORMAT, "architecture": {**GOOD, "depth": 3}},
         "'architecture' is invalid: unknown encoder config key"),
    ],
)  # fmt: skip
def test_a_malformed_encoder_json_is_a_clear_error(
    store: ArtefactStore, tmp_path: Path, config: object, message: str
) -> None:
    files = artefact_files(tmp_path / "src")
    save_file({"layer.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / ENCODER_FILE))
    (tmp_path / ENCODER_CONFIG_FILE).write_text(json.dumps(config))
    files |= {ENCODER_FILE: tmp_path / ENCODER_FILE,
              ENCODER_CONFIG_FILE: tmp_path / ENCODER_CONFIG_FILE}  # fmt: skip
    version = store.publish("mlm", files, {})
    with pytest.raises(ArtefactError, match=rf"v0001/encoder\.json.*{message}"):
        load(version)


# -- latest behind a killed publish ----------------------------------------------------------


def test_latest_is_the_newest_committed_version_whatever_its_file_says(
    store: ArtefactStore, tmp_path: Path
) -> None:
    store.publish("emb", artefact_files(tmp_path / "a"), {"i": 1})
    store.publish("emb", artefact_files(tmp_path / "b", 2.0), {"i": 2})
    latest = store.root / "emb" / "aliases" / "latest"
    latest.write_text("v0001\n")  # as a publish killed between its commit and its alias move
    assert store.resolve("emb").name == "v0002"
    assert store.aliases("emb") == {"latest": "v0002"}
    assert load("emb", store=store).manifest.extra == {"i": 2}
    with pytest.raises(ArtefactError, match="alias\\(es\\) latest point at it"):
        store.delete("emb", 2)
    assert store.gc("emb", keep=1, grace=0) == ["v0001"]  # the stale file protects nothing
    assert latest.read_text() == "v0002\n"  # and writers repair it

    latest.unlink()  # as a first publish killed before its alias move
    assert store.resolve("emb").name == "v0002"
    store.publish("emb", artefact_files(tmp_path / "c", 3.0), {"i": 3})
    with pytest.raises(ArtefactError, match="'latest' always names the newest version"):
        store.set_alias("emb", "latest", 2)
    store.set_alias("emb", "latest", 3)
    assert latest.read_text() == "v0003\n"


KILLED_PUBLISH = textwrap.dedent(
    """
    import sys
    from embedpipe.artefacts import ArtefactStore
    ArtefactStore(sys.argv[1]).publish("emb", {"vectors.safetensors": sys.argv[2],
                                               "vocab.parquet": sys.argv[3]}, {"i": 2})
    """
)


def test_a_publish_killed_after_its_commit_is_latest_at_once(
    store: ArtefactStore, tmp_path: Path
) -> None:
    store.publish("emb", artefact_files(tmp_path / "a"), {"i": 1})
    files = artefact_files(tmp_path / "b", 2.0)
    env = {**os.environ, CRASH_AT: "publish.committed"}
    args = [str(store.root), str(files["vectors.safetensors"]), str(files["vocab.parquet"])]
    run = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, *args], env=env)
    assert run.returncode == -9
    assert (store.root / "emb" / "aliases" / "latest").read_text() == "v0001\n"
    assert load("emb", store=store).manifest.extra == {"i": 2}
    store.publish("emb", artefact_files(tmp_path / "c", 3.0), {"i": 3})
    assert store.aliases("emb") == {"latest": "v0003"}


# -- leftovers of interrupted writers -------------------------------------------------------


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_old_temporary_files_and_dead_publishers_leftovers_are_cleaned(
    store: ArtefactStore, tmp_path: Path
) -> None:
    store.publish("emb", artefact_files(tmp_path / "a"), {})
    base = store.root / "emb"
    old_alias = base / "aliases" / ".tmp-0123-latest"
    young_alias = base / "aliases" / ".tmp-4567-prod"
    old_tombstone = base / ".deleted" / ".tmp-89ab-v0001"
    old_probe = base / ".claims" / ".probe-cdef"
    for path in (old_alias, young_alias, old_tombstone, old_probe):
        path.parent.mkdir(exist_ok=True)
        path.write_text("v0001\n")
    for path in (old_alias, old_tombstone, old_probe):
        age(path, 3600)

    # A publisher that died on this host after claiming v0002 and writing part of it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim = json.loads((base / ".claims" / "v0001").read_text())
    (base / ".claims" / "v0002").write_text(json.dumps({**claim, "pid": dead.pid}))
    (base / "v0002").mkdir()
    (base / "v0002" / "vectors.safetensors").write_bytes(b"partial")
    # One still running here (this process) and one on another host: not theirs to judge yet.
    (base / ".claims" / "v0003").write_text(json.dumps(claim))
    (base / "v0003").mkdir()
    (base / ".claims" / "v0004").write_text(json.dumps({**claim, "host": "elsewhere"}))
    (base / "v0004").mkdir()

    store.publish("emb", artefact_files(tmp_path / "b", 2.0), {})  # the next publish cleans
    assert sorted(p.name for p in base.iterdir()) == [
        ".claims", ".deleted", "aliases", "v0001", "v0003", "v0004", "v0005",
    ]  # fmt: skip
    assert sorted(p.name for p in (base / "aliases").iterdir()) == [".tmp-4567-prod", "latest"]
    assert not old_tombstone.exists() and not old_probe.exists()
    assert store.gc("emb", keep=5, abandoned_after=0) == []  # claims older than 0 s
    assert sorted(p.name for p in base.iterdir()) == [
        ".claims",
        ".deleted",
        "aliases",
        "v0001",
        "v0003",
        "v0005",
    ]  # fmt: skip  (v0003: claimed by this very process, which is alive)
