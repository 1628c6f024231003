"""The pretraining flow: corpus stages on Spark, DDP training under torchrun, publish, evaluate.

Run it with `embedpipe run` (or `python flows/pretrain.py`). With no PREFECT_API_URL set,
Prefect starts a temporary API in-process; with one, runs show in that server's UI.
The flow composes; the stages, the trainer and the store hold the logic.
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

from embedpipe.artefacts import ArtefactStore, read_manifest
from embedpipe.artefacts.publish import publish_training
from embedpipe.config import RunConfig, load_config
from embedpipe.corpus.session import get_spark
from embedpipe.corpus.stage import Workdir
from embedpipe.corpus.stages import STAGE_FUNCTIONS
from embedpipe.corpus.submit import submit_stage
from embedpipe.evaluate.report import write_report
from embedpipe.train.launch import run_training
from embedpipe.train.trainer import training_fingerprint


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, task_run_name="{stage}")
def run_corpus_stage(stage: str, config: RunConfig) -> dict[str, Any]:
    """One corpus stage, in this process's Spark session or through spark-submit."""
    if config.spark.submit:
        manifest = submit_stage(stage, config)
    else:
        manifest = STAGE_FUNCTIONS[stage](get_spark(config.spark), config)
    state = "reused" if manifest["skipped"] else f"ran in {manifest['seconds']}s"
    get_run_logger().info("%s %s: %s", stage, state, json.dumps(manifest["counts"])[:500])
    return manifest


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def train_embeddings(config: RunConfig) -> dict[str, Any]:
    """torchrun over `config.train.nproc` processes; its output goes to the run log."""
    logger = get_run_logger()
    expected = training_fingerprint(config.train, Workdir(config.workdir))
    out = Path(config.workdir) / "train"
    return run_training(config, out, expected, log=logger.info)


@task(cache_policy=NO_CACHE)
def publish_embeddings(config: RunConfig) -> str:
    """Evaluate and publish the trained vectors; returns the version directory."""
    store = ArtefactStore(config.store)
    return str(publish_training(config, Path(config.workdir) / "train", store))


@task(cache_policy=NO_CACHE)
def write_artefact_report(config: RunConfig, artefact: str) -> str:
    """A Markdown report with plots, against the earlier versions of the same name."""
    store = ArtefactStore(config.store)
    history = [read_manifest(store.resolve(config.name, v)) for v in store.versions(config.name)]
    out = Path(config.workdir) / "reports" / config.name / Path(artefact).name
    return str(write_report(Path(artefact), out, history=history))


def report(artefact: str, report_file: str, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Show stage counts and evaluation as Prefect artifacts; return what the run produced."""
    manifest = read_manifest(artefact)
    metrics = manifest["metrics"]
    create_table_artifact(
        key="corpus-stages",
        table=[
            {
                "stage": s,
                "seconds": m["seconds"],
                "reused": m["skipped"],
                **flat_counts(m["counts"]),
            }
            for s, m in stages.items()
        ],
        description="Corpus stage counts and timings",
    )
    scores = [
        {"benchmark": "wordsim353", "spearman": metrics["wordsim353"]["spearman"],
         "coverage": 1 - metrics["wordsim353"]["oov_rate"]},
        {"benchmark": "simlex999", "spearman": metrics["simlex999"]["spearman"],
         "coverage": 1 - metrics["simlex999"]["oov_rate"]},
        {"benchmark": "google-analogy", "accuracy": metrics["analogy"]["accuracy"],
         "coverage": metrics["analogy"]["coverage"]},
    ]  # fmt: skip
    create_table_artifact(key="evaluation", table=scores, description=f"Evaluation of {artefact}")
    neighbours = "\n".join(
        f"- **{w}**: {', '.join(t for t, _ in n[:8])}" for w, n in metrics["neighbours"].items()
    )
    create_markdown_artifact(
        key="artefact", markdown=f"Published `{artefact}`\n\nNearest neighbours:\n{neighbours}"
    )
    report_url = Path(report_file).resolve().as_uri()
    create_link_artifact(key="report", link=report_url, description="Artefact report")
    return {"artefact": artefact, "version": manifest["version"], "scores": scores,
            "neighbours": metrics["neighbours"], "report": report_file}  # fmt: skip


def flat_counts(counts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in counts.items() if isinstance(v, int | float | str)}


@flow(name="pretrain-embeddings", log_prints=True)
def pretrain_embeddings(
    config_path: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Raw text to a published, evaluated embedding artefact."""
    config = load_config(config_path, overrides or [])
    stages = {stage: run_corpus_stage(stage, config) for stage in STAGE_FUNCTIONS}
    training = train_embeddings(config)
    artefact = publish_embeddings(config)
    result = report(artefact, write_artefact_report(config, artefact), stages)
    print(f"published {artefact} ({training['words_per_sec']:,} words/s in training)")
    return result


if __name__ == "__main__":
    pretrain_embeddings(sys.argv[1] if len(sys.argv) > 1 else None, sys.argv[2:])
