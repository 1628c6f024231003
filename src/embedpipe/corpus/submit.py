"""Running a corpus stage with spark-submit against a cluster master (standalone, YARN, k8s).

The package travels to the executors as a zip (`--py-files`), so the cluster needs only
pyspark, pyarrow and numpy installed, not embedpipe itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from embedpipe.config import RunConfig, save_config
from embedpipe.version import source_hash

JOBS_DIR = Path(__file__).resolve().parents[3] / "jobs"
JOB_FILES = {
    "tokenize": "tokenize_text.py",
    "build_vocab": "build_vocab.py",
    "encode": "encode.py",
    "bucket": "bucket.py",
    "cooccur": "cooccur.py",
}


def package_zip(directory: Path) -> Path:
    """A zip of the embedpipe package for `--py-files` (rebuilt when the source changes)."""
    package = Path(__file__).resolve().parents[1]
    target = directory / f"embedpipe-{source_hash()}.zip"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(package.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    zf.write(path, Path("embedpipe") / path.relative_to(package))
        tmp.rename(target)
    return target


def spark_submit_executable() -> str:
    """The spark-submit of the pyspark installed beside this interpreter."""
    beside = Path(sys.executable).parent / "spark-submit"
    found = str(beside) if beside.exists() else shutil.which("spark-submit")
    if not found:
        raise FileNotFoundError("spark-submit not found: install pyspark or put it on PATH")
    return found


def submit_command(stage: str, config: RunConfig, config_file: Path, py_files: Path) -> list[str]:
    spark = config.spark
    return [
        spark_submit_executable(),
        "--master", spark.master,
        "--driver-memory", spark.driver_memory,
        "--py-files", str(py_files),
        "--conf", f"spark.sql.shuffle.partitions={spark.shuffle_partitions}",
        *[arg for k, v in spark.conf.items() for arg in ("--conf", f"{k}={v}")],
        str(JOBS_DIR / JOB_FILES[stage]), "--config", str(config_file),
    ]  # fmt: skip


def submit_stage(stage: str, config: RunConfig) -> dict[str, Any]:
    """Run one stage through spark-submit; its manifest is the job's last stdout line."""
    work = Path(config.workdir)
    config_file = save_config(config, work / "run-config.json")
    command = submit_command(stage, config, config_file, package_zip(work / ".py-files"))
    env = {
        **os.environ,
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(
            f"spark-submit {JOB_FILES[stage]} exited with {done.returncode}:\n"
            f"{(done.stdout + done.stderr)[-4000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])
