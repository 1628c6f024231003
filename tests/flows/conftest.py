"""One Prefect test harness (a temporary API on a temporary database) for the flow tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="package")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Yields the directory of the harness's database (every file the API writes)."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}),
    ):
        url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
        yield Path(url.split(":///", 1)[1]).parent


@pytest.fixture(scope="package")
def flow_module(prefect_harness: Path) -> ModuleType:
    from embedpipe.flows import pretrain as module

    return module
