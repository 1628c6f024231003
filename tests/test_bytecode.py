"""The bytecode cache: used only where the install has no bytecode and Python writes none;
then this process and the processes it starts keep their bytecode there."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedpipe import bytecode
from embedpipe.bytecode import CACHE_ENV, install_writes_none, use_bytecode_cache


@pytest.fixture
def python_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """sys's bytecode settings restored after the test (use_bytecode_cache changes them)."""
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


def sentinel_in(folder: Path, compiled: bool) -> Path:
    source = folder / "sentinel.py"
    source.write_text("X = 1\n")
    if compiled:
        cached = Path(importlib.util.cache_from_source(str(source)))
        cached.parent.mkdir()
        cached.write_bytes(b"")
    return source


def test_an_install_with_bytecode_or_that_python_may_write_to_needs_no_cache(
    tmp_path: Path, python_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = sentinel_in(tmp_path, compiled=True)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert not install_writes_none(compiled)  # its own bytecode is read, writing or not
    (tmp_path / "other").mkdir()
    bare = sentinel_in(tmp_path / "other", compiled=False)
    assert install_writes_none(bare)  # --no-compile and PYTHONDONTWRITEBYTECODE
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert not install_writes_none(bare)  # Python compiles it once, beside the source


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_a_read_only_install_without_bytecode_writes_none(
    tmp_path: Path, python_state: None
) -> None:
    bare = sentinel_in(tmp_path, compiled=False)
    tmp_path.chmod(0o555)
    try:
        assert install_writes_none(bare)
    finally:
        tmp_path.chmod(0o755)


def test_the_cache_is_set_for_this_process_and_the_ones_it_starts(
    tmp_path: Path, python_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(bytecode, "default_cache", lambda: tmp_path / "cache")
    environ = {"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/home/x"}
    bare = sentinel_in(tmp_path, compiled=False)
    assert use_bytecode_cache(environ, bare) == tmp_path / "cache"
    assert (tmp_path / "cache").is_dir()
    assert sys.pycache_prefix == str(tmp_path / "cache") and not sys.dont_write_bytecode
    assert environ == {"PYTHONPYCACHEPREFIX": str(tmp_path / "cache"), "HOME": "/home/x"}


@pytest.mark.parametrize(
    "environ",
    [
        {CACHE_ENV: "off", "PYTHONDONTWRITEBYTECODE": "1"},
        {"PYTHONPYCACHEPREFIX": "/mine", "PYTHONDONTWRITEBYTECODE": "1"},
    ],
    ids=["off", "the-user's-own-prefix"],
)
def test_off_or_a_prefix_of_the_user_leaves_python_as_it_is(
    environ: dict[str, str], tmp_path: Path, python_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    before = dict(environ)
    assert use_bytecode_cache(environ, sentinel_in(tmp_path, compiled=False)) is None
    assert environ == before
    assert sys.pycache_prefix is None and sys.dont_write_bytecode


def test_a_folder_that_cannot_be_made_leaves_python_as_it_is(
    tmp_path: Path, python_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    (tmp_path / "file").write_text("")
    environ = {CACHE_ENV: str(tmp_path / "file" / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    assert use_bytecode_cache(environ, sentinel_in(tmp_path, compiled=False)) is None
    assert sys.pycache_prefix is None and "PYTHONPYCACHEPREFIX" not in environ


def test_no_home_to_cache_in_leaves_python_as_it_is(
    tmp_path: Path, python_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(bytecode, "default_cache", lambda: None)
    environ = {"PYTHONDONTWRITEBYTECODE": "1"}
    assert use_bytecode_cache(environ, sentinel_in(tmp_path, compiled=False)) is None
    assert environ == {"PYTHONDONTWRITEBYTECODE": "1"} and sys.pycache_prefix is None


def test_the_default_folder_is_in_the_users_xdg_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert bytecode.default_cache() == tmp_path / "embedpipe" / "bytecode"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert bytecode.default_cache() == tmp_path / "home" / ".cache" / "embedpipe" / "bytecode"


def test_the_command_and_its_child_processes_compile_into_the_cache_once(tmp_path: Path) -> None:
    """What a container run does: nothing written beside the sources, everything imported
    (by the command and by a process it starts) compiled into the cache, and read back."""
    package = tmp_path / "src"
    package.mkdir()
    (package / "parent_mod.py").write_text("VALUE = 1\n")
    (package / "child_mod.py").write_text("VALUE = 2\n")
    cache = tmp_path / "cache"
    script = (
        "import subprocess, sys\n"
        "from embedpipe.bytecode import use_bytecode_cache\n"
        "use_bytecode_cache()\n"
        "import parent_mod\n"
        "subprocess.run([sys.executable, '-c', 'import child_mod'], check=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    env.update(
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=os.pathsep.join([str(package), *sys.path[1:]]),
        **{CACHE_ENV: str(cache)},
    )

    def run() -> None:
        subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path)

    run()
    compiled = {p.name.split(".")[0] for p in cache.rglob("*.pyc")}
    assert {"parent_mod", "child_mod"} <= compiled
    assert not (package / "__pycache__").exists()
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*mod.*.pyc")}
    run()  # the second run reads them: none written again
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*mod.*.pyc")} == stamps


def test_the_embedpipe_command_sets_the_cache_up_before_its_imports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    env.update(PYTHONDONTWRITEBYTECODE="1", **{CACHE_ENV: str(tmp_path)})
    command = Path(sys.executable).with_name("embedpipe")
    out = subprocess.run([command, "--version"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    compiled = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.pyc")}
    # the CLI's imports, third-party and its own
    assert any("/site-packages/typer/main." in path for path in compiled)
    assert any("/embedpipe/cli/output." in path for path in compiled)
