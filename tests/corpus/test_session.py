"""The session's task counts, which `embedpipe prepare` polls from another thread for its
progress bar."""

from __future__ import annotations

import threading
import time

import pytest

from embedpipe.corpus.spark.session import task_counts

pytestmark = pytest.mark.spark


def slow(x: int) -> int:
    time.sleep(0.5)
    return x


def test_task_counts_of_a_running_job(spark: object) -> None:
    """While a 4-task job runs, another thread sees its stage's 4 tasks; after it, none."""
    context = spark.sparkContext  # type: ignore[attr-defined]
    result: list[int] = []
    job = threading.Thread(
        target=lambda: result.extend(context.parallelize(range(4), 4).map(slow).collect())
    )
    job.start()
    seen = []
    while job.is_alive():
        seen.append(task_counts())
        time.sleep(0.05)
    job.join()
    assert result == [0, 1, 2, 3]
    running = [c for c in seen if c is not None and c[1] > 0]
    assert running and all(c[1] == 4 and 0 <= c[0] <= 4 for c in running)
    assert task_counts() == (0, 0)
