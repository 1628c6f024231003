"""Running a corpus stage where the config says: this process's Spark session or spark-submit.

`embedpipe prepare` and the Prefect flow both run stages through `launch_stage`, so
`spark.submit` means the same in both; the spark-submit job itself runs the stage in its
own session (`job.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embedpipe.config import RunConfig
from embedpipe.corpus.registry import get_stage


def launch_stage(
    name: str, config: RunConfig, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run stage `name` and return its manifest (`skipped` when its output was reused).

    `spark.submit = true`: through spark-submit to `spark.master`, its output to `log`
    line by line; else in this process's session (created on first use, then shared).
    """
    stage = get_stage(name)
    if config.spark.submit:
        from embedpipe.corpus.spark.submit import submit_stage

        return submit_stage(name, config, log=log)
    from embedpipe.corpus.spark.session import get_spark

    return stage.run(get_spark(config.spark), config)
