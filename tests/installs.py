"""Helpers of the install tests (test_wheel.py, test_extras.py): build the package's wheel,
read the profiles of pyproject.toml, make wheels of installed distributions (so a fresh
environment installs the core with no index and no network), and run tests/core_consumer.py
and check what it saw. Loaded by file: the tests directory is not on sys.path."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from packaging.requirements import Requirement

from embedpipe.artefacts import export_vectors, load
from embedpipe.artefacts.encoder import evaluate_input_matrix
from embedpipe.artefacts.publish import evaluate_vectors
from embedpipe.evaluate import BENCHMARKS, PROBE_WORDS
from embedpipe.extras import EXTRA_OF

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONSUMER = Path(__file__).with_name("core_consumer.py")
# Modules of the pipeline extra: a core install never imports them.
PIPELINE_MODULES = [
    "embedpipe.corpus",
    "embedpipe.train",
    "embedpipe.flows",
    "embedpipe.orchestration",
]
# What a core install must not load. pydantic is left out: typer (core) brings it too.
HEAVY = sorted((set(EXTRA_OF) - {"pydantic"}) | {"scipy", "gensim", "duckdb"})
# Files pip writes when it installs a distribution: not part of the wheel.
INSTALLER_FILES = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


def run(command: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{command}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def build_wheel(out: Path, work: Path) -> Path:
    """`pip wheel` of a copy of the sources (the build writes build/ and egg-info beside them)."""
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.nbi", "*.nbc")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    package = source / "src"
    data = {
        p.relative_to(package).as_posix()
        for p in (package / "embedpipe").rglob("*")
        if p.is_file() and p.suffix != ".py"
    }
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out), str(source)],
        timeout=600, cwd=work,
    )  # fmt: skip
    (wheel,) = out.glob("embedpipe-*.whl")
    # Every file the package needs besides its modules is in the wheel (package-data).
    with zipfile.ZipFile(wheel) as zf:
        packed = set(zf.namelist())
    assert data <= packed
    return wheel


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict[str, Any]:
    """The [project] table of pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def core_closure() -> set[str]:
    """The distributions a core install brings: its dependencies, theirs, and so on, with the
    extras each names (markers evaluated for this interpreter), as installed here."""
    todo = [(Requirement(r), ("",)) for r in pyproject()["dependencies"]]
    seen: set[str] = set()
    wanted: set[tuple[str, str]] = set()
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = canonical(req.name)
        seen.add(name)
        for extra in ("", *req.extras):
            if (name, extra) not in wanted:
                wanted.add((name, extra))
                todo += [(Requirement(r), (extra,)) for r in metadata.requires(req.name) or []]
    return seen


def _wheel_tag(dist: metadata.Distribution) -> str:
    """The compressed tag of the wheel the distribution was installed from ("py3-none-any")."""
    tags = [
        line.split(":", 1)[1].strip().split("-")
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    assert tags, f"{dist.metadata['Name']} was not installed from a wheel"
    return "-".join(".".join(sorted({t[i] for t in tags})) for i in range(3))


def repack(dist: metadata.Distribution, out: Path) -> Path:
    """A wheel of an installed distribution, made of its installed files as RECORD lists them
    (scripts outside site-packages left out: pip writes them again from entry_points.txt)."""
    root = Path(str(dist.locate_file("")))
    name = canonical(dist.metadata["Name"]).replace("-", "_")
    info = f"{name}-{dist.version}.dist-info"
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{name}-{dist.version}-{_wheel_tag(dist)}.whl"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for file in dist.files or []:
            path = root / file
            if file.parts[0] == ".." or "__pycache__" in file.parts or not path.is_file():
                continue
            if file.parent.name.endswith(".dist-info"):
                if file.name in INSTALLER_FILES:
                    continue
                arcname = f"{info}/{file.name}"
            else:
                arcname = file.as_posix()
            data = path.read_bytes()
            zf.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append(f"{arcname},sha256={digest.decode()},{len(data)}")
        zf.writestr(f"{info}/RECORD", "\n".join([*records, f"{info}/RECORD,,"]) + "\n")
    return wheel


def publish_sample(store: Path) -> tuple[str, np.ndarray]:
    """An artefact of benchmark words in `store`, published by the store; name and vectors."""
    consumer = _consumer()
    words = sorted(set(PROBE_WORDS).union(*(b.words() for b in BENCHMARKS)))[:600]
    return consumer.publish_sample(store, words)


def _consumer() -> Any:
    """tests/core_consumer.py as a module."""
    spec = importlib.util.spec_from_file_location("core_consumer", CONSUMER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def consume(python: str, settings: dict[str, Any], where: Path, env: dict[str, str]) -> dict:
    """Run tests/core_consumer.py with `python`; its JSON answer."""
    (where / "settings.json").write_text(json.dumps(settings))
    done = run([python, str(CONSUMER), str(where / "settings.json")], 300, env=env, cwd=where)
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_consumed(found: dict[str, Any], store: Path, name: str, vectors: np.ndarray) -> None:
    """The consumer's view of the artefact (its out/ beside the store) is the one this
    environment has: the vectors, the evaluation, the neighbours, the exported file."""
    out = store.parent / "out"
    np.testing.assert_array_equal(np.load(out / "vectors.npy"), vectors)
    emb = load(name, store=store)
    assert found["vocab"] == emb.vocab
    expected = evaluate_vectors(emb.vectors, emb.vocab)  # the same numpy: the same floats
    assert json.dumps(found["evaluation"], sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert found["evaluation"]["wordsim353"]["found"] > 10  # scores were computed
    assert [w for w, _ in found["neighbours"]] == [
        w for w, _ in emb.most_similar(emb.vocab[-1], topn=5)
    ]
    mlm = load(f"{name}-mlm", store=store)
    assert found["mlm_layers"] == 1
    expected = evaluate_input_matrix(mlm)
    assert json.dumps(found["mlm_evaluation"], sort_keys=True) == json.dumps(
        expected, sort_keys=True
    )
    ours = Path(export_vectors(emb.path, "w2v-text", str(store.parent / "ours.txt")))
    assert found["exported_sha256"] == hashlib.sha256(ours.read_bytes()).hexdigest()
