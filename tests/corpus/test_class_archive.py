"""The Spark class archive: where it lives, that a build leaves one whole archive (or
nothing), and that a JVM it does not match skips it silently."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from embedpipe.corpus.spark import class_archive

DYNAMIC_ARCHIVE_MAGIC = 0xF00BABA8  # HotSpot's header of a dynamic CDS archive


def test_the_archive_is_keyed_by_java_and_lives_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = class_archive.archive_path()
    assert path is not None and path.parent == tmp_path / "cache" / "embedpipe"
    assert class_archive.java_options() == ""  # none built there yet
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert class_archive.java_options().startswith(f"-XX:SharedArchiveFile={path} ")
    # Another Java install has another archive.
    other_java = tmp_path / "jdk" / "bin" / "java"
    other_java.parent.mkdir(parents=True)
    other_java.write_text("")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert class_archive.archive_path() not in (None, path)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "none"))
    assert class_archive.archive_path() is None


@pytest.mark.slow
@pytest.mark.spark
def test_the_installed_archive_is_whole_and_kept() -> None:
    """`make install` built it (CI's too); where it did not, the build runs here, and fails
    this test loudly where the install only warned."""
    built = class_archive.archive_path()
    assert built is not None
    if not built.is_file():
        assert class_archive.build() == built
    assert int.from_bytes(built.read_bytes()[:4], "little") == DYNAMIC_ARCHIVE_MAGIC
    assert not list(built.parent.glob(f"{built.stem}.*.partial"))  # no partial file left
    stamp = built.stat().st_mtime_ns
    assert class_archive.build() == built and built.stat().st_mtime_ns == stamp  # kept

    # A JVM whose classes do not match the archive (no Spark on its class path) starts as
    # without it, and quietly with the session's options.
    java = shutil.which("java") or "java"
    loud = subprocess.run([java, f"-XX:SharedArchiveFile={built}", "-version"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    quiet = subprocess.run(
        [java, *class_archive.QUIET.split(), f"-XX:SharedArchiveFile={built}", "-version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert loud.returncode == quiet.returncode == 0
    assert "Unable to use shared archive" in loud.stdout + loud.stderr  # so the next can fail
    assert "warning" not in quiet.stdout + quiet.stderr
