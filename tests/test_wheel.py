"""The package as a user installs it: a wheel in a fresh virtual environment, run away from the
checkout, takes the bundled sample from raw text to a published artefact; and the core wheel,
installed alone with its own dependencies and no network, serves the vectors.

The wheel is built from a copy of the project's sources (nothing is written into the
checkout). The pipeline's fresh environment sees the test environment's installed
dependencies through a `.pth` file naming its site-packages directory: a directory listed in
a `.pth` file joins `sys.path`, but the `.pth` files inside it are not read, so the checkout's
editable install stays invisible and `embedpipe` can only come from the wheel (checked).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from embedpipe.artefacts import verify
from embedpipe.artefacts.loader import VECTORS_FILE
from embedpipe.config import load_config
from embedpipe.workdir import MANIFEST

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CONFIG = ROOT / "configs" / "sample.toml"


def load_helper(name: str) -> Any:
    """tests/NAME.py as a module (the tests directory is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


installs = load_helper("installs")
run, build_wheel = installs.run, installs.build_wheel


def fresh_venv(path: Path, wheel: Path) -> Path:
    """A new environment with the wheel installed; returns its python."""
    run([sys.executable, "-m", "venv", "--without-pip", str(path)], timeout=300)
    python = path / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        timeout=60,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "test-dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", str(wheel)],
        timeout=300,
    )  # fmt: skip
    return python


def sample_project(where: Path) -> Path:
    """configs/sample.toml and the data it names, in a directory of their own."""
    for relative in load_config(str(SAMPLE_CONFIG)).corpus.paths:
        (where / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, where / relative)
    shutil.copy(SAMPLE_CONFIG, where / "sample.toml")
    return where / "sample.toml"


@pytest.mark.spark
def test_the_wheel_runs_the_sample_pipeline_outside_the_checkout(tmp_path: Path) -> None:
    started = time.monotonic()
    wheel = build_wheel(tmp_path / "dist", tmp_path)
    venv = tmp_path / "venv"
    python = fresh_venv(venv, wheel)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "PREFECT_API", "EMBEDPIPE_"))
    }
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=str(python),
        PYSPARK_DRIVER_PYTHON=str(python),
        # spark-submit is a script of the pyspark installation (the test environment's).
        PATH=os.pathsep.join([str(venv / "bin"), env["PATH"], str(Path(sys.executable).parent)]),
    )
    where = run(
        [str(python), "-c", "import embedpipe, embedpipe.flows.pretrain; print(embedpipe.__file__)"],
        timeout=300, env=env, cwd=tmp_path,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    assert Path(where).resolve().is_relative_to(venv.resolve()), where

    project = tmp_path / "project"
    project.mkdir()
    config = sample_project(project)
    overrides = ["train.epochs=1", "train.nproc=1", "train.sgns.dim=32", "spark.master=local[2]"]
    done = run(
        [str(venv / "bin" / "embedpipe"), "run", "--config", str(config),
         *[a for o in overrides for a in ("--set", o)]],
        timeout=1500, env=env, cwd=project,
    )  # fmt: skip
    artefact = project / "artefacts" / "wordnet-sample" / "v0001"  # the default store
    assert (artefact / "manifest.json").is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    assert (artefact / VECTORS_FILE).is_file()
    manifest = verify(artefact)  # every file's sha256 against the manifest
    assert manifest.model is not None and manifest.model.hyperparameters["sgns"]["dim"] == 32
    assert set(manifest.lineage.stages or {}) == {"tokens", "vocab", "sequences"}  # sgns's
    assert "Published" in done.stdout

    # spark-submit runs the wheel's own job file (no checkout, no jobs/ directory).
    done = run(
        [str(venv / "bin" / "embedpipe"), "prepare", "--config", str(config), "--stage",
         "build_vocab", "--set", "spark.submit=true", "--set", "spark.master=local[1]",
         "--set", "vocab.min_count=6"],
        timeout=600, env=env, cwd=project,
    )  # fmt: skip
    # The job printed its manifest as its last line, which reached us through spark-submit.
    assert any(line.startswith("[spark-submit] {") for line in done.stdout.splitlines()), (
        done.stdout[-3000:]
    )
    vocab = json.loads((project / "work" / "sample" / "vocab" / MANIFEST).read_text())
    assert vocab["config"]["vocab"]["min_count"] == 6
    print(f"wheel build, install and sample run took {time.monotonic() - started:.0f} s")


def offline_env(**extra: str) -> dict[str, str]:
    """This environment without pip's settings (config files, PIP_* variables such as this
    machine's find-links and extra index URLs) and with every proxy pointing at a closed port,
    so an install that tried the network would fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    closed = "http://127.0.0.1:9"
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", http_proxy=closed,
               https_proxy=closed, HTTP_PROXY=closed, HTTPS_PROXY=closed, **extra)  # fmt: skip
    return env


def test_the_core_wheel_installs_alone_offline_and_serves_the_vectors(tmp_path: Path) -> None:
    """`pip install embedpipe` as a consumer does it: the wheel and the core's dependencies
    only (wheels made here from the installed ones), no index, no network; then the vectors
    load, export and evaluate, the read-only commands work, and no pipeline package exists."""
    wheel = build_wheel(tmp_path / "dist", tmp_path)
    house = tmp_path / "wheelhouse"
    closure = installs.core_closure()
    for name in sorted(closure):
        installs.repack(metadata.distribution(name), house)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=300)
    python = str(venv / "bin" / "python")
    env = offline_env()
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-index",
         "--no-cache-dir", "--find-links", str(house), str(wheel)],
        timeout=600, env=env,
    )  # fmt: skip
    listed = run([sys.executable, "-m", "pip", "--python", python, "list", "--format=json"],
                 timeout=120, env=env).stdout  # fmt: skip
    assert {installs.canonical(d["name"]) for d in json.loads(listed)} == closure | {"embedpipe"}

    store = tmp_path / "store"
    name, vectors = installs.publish_sample(store)
    (tmp_path / "out").mkdir()
    settings = {"store": str(store), "name": name, "out": str(tmp_path / "out"),
                "skip": installs.PIPELINE_MODULES, "heavy": installs.HEAVY, "allow": None}  # fmt: skip
    found = installs.consume(python, settings, tmp_path, env)
    assert Path(found["embedpipe"]).resolve().is_relative_to(venv.resolve())
    assert found["failed"] == {} and found["heavy_loaded"] == []
    assert found["heavy_installed"] == []  # torch, pyspark, prefect, numba, ... are absent
    installs.check_consumed(found, store, name, vectors)

    cli = [str(venv / "bin" / "embedpipe")]
    listing = run([*cli, "artefacts", "list", "--store", str(store)], timeout=120, env=env)
    assert listing.stdout.split() == [name, "v0001", "latest", f"{name}-mlm", "v0001", "latest"]
    run([*cli, "artefacts", "verify", name, "--store", str(store)], timeout=120, env=env)
    scores = run([*cli, "evaluate", name, "--store", str(store)], timeout=300, env=env).stdout
    assert json.loads(scores)["wordsim353"] == found["evaluation"]["wordsim353"]
    mlm = run([*cli, "evaluate", f"{name}-mlm", "--store", str(store)], 300, env=env).stdout
    assert json.loads(mlm)["simlex999"] == found["mlm_evaluation"]["simlex999"]
    word = found["vocab"][-1]
    near = run([*cli, "neighbors", name, word, "-k", "3", "--store", str(store)], 120, env=env)
    assert [line.split()[1] for line in near.stdout.splitlines()] == [
        w for w, _ in found["neighbours"][:3]
    ]
    # The report's plots need matplotlib (the pipeline extra): the error says how to get it.
    report = subprocess.run(
        [*cli, "report", name, "--out", str(tmp_path / "report"), "--store", str(store)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert report.returncode != 0 and "pip install 'embedpipe[pipeline]'" in report.stderr
