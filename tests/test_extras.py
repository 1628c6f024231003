"""Tests for embedpipe.extras and the install profiles of pyproject.toml: every third-party
import is declared in a profile, the core's modules import and work with only the core's
dependencies, and a package of a missing extra fails naming the command that installs it."""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import embedpipe
from embedpipe.extras import EXTRA_OF, MissingExtraError, install_hint, require

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(embedpipe.__file__).resolve().parent


def load_helper(name: str) -> Any:
    """tests/NAME.py as a module (the tests directory is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


installs = load_helper("installs")
canonical = installs.canonical
# The standard library's modules, with those of newer Pythons imported under a version check.
STDLIB = sys.stdlib_module_names | {"tomllib"}


def profiles() -> dict[str, set[str]]:
    """Distributions each profile declares ("core" and every extra), self-references left out."""
    project = installs.pyproject()
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {
        group: {canonical(Requirement(r).name) for r in reqs} - {"embedpipe"}
        for group, reqs in groups.items()
    }


@functools.cache
def owners() -> dict[str, list[str]]:
    """Top-level module -> the installed distributions that provide it (a slow scan: once).

    As `metadata.packages_distributions` of Python 3.11, which also reads the modules of a
    distribution without top_level.txt (numpy, safetensors) from its files; 3.10's does not.
    """
    found: dict[str, list[str]] = defaultdict(list)
    for dist in metadata.distributions():
        names = (dist.read_text("top_level.txt") or "").split() or {
            f.parts[0].partition(".")[0]
            for f in dist.files or []
            if f.parts[0] != ".." and not f.parts[0].endswith((".dist-info", ".data"))
        }
        for name in names:
            found[name].append(dist.metadata["Name"])
    return dict(found)


def distribution(module: str) -> str:
    """The distribution that installs top-level `module` here (its own name if none does)."""
    return canonical(owners().get(module, [module])[0])


def imports(root: Path) -> dict[str, set[str]]:
    """Every top-level module that files under `root` import absolutely, outside the standard
    library and the files' own directory -> the files that import it."""
    local = {p.stem for p in root.rglob("*.py")} | {p.name for p in root.rglob("*") if p.is_dir()}
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in (n.partition(".")[0] for n in names):
                if top not in STDLIB and top not in local | {"embedpipe"}:
                    found[top].add(path.relative_to(ROOT).as_posix())
    return found


def test_every_import_of_the_package_is_declared_by_the_core_or_an_extra() -> None:
    declared = profiles()
    runtime = set().union(*(d for name, d in declared.items() if name not in ("test", "bench")))
    missing = {m: files for m, files in imports(PACKAGE).items() if distribution(m) not in runtime}
    assert not missing, f"imported but declared in no runtime profile: {missing}"


def test_every_import_of_the_tests_is_declared() -> None:
    everything = set().union(*profiles().values()) | {"pytest", "packaging"}  # packaging: pytest's
    missing = {
        m: files
        for m, files in imports(ROOT / "tests").items()
        if distribution(m) not in everything
    }
    assert not missing, f"imported by tests but declared nowhere: {missing}"


def test_extra_of_names_the_extra_that_declares_each_module() -> None:
    declared = profiles()
    for module, extra in EXTRA_OF.items():
        assert distribution(module) in declared[extra], (module, extra)
        assert distribution(module) not in declared["core"], module
    assert {"torch", "pyspark", "prefect", "numba", "matplotlib", "pandas"} <= set(EXTRA_OF)


def test_the_core_works_with_only_the_core_dependencies(tmp_path: Path) -> None:
    store = tmp_path / "store"
    name, vectors = installs.publish_sample(store)
    (tmp_path / "out").mkdir()
    closure = installs.core_closure()
    allow = sorted(
        module for module, dists in owners().items() if any(canonical(d) in closure for d in dists)
    )
    assert {"numpy", "pyarrow", "safetensors", "fsspec", "yaml"} <= set(allow)
    settings = {"store": str(store), "name": name, "out": str(tmp_path / "out"),
                "skip": installs.PIPELINE_MODULES, "heavy": installs.HEAVY, "allow": allow}  # fmt: skip
    env = {"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"}
    found = installs.consume(sys.executable, settings, tmp_path, env)
    assert found["failed"] == {}
    assert found["heavy_loaded"] == [] and found["heavy_installed"] == []
    assert Path(found["embedpipe"]).resolve() == PACKAGE / "__init__.py"
    installs.check_consumed(found, store, name, vectors)


def test_require_names_the_extra_of_a_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'embedpipe\[pipeline\]'") as e:
        require("torch", "training")
    assert e.value.name == "torch" and str(e.value).startswith("training needs torch")
    assert isinstance(e.value, ModuleNotFoundError)  # `except ImportError` still catches it


def test_require_leaves_other_missing_modules_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "not_an_extra", None)
    with pytest.raises(ModuleNotFoundError) as e:
        require("not_an_extra", "nothing")
    assert type(e.value) is ModuleNotFoundError
    assert install_hint(ModuleNotFoundError(name="transformers.models")) == (
        "pip install 'embedpipe[hf]'"
    )
    assert require("json", "anything").dumps([1]) == "[1]"
