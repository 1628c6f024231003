"""A credential given to a whole flow run lands in no file, log, parameter or command line.

The run plants two: a literal in `spark.conf` and one read from the environment through a
`${env:NAME}` reference. Both must reach Spark, and neither may appear in any file the run
writes (workdir, store, report, Prefect's database and result storage, temporary files),
in the flow run's parameters or logs as the Prefect API serves them, or in any process's
command line while the run goes on.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.spark]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "wordnet-glosses.txt.gz"
LITERAL = "Pl4nted-literal-9f3c1e"
FROM_ENV = "Pl4nted-from-env-77ab20"
SECRETS = (LITERAL.encode(), FROM_ENV.encode())
LARGEST_SCANNED = 256 << 20


class CommandLineWatch(threading.Thread):
    """Reads every process's command line (what `ps` shows) until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: list[str] = []
        self.scans = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    text = cmdline.read_bytes()
                except OSError:
                    continue  # the process ended
                if any(s in text for s in SECRETS):
                    self.seen.append(text.replace(b"\0", b" ").decode(errors="replace"))
            self.scans += 1
            time.sleep(0.05)


def files_holding_secrets(roots: list[Path], since: float) -> list[str]:
    """Files under `roots` changed since `since` that contain a planted secret."""
    found = []
    for root in roots:
        # os.walk skips a folder another test (or pytest worker) removes mid-walk; rglob raises.
        paths = (Path(d) / f for d, _, files in os.walk(root) for f in files)
        for path in paths:
            try:
                info = path.lstat()
                if not path.is_file() or path.is_symlink() or info.st_mtime < since:
                    continue
                if info.st_size <= LARGEST_SCANNED and any(s in path.read_bytes() for s in SECRETS):
                    found.append(f"{path} (mode {info.st_mode & 0o777:o})")
            except OSError:
                continue  # removed while scanning, or unreadable (not ours)
    return found


def api_record_of(flow_run_id: str) -> tuple[dict, list[str]]:
    """The flow run's parameters and log messages, as the Prefect API (and UI) serves them."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(flow_run_id).parameters
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return parameters, [log.message for log in logs]


def test_a_planted_credential_shows_nowhere_a_run_writes_or_displays(
    flow_module, prefect_harness: Path, spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH

    monkeypatch.setenv("EMBEDPIPE_TEST_SESSION_TOKEN", FROM_ENV)
    corpus = tmp_path / "tiny.txt"
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(1000)))
    conf = {
        "spark.hadoop.fs.s3a.secret.key": LITERAL,
        "spark.hadoop.fs.s3a.session.token": "${env:EMBEDPIPE_TEST_SESSION_TOKEN}",
        "spark.hadoop.fs.s3a.endpoint": "http://minio:9000",
    }
    params = flow_module.PretrainParameters.model_validate(
        {
            "name": "secretive",
            "workdir": str(tmp_path / "work"),
            "store": str(tmp_path / "store"),
            "corpus": {"paths": [str(corpus)]},
            "vocab": {"min_count": 3},
            "spark": {"conf": conf},
            "train": {"epochs": 1, "nproc": 1, "sgns": {"dim": 8, "batch_size": 512}},
        }
    )
    started = time.time() - 1
    watch = CommandLineWatch()
    watch.start()
    try:
        result = flow_module.pretrain_embeddings(params)
    finally:
        watch.halt.set()
        watch.join()

    # Both credentials reached Spark: the test is not passing because they were dropped.
    assert spark.conf.get("spark.hadoop.fs.s3a.secret.key") == LITERAL
    assert spark.conf.get("spark.hadoop.fs.s3a.session.token") == FROM_ENV

    assert watch.scans > 10 and watch.seen == []
    roots = [tmp_path, prefect_harness, Path(PREFECT_LOCAL_STORAGE_PATH.value()),
             Path(PREFECT_HOME.value()), Path(tempfile.gettempdir())]  # fmt: skip
    assert files_holding_secrets([r for r in roots if r.is_dir()], started) == []

    parameters, logs = api_record_of(result["flow_run_id"])
    shown = parameters["params"]["spark"]["conf"]
    assert shown["spark.hadoop.fs.s3a.secret.key"] == "***"
    assert shown["spark.hadoop.fs.s3a.session.token"] == "***"
    assert shown["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    assert logs and not any(LITERAL in m or FROM_ENV in m for m in logs)

    manifest = json.loads((Path(result["artefact"]) / "manifest.json").read_text())
    assert manifest["run_config"]["spark"]["conf"]["spark.hadoop.fs.s3a.secret.key"] == "***"
    assert os.environ["EMBEDPIPE_TEST_SESSION_TOKEN"] == FROM_ENV
