"""Running corpus stages where the config says: this process's Spark session or spark-submit.

`embedpipe prepare` and the Prefect flow both run stages through this module, so
`spark.submit` means the same in both; the spark-submit job itself runs the stages in its
own session (`job.py`). `launch_stages` submits several stages as one application, so a
cluster starts its driver and executors once for a whole `prepare`, not once per stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def launch_stages(
    names: Sequence[str],
    config: RunConfig,
    log: Callable[[str], None] | None = None,
    started: Callable[[str], None] | None = None,
    done: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run stages `names` in order; their manifests by stage.

    `started(name)` and `done(name, manifest)` are called around each stage as it runs
    (with `spark.submit`, as the one application's output reports each stage's commit).
    """
    names = list(names)
    if not (config.spark.submit and len(names) > 1):
        manifests = {}
        for name in names:
            if started is not None:
                started(name)
            manifests[name] = launch_stage(name, config, log=log)
            if done is not None:
                done(name, manifests[name])
        return manifests
    from embedpipe.corpus.spark.submit import submit_stages

    def next_stage(name: str, manifest: dict[str, Any]) -> None:
        if done is not None:
            done(name, manifest)
        following = names.index(name) + 1
        if started is not None and following < len(names):
            started(names[following])

    if started is not None:
        started(names[0])
    return submit_stages(names, config, log=log, done=next_stage)
