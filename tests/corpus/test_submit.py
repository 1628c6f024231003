"""The spark-submit command of every submission mode, and the properties an in-process session gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedpipe.config import ConfigError, SparkConfig, load_config
from embedpipe.corpus.submit import JOB_FILES, JOBS_DIR, submit_command

CONFIG_FILE = Path("/runs/run-config.json")
ZIP = Path("/runs/.py-files/embedpipe-abc.zip")


def command_of(stage: str, *overrides: str, py_files: Path | None = ZIP) -> list[str]:
    return submit_command(stage, load_config(None, list(overrides)), CONFIG_FILE, py_files)


def options(command: list[str]) -> dict[str, list[str]]:
    """spark-submit's options up to the application file: name -> values (repeatable)."""
    found: dict[str, list[str]] = {}
    args = command[1:]
    i = 0
    while args[i].startswith("--"):
        found.setdefault(args[i], []).append(args[i + 1])
        i += 2
    return found


def confs(command: list[str]) -> dict[str, str]:
    return dict(c.split("=", 1) for c in options(command).get("--conf", []))


def test_local_mode_ships_the_package_and_passes_resources() -> None:
    command = command_of(
        "build_vocab", "spark.master=local[2]", "spark.driver_memory=3g",
        "spark.shuffle_partitions=16", 'spark.conf={"spark.ui.enabled": "false"}',
    )  # fmt: skip
    assert command[0].endswith("spark-submit")
    opts = options(command)
    assert opts["--master"] == ["local[2]"] and opts["--deploy-mode"] == ["client"]
    assert opts["--py-files"] == [str(ZIP)] and opts["--name"] == ["embedpipe-build_vocab"]
    assert confs(command) == {
        "spark.driver.memory": "3g",
        "spark.sql.shuffle.partitions": "16",
        "spark.ui.enabled": "false",
    }
    assert command[-3:] == [str(JOBS_DIR / JOB_FILES["build_vocab"]), "--config", str(CONFIG_FILE)]
    assert Path(command[-3]).is_file()


def test_standalone_mode_caps_cores_and_sizes_executors() -> None:
    command = command_of(
        "cooccur", "spark.submit=true", "spark.master=spark://10.0.0.5:7077",
        "spark.executor_memory=4g", "spark.executor_cores=2", "spark.cores_max=8",
        'spark.conf={"spark.sql.shuffle.partitions": "64", "spark.network.timeout": "300s"}',
    )  # fmt: skip
    assert options(command)["--master"] == ["spark://10.0.0.5:7077"]
    assert confs(command) == {
        "spark.driver.memory": "2g",
        "spark.executor.memory": "4g",
        "spark.executor.cores": "2",
        "spark.cores.max": "8",
        "spark.sql.shuffle.partitions": "64",  # spark.conf wins over shuffle_partitions
        "spark.network.timeout": "300s",
    }
    assert command[-3].endswith("jobs/cooccur.py")


def test_yarn_cluster_mode_sends_the_config_file_along() -> None:
    command = command_of(
        "tokenize", "spark.master=yarn", "spark.deploy_mode=cluster", "spark.num_executors=10",
        'spark.conf={"spark.yarn.queue": "nlp"}',
    )  # fmt: skip
    opts = options(command)
    assert opts["--master"] == ["yarn"] and opts["--deploy-mode"] == ["cluster"]
    assert opts["--files"] == [str(CONFIG_FILE)]
    assert confs(command)["spark.executor.instances"] == "10"
    assert confs(command)["spark.yarn.queue"] == "nlp"
    # The driver runs in a YARN container, where --files land in the working directory.
    assert command[-2:] == ["--config", "run-config.json"]


def test_kubernetes_mode_runs_the_jobs_of_the_image() -> None:
    command = command_of(
        "encode", "spark.master=k8s://https://kube.example:6443", "spark.deploy_mode=cluster",
        "spark.ship_package=false", "spark.jobs_dir=local:///opt/embedpipe/jobs/",
        'spark.conf={"spark.kubernetes.container.image": "embedpipe:0.1", '
        '"spark.kubernetes.namespace": "nlp"}',
        py_files=None,
    )  # fmt: skip
    opts = options(command)
    assert opts["--master"] == ["k8s://https://kube.example:6443"]
    assert "--py-files" not in opts
    assert confs(command)["spark.kubernetes.container.image"] == "embedpipe:0.1"
    assert command[-3] == "local:///opt/embedpipe/jobs/encode.py"


def test_cluster_mode_on_a_standalone_master_is_refused() -> None:
    with pytest.raises(ConfigError, match="YARN or Kubernetes"):
        load_config(None, ["spark.master=spark://h:7077", "spark.deploy_mode=cluster"])
    with pytest.raises(ConfigError, match="executor_cores"):
        SparkConfig(executor_cores=0)


def test_the_in_process_session_gets_the_same_properties(spark) -> None:
    """The session-wide fixture was made from SparkConfig: its properties reached the JVM."""
    wanted = SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="1g")
    conf = spark.sparkContext.getConf()
    for key, value in wanted.spark_properties().items():
        assert conf.get(key) == value, key
