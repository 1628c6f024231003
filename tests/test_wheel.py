"""The package as a user installs it: a wheel in a fresh virtual environment, run away from the
checkout, takes the bundled sample from raw text to a published artefact.

The wheel is built from a copy of the project's sources (nothing is written into the
checkout). The fresh environment sees the test environment's installed dependencies through
a `.pth` file naming its site-packages directory: a directory listed in a `.pth` file joins
`sys.path`, but the `.pth` files inside it are not read, so the checkout's editable install
stays invisible and `embedpipe` can only come from the wheel (checked).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from embedpipe.artefacts import verify
from embedpipe.artefacts.loader import VECTORS_FILE
from embedpipe.config import load_config
from embedpipe.corpus.registry import TABLES
from embedpipe.workdir import MANIFEST

pytestmark = [pytest.mark.slow, pytest.mark.spark]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CONFIG = ROOT / "configs" / "sample.toml"


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
    assert set(manifest.lineage.stages or {}) == set(TABLES.values())
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
