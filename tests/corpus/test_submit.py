"""The spark-submit command of every submission mode, and the properties an in-process session gets."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

import embedpipe
from embedpipe.config import ConfigError, SparkConfig, load_config
from embedpipe.corpus.registry import STAGES
from embedpipe.corpus.spark import job
from embedpipe.corpus.spark.session import driver_java_options
from embedpipe.corpus.spark.submit import JOB_FILE, submit_command
from embedpipe.workdir import Workdir

CONFIG_FILE = Path("/runs/run-config.json")
ZIP = Path("/runs/.py-files/embedpipe-abc.zip")


def command_of(stage: str, *overrides: str, py_files: Path | None = ZIP) -> list[str]:
    return submit_command([stage], load_config(None, list(overrides)), CONFIG_FILE, py_files)


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
        "spark.driver.extraJavaOptions": driver_java_options(),  # the driver starts here
        "spark.driver.memory": "3g",
        "spark.sql.shuffle.partitions": "16",
        "spark.ui.enabled": "false",
    }
    assert command[-4:] == [str(JOB_FILE), "build_vocab", "--config", str(CONFIG_FILE)]
    assert Path(command[-4]).is_file()


def test_standalone_mode_caps_cores_and_sizes_executors() -> None:
    command = command_of(
        "cooccur", "spark.submit=true", "spark.master=spark://10.0.0.5:7077",
        "spark.executor_memory=4g", "spark.executor_cores=2", "spark.cores_max=8",
        'spark.conf={"spark.sql.shuffle.partitions": "64", "spark.network.timeout": "300s"}',
    )  # fmt: skip
    assert options(command)["--master"] == ["spark://10.0.0.5:7077"]
    assert confs(command) == {
        "spark.driver.extraJavaOptions": driver_java_options(),
        "spark.driver.memory": "2g",
        "spark.executor.memory": "4g",
        "spark.executor.cores": "2",
        "spark.cores.max": "8",
        "spark.sql.shuffle.partitions": "64",  # spark.conf wins over shuffle_partitions
        "spark.network.timeout": "300s",
    }
    assert command[-4:-2] == [str(JOB_FILE), "cooccur"]


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
    assert command[-4:] == [str(JOB_FILE), "tokenize", "--config", "run-config.json"]


IMAGE_JOB = "local:///usr/local/lib/python3.11/site-packages/embedpipe/corpus/spark/job.py"


def test_kubernetes_mode_runs_the_job_file_of_the_image() -> None:
    command = command_of(
        "encode", "spark.master=k8s://https://kube.example:6443", "spark.deploy_mode=cluster",
        "spark.ship_package=false", f"spark.job_file={IMAGE_JOB}",
        'spark.conf={"spark.kubernetes.container.image": "embedpipe:0.1", '
        '"spark.kubernetes.namespace": "nlp"}',
        py_files=None,
    )  # fmt: skip
    opts = options(command)
    assert opts["--master"] == ["k8s://https://kube.example:6443"]
    assert "--py-files" not in opts
    assert confs(command)["spark.kubernetes.container.image"] == "embedpipe:0.1"
    assert command[-4:-2] == [IMAGE_JOB, "encode"]


def test_the_job_file_ships_inside_the_package_and_runs_any_registered_stage() -> None:
    """The one job file is the installed package's (not a checkout's), for every stage."""
    package = Path(embedpipe.__file__).resolve().parent
    assert package / "corpus" / "spark" / "job.py" == JOB_FILE and JOB_FILE.is_file()
    assert Path(job.__file__).resolve() == JOB_FILE
    for name in STAGES:
        args = job.parse_args([name, "--config", "run.json", "--set", "vocab.min_count=2"])
        assert (args.stages, args.config, args.set) == ([name], "run.json", ["vocab.min_count=2"])
    assert job.parse_args([*STAGES, "--config", "run.json"]).stages == list(STAGES)
    with pytest.raises(SystemExit):
        job.parse_args(["tokenise", "--config", "run.json"])
    with pytest.raises(KeyError, match="unknown corpus stage 'tokenise'"):
        command_of("tokenise")


def test_no_module_beside_the_job_file_shadows_the_standard_library() -> None:
    """spark-submit puts the job file's directory first on sys.path (a `tokenize.py` there
    would replace the standard library's for everything the job imports)."""
    beside = {p.stem for p in JOB_FILE.parent.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert not beside & set(sys.stdlib_module_names)


def test_submitted_files_live_under_a_local_workdir_or_a_temporary_directory(
    tmp_path: Path,
) -> None:
    local = Workdir(str(tmp_path / "work"))
    assert local.run_config == tmp_path / "work" / "run-config.json"
    assert local.py_files.parent == tmp_path / "work"
    remote, other = Workdir("s3://bucket/work"), Workdir("s3://bucket/other")
    assert remote.run_config.parent == remote.py_files.parent != other.run_config.parent
    assert remote.run_config.is_absolute()


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


def test_credentials_stay_off_the_command_line_and_out_of_readable_files(tmp_path: Path) -> None:
    from embedpipe.config import save_config

    secret = "s3cr3t-Planted\\value"
    config = load_config(
        None,
        [
            f"workdir={tmp_path}",
            'spark.conf={"spark.hadoop.fs.s3a.secret.key": "'
            + secret.replace("\\", "\\\\")
            + '", "spark.hadoop.fs.s3a.endpoint": "http://minio:9000"}',
        ],
    )
    wd = Workdir(str(tmp_path))
    config_file = save_config(config, wd.run_config)
    command = submit_command(["encode"], config, config_file, ZIP, wd.spark_secrets)
    assert not any("s3cr3t" in arg for arg in command)  # what `ps` would show
    assert "spark.hadoop.fs.s3a.endpoint=http://minio:9000" in command
    at = command.index("--properties-file")
    assert command[at + 1] == str(wd.spark_secrets) and "--load-spark-defaults" in command
    # The properties file (Java escaping of the backslash) and the run config the job
    # reads hold it, readable by their owner only.
    lines = wd.spark_secrets.read_text().splitlines()
    assert lines == ["spark.hadoop.fs.s3a.secret.key=s3cr3t-Planted\\\\value"]
    for path in (wd.spark_secrets, config_file):
        assert path.stat().st_mode & 0o777 == 0o600, path
    # The training run's saved config masks it (training needs no storage credentials).
    masked = tmp_path / "train-run-config.json"
    save_config(config, masked, redact=True)
    assert "s3cr3t" not in masked.read_text() and "***" in masked.read_text()
    assert load_config(masked).spark.conf["spark.hadoop.fs.s3a.secret.key"] == "***"


def test_the_shipped_zip_has_the_source_hash_of_the_package(tmp_path: Path) -> None:
    """Run from the `--py-files` zip (as spark-submit's executors and driver do), the package
    hashes the same source: stage fingerprints agree between in-process and submitted runs."""
    import subprocess

    from embedpipe.corpus.spark.submit import package_zip
    from embedpipe.version import source_hash

    archive = package_zip(tmp_path)
    probe = "import embedpipe.version as v; print(v.__file__); print(v.source_hash())"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(archive), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    where, digest = done.stdout.split()
    assert where.startswith(str(archive))  # imported from the zip, not the checkout
    assert digest == source_hash() != hashlib.sha256().hexdigest()[:12]


def test_submitted_stages_share_one_application_and_report_each_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With spark.submit, `launch_stages` makes one submission of every stage; the progress
    hooks still see each stage start and finish in order."""
    from embedpipe.corpus.spark import launch, submit

    submissions: list[list[str]] = []

    def one_application(names, config, log=None, done=None):  # noqa: ANN001, ANN202
        submissions.append(list(names))
        manifests = {}
        for name in names:
            manifests[name] = {"stage": name, "skipped": False}
            done(name, manifests[name])
        return manifests

    monkeypatch.setattr(submit, "submit_stages", one_application)
    events: list[str] = []
    config = load_config(None, ["spark.submit=true"])
    manifests = launch.launch_stages(
        ["tokenize", "build_vocab", "encode"], config,
        started=lambda name: events.append(f"start {name}"),
        done=lambda name, _: events.append(f"done {name}"),
    )  # fmt: skip
    assert submissions == [["tokenize", "build_vocab", "encode"]]
    assert list(manifests) == ["tokenize", "build_vocab", "encode"]
    assert events == [
        "start tokenize", "done tokenize", "start build_vocab", "done build_vocab",
        "start encode", "done encode",
    ]  # fmt: skip
