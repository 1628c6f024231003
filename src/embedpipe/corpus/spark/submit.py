"""Running corpus stages with spark-submit against a cluster master (standalone, YARN, k8s).

Stages run in the one job file of the package (`job.py` beside this module, found
through the package, so an installed wheel submits its own copy), named as its first
arguments: several stages share one application, and so one start-up of the driver and
executors. The package travels to the executors as a zip (`--py-files`), so the cluster needs only
pyspark, pyarrow and numpy installed, not embedpipe itself (or, with
`spark.ship_package = false`, an image that has it, as infra/Dockerfile builds).
Memory, cores, shuffle partitions and any `spark.conf` property pass through as `--conf`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import embedpipe
from embedpipe.config import RunConfig, is_secret_key, save_config, write_private
from embedpipe.corpus.registry import get_stage
from embedpipe.corpus.spark.session import driver_java_options
from embedpipe.processes import run_logged
from embedpipe.version import source_hash
from embedpipe.workdir import Workdir

# The spark-submit application of every stage, in the installed package (never a checkout's).
JOB_FILE = Path(__file__).resolve().with_name("job.py")


def package_zip(directory: Path) -> Path:
    """A zip of the embedpipe package for `--py-files` (rebuilt when the source changes)."""
    package = Path(embedpipe.__file__).resolve().parent
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


def submit_command(
    stages: Sequence[str],
    config: RunConfig,
    config_file: Path,
    py_files: Path | None,
    secrets_file: Path | None = None,
) -> list[str]:
    """The spark-submit command line of `stages` (in order) for `config.spark`'s master and mode.

    Client mode (local, standalone, YARN or Kubernetes): the driver runs here and reads the
    config file from this disk. Cluster mode (YARN, Kubernetes): the driver runs on the
    cluster, so the config file travels with `--files` and is named by its base name there;
    the workdir must then be a URL every node reads (HDFS, object storage). Properties that
    hold credentials never go on the command line (which `ps` shows): they are written to
    `secrets_file` (mode 0600) and passed with `--properties-file`, cluster defaults kept.
    """
    for stage in stages:
        get_stage(stage)  # an unknown stage is refused before anything is submitted
    spark = config.spark
    command = [
        spark_submit_executable(),
        "--master", spark.master,
        "--deploy-mode", spark.deploy_mode,
        "--name", f"embedpipe-{'+'.join(stages)}",
    ]  # fmt: skip
    if py_files is not None:
        command += ["--py-files", str(py_files)]
    config_arg = str(config_file)
    if spark.deploy_mode == "cluster":
        command += ["--files", str(config_file)]
        config_arg = config_file.name
    properties = spark.spark_properties()
    if spark.deploy_mode == "client":  # the driver starts here, as a local session does
        properties = {"spark.driver.extraJavaOptions": driver_java_options(), **properties}
    secrets = {}
    for key, value in properties.items():
        if is_secret_key(key):
            secrets[key] = value
        else:
            command += ["--conf", f"{key}={value}"]
    if secrets:
        if secrets_file is None:
            raise ValueError("spark.conf holds credentials: give a secrets_file for them")
        lines = (f"{key}={value.replace(chr(92), chr(92) * 2)}" for key, value in secrets.items())
        write_private(secrets_file, "\n".join(lines) + "\n")
        command += ["--properties-file", str(secrets_file), "--load-spark-defaults"]
    job_file = spark.job_file or str(JOB_FILE)
    return [*command, job_file, *stages, "--config", config_arg]


def submit_stage(
    stage: str, config: RunConfig, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run one stage through spark-submit and return its manifest."""
    return submit_stages([stage], config, log)[stage]


def submit_stages(
    stages: Sequence[str],
    config: RunConfig,
    log: Callable[[str], None] | None = None,
    done: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run `stages` in order as one spark-submit application; their manifests by stage.

    spark-submit's output (the driver's in client mode, the application's status in cluster
    mode) goes to `log` line by line. In client mode each manifest is a JSON line of the
    job's stdout, passed to `done` as the stage commits; in cluster mode the driver's stdout
    stays on the cluster, so the manifests are read from the workdir at the end (`started`
    tells whether the job reused an earlier output). A failed application raises and names
    the stages that had committed before it failed (their tables stay).
    """
    workdir = Workdir(config.workdir)
    config_file = save_config(config, workdir.run_config)
    py_files = package_zip(workdir.py_files) if config.spark.ship_package else None
    command = submit_command(stages, config, config_file, py_files, workdir.spark_secrets)
    env = {
        **os.environ,
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
    }
    manifests: dict[str, dict[str, Any]] = {}

    def relay(line: str) -> None:
        manifest = _manifest_line(line)
        if manifest is not None and manifest["stage"] in stages:
            manifests[manifest["stage"]] = manifest
            if done is not None:
                done(manifest["stage"], manifest)
        if log is not None:
            log(f"[spark-submit] {line}")

    submitted = datetime.now(timezone.utc).isoformat()
    finished = run_logged(command, relay, env=env)
    if finished.returncode != 0:
        committed = ", ".join(manifests) or "none"
        raise RuntimeError(
            f"spark-submit of the {', '.join(stages)} stage(s) exited with "
            f"{finished.returncode} (committed before it: {committed}):\n{finished.tail()}"
        )
    for stage in stages:
        if stage not in manifests:  # cluster mode: the driver printed them on the cluster
            manifest = workdir.require(get_stage(stage).table)
            manifests[stage] = {**manifest, "skipped": manifest["started"] < submitted}
            if done is not None:
                done(stage, manifests[stage])
    return manifests


def _manifest_line(line: str) -> dict[str, Any] | None:
    """A stage manifest the job printed as one JSON line, else None."""
    if not line.startswith("{"):
        return None
    try:
        found = json.loads(line)
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) and "stage" in found else None
