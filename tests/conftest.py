"""Shared fixtures: one Spark session for the whole run; tiny corpora written per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Under pytest-xdist (`make test` runs two workers) each worker's flows get their own Prefect
# home: their temporary servers would otherwise share one SQLite database.
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    home = Path(tempfile.gettempdir()) / f"embedpipe-tests-{os.getuid()}" / worker / "prefect"
    home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    os.environ["PREFECT_HOME"] = str(home)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from embedpipe.config import SparkConfig
    from embedpipe.corpus.spark.session import get_spark

    session = get_spark(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="1g"))
    yield session
    session.stop()
