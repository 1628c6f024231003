"""The pretraining flow: corpus stages on Spark, DDP training under torchrun, publish, evaluate.

Run it with `embedpipe run` (or `python -m embedpipe.flows.pretrain CONFIG [k=v ...]`),
deploy it with `prefect deploy` (prefect.yaml: a cron schedule, a process work pool; its
entrypoint `flows/pretrain.py` re-exports this flow) or serve it with
`python -m embedpipe.flows.pretrain --serve CONFIG`. With no PREFECT_API_URL set, Prefect
starts a temporary API in-process; with one, runs show in that server's UI. It lives in the
package, so an installed wheel runs it without a checkout.

Each corpus stage and the training are tasks with retries, a timeout and a cache key made
of their input fingerprints and config (`embedpipe.orchestration`): a rerun skips what is
done, a changed setting reruns only what depends on it, and a cache hit whose output has
since been deleted or replaced runs again. spark-submit's and torchrun's output go to the
run log line by line. The flow composes; the stages, the trainer and the store hold the logic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State

from embedpipe.artefacts import open_store, read_manifest
from embedpipe.artefacts.manifest import Manifest
from embedpipe.artefacts.publish import publish_training
from embedpipe.config import RunConfig
from embedpipe.evaluate import score_rows
from embedpipe.orchestration import (
    PretrainParameters,
    resolve_config,
    stage_cache_key,
    stage_output_matches,
    training_cache_key,
    training_output_matches,
    upstream_fingerprints,
)
from embedpipe.train.launch import run_training
from embedpipe.train.registry import corpus_stages
from embedpipe.workdir import Workdir

HOUR = 3600


def _stage_key(context: Any, inputs: dict[str, Any]) -> str:
    return stage_cache_key(inputs["stage"], inputs["config"], inputs["upstream"])


def _training_key(context: Any, inputs: dict[str, Any]) -> str:
    return training_cache_key(inputs["config"])


@task(
    retries=2, retry_delay_seconds=10, timeout_seconds=6 * HOUR, cache_key_fn=_stage_key,
    result_serializer="json", task_run_name="{stage}",
)  # fmt: skip
def run_corpus_stage(stage: str, config: RunConfig, upstream: dict[str, str]) -> dict[str, Any]:
    """One corpus stage, in this process's Spark session or through spark-submit.

    `upstream`: the fingerprints of the tables it reads (part of the cache key).
    """
    from embedpipe.corpus.spark.launch import launch_stage

    logger = get_run_logger()
    manifest = launch_stage(stage, config, log=logger.info)
    state = "reused" if manifest["skipped"] else f"ran in {manifest['seconds']}s"
    logger.info("%s %s: %s", stage, state, json.dumps(manifest["counts"])[:500])
    return manifest


@task(
    retries=1, retry_delay_seconds=10, timeout_seconds=48 * HOUR, cache_key_fn=_training_key,
    result_serializer="json",
)  # fmt: skip
def train_embeddings(config: RunConfig) -> dict[str, Any]:
    """torchrun over `config.train.nproc` processes (x `launch.nnodes`); output to the run log."""
    logger = get_run_logger()
    out = Workdir(config.workdir).train_dir
    return run_training(config, out, log=logger.info)


@task(retries=1, retry_delay_seconds=10, timeout_seconds=2 * HOUR, cache_policy=NO_CACHE)
def publish_embeddings(config: RunConfig) -> str:
    """Evaluate and publish the trained vectors; returns the version directory."""
    return str(publish_training(config, Workdir(config.workdir).train_dir))


@task(timeout_seconds=HOUR, cache_policy=NO_CACHE)
def write_artefact_report(config: RunConfig, artefact: str) -> str:
    """A Markdown report with plots, against the earlier versions of the same name."""
    history = open_store(config.store).manifests(config.name)
    # `artefact` may be an fsspec URL (the store's root): keep it a string, never a Path.
    version = read_manifest(artefact).version
    out = Workdir(config.workdir).report_dir(config.name, version)
    return str(write_report_file(artefact, out, history))


def write_report_file(artefact: str, out: Path, history: list[Manifest]) -> Path:
    from embedpipe.evaluate.report import write_report

    return write_report(artefact, out, history=history)


def cached_or_rerun(task_fn: Any, valid: Any, *args: Any) -> tuple[Any, str]:
    """Run a cached task; a cache hit whose output is gone (or replaced) runs again.

    Returns (result, how): "cached" (a Prefect cache hit), "ran", or "rerun" (a hit was
    refused because its output no longer matched).
    """
    state: State = task_fn(*args, return_state=True)
    result = state.result()
    if not state.is_completed() or state.name != "Cached":
        return result, "ran"
    if valid(result):
        return result, "cached"
    get_run_logger().warning(
        "%s: the cached result's output is missing or was replaced; running it again",
        task_fn.name,
    )
    return task_fn.with_options(refresh_cache=True)(*args), "rerun"


def report(
    artefact: str,
    report_file: str,
    stages: dict[str, dict[str, Any]],
    how: dict[str, str],
    training: dict[str, Any],
) -> dict[str, Any]:
    """Show stage counts, timings and evaluation as Prefect artifacts; return what the run made."""
    manifest = read_manifest(artefact)
    metrics = manifest.metrics
    neighbours = (metrics.to_json() if metrics else {}).get("neighbours", {})
    create_table_artifact(
        key="corpus-stages",
        table=[
            {
                "stage": s,
                "task": how[s],
                "reused": m["skipped"],
                "seconds": m["seconds"],
                **flat_counts(m["counts"]),
            }
            for s, m in stages.items()
        ],
        description="Corpus stages: counts and timings (task: ran, cached or rerun)",
    )
    create_table_artifact(
        key="training",
        table=[
            {
                "task": how["train"],
                "reused": training.get("skipped", False),
                **{
                    k: training.get(k)
                    for k in ("model", "world_size", "device", "steps", "seconds", "words_per_sec")
                },
            }
        ],
        description="Training: steps, time and throughput",
    )
    scores = score_rows(metrics)
    create_table_artifact(key="evaluation", table=scores, description=f"Evaluation of {artefact}")
    listing = "\n".join(
        f"- **{w}**: {', '.join(t for t, _ in n[:8])}" for w, n in neighbours.items()
    )
    create_markdown_artifact(
        key="artefact", markdown=f"Published `{artefact}`\n\nNearest neighbours:\n{listing}"
    )
    report_artifacts(report_file)
    return {"artefact": artefact, "version": manifest.version, "scores": scores,
            "neighbours": neighbours, "report": report_file,
            "tasks": how, "flow_run_id": str(flow_run.id)}  # fmt: skip


def report_artifacts(report_file: str) -> None:
    """The report as a markdown artifact with its plots inside it (data URIs: a UI on another
    machine shows them), and a link to its file for a UI on this one."""
    from embedpipe.evaluate.report import inline_report

    url = Path(report_file).resolve().as_uri()
    markdown = f"Report file: [{url}]({url}) (readable on the machine that ran the flow)"
    create_markdown_artifact(
        key="report",
        markdown=f"{inline_report(report_file)}\n---\n\n{markdown}\n",
        description="Artefact report, plots included",
    )
    create_link_artifact(key="report-file", link=url, description="Artefact report (file)")


def flat_counts(counts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in counts.items() if isinstance(v, int | float | str)}


@flow(name="pretrain-embeddings", log_prints=True)
def pretrain_embeddings(
    params: PretrainParameters | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Raw text to a published, evaluated embedding artefact.

    `params`: the run's settings (validated; every section of the config). Or, for
    convenience, `config_path`: a TOML/YAML/JSON config file. `overrides` (`a.b=value`)
    apply on top of either.
    """
    config = resolve_config(params, config_path, overrides)
    stages: dict[str, dict[str, Any]] = {}
    how: dict[str, str] = {}
    for stage in corpus_stages(config.train.model):
        upstream = upstream_fingerprints(stage, stages)
        stages[stage], how[stage] = cached_or_rerun(
            run_corpus_stage,
            lambda m, s=stage: stage_output_matches(config, s, m),
            stage,
            config,
            upstream,
        )
    training, how["train"] = cached_or_rerun(
        train_embeddings, lambda s: training_output_matches(config, s), config
    )
    artefact = publish_embeddings(config)
    result = report(artefact, write_artefact_report(config, artefact), stages, how, training)
    print(f"published {artefact} ({training['words_per_sec']:,} words/s in training)")
    return result


def serve(config_path: str, cron: str = "0 3 * * *") -> None:
    """Serve the flow from this process on a cron schedule (an alternative to a worker)."""
    pretrain_embeddings.serve(
        name="pretrain-served", cron=cron, parameters={"config_path": config_path}
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2], *sys.argv[3:4])
    else:
        pretrain_embeddings(
            config_path=sys.argv[1] if len(sys.argv) > 1 else None, overrides=sys.argv[2:]
        )
