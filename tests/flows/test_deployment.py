"""prefect.yaml deployed to a real Prefect server, run by a process worker, on a tiny corpus.

Starts `prefect server start` on 127.0.0.1:4250 (its own PREFECT_HOME), the work pool and
worker of infra/prefect-worker.sh, deploys `nightly-sample` with `prefect deploy`, triggers
a run through the API with small parameters and waits for the published artefact. The
server, the worker and whatever they started are ended in every case.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedpipe.artefacts import verify
from embedpipe.processes import alive, descendants, end_tree

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.spark]

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
PORT = 4250  # this area's Prefect server port
API = f"http://127.0.0.1:{PORT}/api"
POOL = "embedpipe-process"
RUN_TIMEOUT = 900


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_healthy(server: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{API}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"no healthy server after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server and a process worker; yields the environment that reaches them."""
    assert port_is_free(PORT), f"port {PORT} is taken: another Prefect server is running"
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": API,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "EMBEDPIPE_HOME": str(ROOT),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    started: list[subprocess.Popen] = []
    try:
        server_log = home / "server.log"
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(PORT)],
            stdout=server_log.open("w"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        started.append(server)
        wait_healthy(server, server_log)
        worker_log = home / "worker.log"
        worker = subprocess.Popen(
            ["bash", str(ROOT / "infra" / "prefect-worker.sh"), POOL],
            stdout=worker_log.open("w"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        started.append(worker)
        yield {**env, "SERVER_LOG": str(server_log), "WORKER_LOG": str(worker_log)}
    finally:
        tree = [p for proc in started for p in (proc.pid, *descendants(proc.pid))]
        for proc in reversed(started):  # the worker (and its flow runs) first, then the server
            end_tree(proc.pid, grace=15)
        assert not [p for p in tree if alive(p)], "processes were left running"


def tiny_parameters(tmp_path: Path) -> dict[str, object]:
    corpus = tmp_path / "tiny.txt"
    sample = ROOT / "data" / "sample" / "wordnet-glosses.txt.gz"
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(600)))
    return {
        "name": "deployed",
        "workdir": str(tmp_path / "work"),
        "store": str(tmp_path / "store"),
        "corpus": {"paths": [str(corpus)]},
        "vocab": {"min_count": 2},
        "cooccur": {"window": 3, "num_shards": 2},
        "spark": {"master": "local[1]", "shuffle_partitions": 2, "driver_memory": "1g",
                  "conf": {"spark.ui.enabled": "false"}},
        "train": {"epochs": 1, "nproc": 1, "sgns": {"dim": 8, "batch_size": 512}},
    }  # fmt: skip


def test_a_deployment_runs_on_a_worker_and_publishes(prefect_stack, tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deployed = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", "prefect.yaml",
         "--name", "nightly-sample"],
        cwd=ROOT, env=prefect_stack, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    with temporary_settings({PREFECT_API_URL: API}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("pretrain-embeddings/nightly-sample")
            assert deployment.work_pool_name == POOL
            assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
            assert all(s.active for s in deployment.schedules)
            assert deployment.parameters["config_path"] == "configs/sample.toml"
            # The parameter form of the UI: every config section of PretrainParameters.
            schema = deployment.parameter_openapi_schema
            assert {"corpus", "vocab", "train", "spark"} <= set(
                schema["definitions"]["PretrainParameters"]["properties"]
            )
        started = time.monotonic()
        flow_run = run_deployment(
            "pretrain-embeddings/nightly-sample",
            parameters={"params": tiny_parameters(tmp_path), "config_path": None},
            timeout=0,
        )
        with get_client(sync_client=True) as client:
            while True:
                flow_run = client.read_flow_run(flow_run.id)
                if flow_run.state is not None and flow_run.state.is_final():
                    break
                assert time.monotonic() - started < RUN_TIMEOUT, (
                    f"the run is still {flow_run.state_name}:\n"
                    + Path(prefect_stack["WORKER_LOG"]).read_text()[-4000:]
                )
                time.sleep(2)
            seconds = time.monotonic() - started
            artifacts = client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
            logs = [
                entry.message
                for entry in client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
                )
            ]
    worker_log = Path(prefect_stack["WORKER_LOG"]).read_text()
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{worker_log[-4000:]}"
    print(f"deployment run took {seconds:.0f} s")

    artefact = tmp_path / "store" / "deployed" / "v0001"
    manifest = verify(artefact)
    assert manifest.lineage.training is not None and manifest.lineage.training["world_size"] == 1
    assert manifest.model is not None and manifest.model.hyperparameters["sgns"]["dim"] == 8
    by_key = {a.key: a for a in artifacts}
    assert {"corpus-stages", "training", "evaluation", "report"} <= set(by_key)
    stages = [row["stage"] for row in json.loads(by_key["corpus-stages"].data)]
    assert stages == ["tokenize", "build_vocab", "encode"]  # the tables sgns reads
    # The worker ran it, and torchrun's output reached the run log through the API.
    assert str(flow_run.id) in worker_log
    assert any("torch.distributed.run" in m for m in logs)
    assert any('"words_per_sec"' in m for m in logs)  # the trainer's summary line
