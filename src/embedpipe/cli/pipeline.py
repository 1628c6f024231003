"""The pipeline's steps, each reading the run config: prepare, train, publish, run; and
`config show`, the config a run resolves to.

Spark, torch and Prefect are imported inside the commands that use them, so the read-only
commands of the core install never load them.
"""

from __future__ import annotations

import enum
import json
import os
from typing import Annotated, Any

import typer

from embedpipe.cli.options import ConfigFile, Json, Overrides
from embedpipe.cli.output import print_json
from embedpipe.cli.progress import StageProgress, TaskCounts, TrainingProgress, live_progress
from embedpipe.config import load_config
from embedpipe.corpus.registry import STAGES

# The registry's stages as choices (typer takes a list of an Enum, not of a Literal).
StageName = enum.Enum("StageName", {name: name for name in STAGES}, type=str)

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}

config_app = typer.Typer(help="The run config: what a run resolves to.", no_args_is_help=True)


def prepare(
    config: ConfigFile = None,
    overrides: Overrides = None,
    stage: Annotated[
        list[StageName] | None, typer.Option(help="Run only this stage (repeatable).")
    ] = None,
    all_stages: Annotated[
        bool, typer.Option("--all", help="Run every stage: write every table.")
    ] = False,
) -> None:
    """Run the corpus stages that make the tables train.model reads (in-process Spark, or
    spark-submit: spark.submit); --all for every table, --stage for some."""
    from embedpipe.corpus.spark.launch import launch_stages
    from embedpipe.train.registry import corpus_stages

    run_config = load_config(config, overrides or [])
    if stage and all_stages:
        raise typer.BadParameter("give --stage or --all, not both")
    if stage:
        stages = [s.value for s in stage]
    else:
        stages = list(STAGES) if all_stages else corpus_stages(run_config.train.model)
    live = live_progress()
    if live and not run_config.spark.submit:
        # The session before the live bar's threads: the workers' server forks from this
        # process only where no other thread runs (corpus.spark.session).
        from embedpipe.corpus.spark.session import get_spark

        get_spark(run_config.spark)
    poll = None if run_config.spark.submit or not live else _session_tasks
    with StageProgress(stages, live, poll) as bar:
        launch_stages(stages, run_config, log=bar.log, started=bar.start, done=bar.done)


def _session_tasks() -> TaskCounts | None:
    """The task counts of this process's Spark session (imported only when it runs)."""
    from embedpipe.corpus.spark.session import task_counts

    return task_counts()


def train(
    config: ConfigFile = None,
    overrides: Overrides = None,
    nproc: Annotated[int | None, typer.Option(help="Processes (default train.nproc).")] = None,
) -> None:
    """Train under torchrun on the prepared tables; prints the summary (JSON)."""
    from embedpipe.train.launch import run_training
    from embedpipe.workdir import METRICS, Workdir

    extra = [f"train.nproc={nproc}"] if nproc else []
    run_config = load_config(config, [*(overrides or []), *extra])
    out = Workdir(run_config.workdir).train_dir
    with TrainingProgress(out / METRICS, run_config.train.epochs, live_progress()) as bar:
        summary = run_training(run_config, out, log=bar.log)
        if not summary["skipped"]:
            bar.finish()
    print_json({k: summary[k] for k in ("steps", "seconds", "words_per_sec", "skipped")})


def publish(config: ConfigFile = None, overrides: Overrides = None) -> None:
    """Evaluate and publish the trained vectors; prints the new version's directory."""
    from embedpipe.artefacts.publish import publish_training
    from embedpipe.workdir import Workdir

    run_config = load_config(config, overrides or [])
    print(publish_training(run_config, Workdir(run_config.workdir).train_dir))


def run(config: ConfigFile = None, overrides: Overrides = None) -> None:
    """The whole Prefect flow: prepare, train, publish, evaluate (its log: plain lines)."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from embedpipe.flows.pretrain import PretrainParameters, pretrain_embeddings

    # Resolved here and passed as parameters, so the flow run's parameters (shown in the
    # Prefect UI) hold every setting, with credentials masked, never a raw override.
    run_config = load_config(config, overrides or [])
    print_result(pretrain_embeddings(PretrainParameters.from_run_config(run_config)))


def print_result(result: dict[str, Any]) -> None:
    """The flow's result: the published artefact, its scores and probe neighbours."""
    from embedpipe.evaluate import format_score

    print(f"\nPublished {result['artefact']}  (report: {result['report']})")
    for row in result["scores"]:
        print(f"  {format_score(row)}")
    print("Nearest neighbours:")
    for word, neighbours in result["neighbours"].items():
        print(f"  {word:10s} {', '.join(t for t, _ in neighbours[:6])}")


@config_app.command("show")
def show_config(
    config: ConfigFile = None, overrides: Overrides = None, json_: Json = False
) -> None:
    """Every setting of the resolved config (file, overrides, defaults), credentials masked:
    `section.key = value` lines (values as --set takes them), or the nested tables with --json."""
    from embedpipe.config import redacted

    data = redacted(load_config(config, overrides or []))
    if json_:
        print_json(data)
        return
    for key, value in flatten(data):
        print(f"{key} = {json.dumps(value)}")


def flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested tables as (dotted key, value) pairs; lists stay values."""
    pairs: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            pairs += flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs
