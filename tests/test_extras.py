"""Tests for embedpipe.extras and the install profiles of pyproject.toml: every third-party
import is declared in a profile, the core's modules import and work with only the core's
dependencies, and a package of a missing extra fails naming the command that installs it."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from packaging.requirements import Requirement

import embedpipe
from embedpipe.artefacts import export_vectors, load
from embedpipe.artefacts.publish import evaluate_vectors
from embedpipe.evaluate import BENCHMARKS, PROBE_WORDS
from embedpipe.extras import EXTRA_OF, MissingExtraError, install_hint, require

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(embedpipe.__file__).resolve().parent
CONSUMER = Path(__file__).resolve().parent / "core_consumer.py"
# Modules of the pipeline extra: a core install never imports them.
PIPELINE_MODULES = [
    "embedpipe.corpus",
    "embedpipe.train",
    "embedpipe.flows",
    "embedpipe.orchestration",
]
# What a core install must not load. pydantic is left out: typer (core) brings it too.
HEAVY = sorted((set(EXTRA_OF) - {"pydantic"}) | {"scipy", "gensim", "duckdb"})


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def profiles() -> dict[str, set[str]]:
    """Distributions each profile declares ("core" and every extra), self-references left out."""
    project = pyproject()
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {
        group: {canonical(Requirement(r).name) for r in reqs} - {"embedpipe"}
        for group, reqs in groups.items()
    }


@functools.cache
def owners() -> dict[str, list[str]]:
    """Top-level module -> the installed distributions that provide it (a slow scan: once)."""
    return metadata.packages_distributions()


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
                if top not in sys.stdlib_module_names and top not in local | {"embedpipe"}:
                    found[top].add(path.relative_to(ROOT).as_posix())
    return found


def test_every_import_of_the_package_is_declared_by_the_core_or_an_extra() -> None:
    declared = profiles()
    runtime = declared["core"] | declared["pipeline"] | declared["hf"]
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


def core_closure() -> set[str]:
    """The distributions a core install brings: its dependencies, theirs, and so on (markers
    evaluated for this interpreter, extras not followed)."""
    todo = [Requirement(r) for r in pyproject()["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if canonical(req.name) not in seen:
            seen.add(canonical(req.name))
            todo += [Requirement(r) for r in metadata.requires(req.name) or []]
    return seen


def publish_sample(store: Path) -> tuple[str, np.ndarray]:
    """An artefact of benchmark words in `store`, published by the store; name and vectors."""
    consumer = load_consumer()
    words = sorted(set(PROBE_WORDS).union(*(b.words() for b in BENCHMARKS)))[:600]
    return consumer.publish_sample(store, words)


def load_consumer() -> Any:
    """tests/core_consumer.py as a module (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("core_consumer", CONSUMER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def consume(python: str, settings: dict[str, Any], where: Path, env: dict[str, str]) -> dict:
    """Run tests/core_consumer.py with `python`; its JSON answer."""
    (where / "settings.json").write_text(json.dumps(settings))
    done = subprocess.run(
        [python, str(CONSUMER), str(where / "settings.json")],
        capture_output=True, text=True, timeout=300, env=env, cwd=where,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_consumed(found: dict[str, Any], store: Path, name: str, vectors: np.ndarray) -> None:
    """The consumer's view of the artefact is the one this environment has."""
    out = store.parent / "out"
    np.testing.assert_array_equal(np.load(out / "vectors.npy"), vectors)
    emb = load(name, store=store)
    assert found["vocab"] == emb.vocab
    expected = evaluate_vectors(emb.vectors, emb.vocab)  # the same numpy: the same floats
    assert json.dumps(found["evaluation"], sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert found["evaluation"]["wordsim353"]["found"] > 10  # scores were computed
    assert [w for w, _ in found["neighbours"]] == [w for w, _ in emb.most_similar(emb.vocab[-1], 5)]
    ours = Path(export_vectors(emb.path, "w2v-text", str(store.parent / "ours.txt")))
    assert found["exported_sha256"] == hashlib.sha256(ours.read_bytes()).hexdigest()


def test_the_core_works_with_only_the_core_dependencies(tmp_path: Path) -> None:
    store = tmp_path / "store"
    name, vectors = publish_sample(store)
    (tmp_path / "out").mkdir()
    closure = core_closure()
    allow = sorted(
        module for module, dists in owners().items() if any(canonical(d) in closure for d in dists)
    )
    assert {"numpy", "pyarrow", "safetensors", "fsspec", "yaml"} <= set(allow)
    settings = {"store": str(store), "name": name, "out": str(tmp_path / "out"),
                "skip": PIPELINE_MODULES, "heavy": HEAVY, "allow": allow}  # fmt: skip
    env = {"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"}
    found = consume(sys.executable, settings, tmp_path, env)
    assert found["failed"] == {}
    assert found["heavy_loaded"] == [] and found["heavy_installed"] == []
    assert Path(found["embedpipe"]).resolve() == PACKAGE / "__init__.py"
    check_consumed(found, store, name, vectors)


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
