"""The work directory: every path a run reads or writes under `config.workdir`, in one place.

Tables (one per corpus stage) may live on any fsspec URL; the training directory
(checkpoints, metrics, the summary) and the reports are written by local processes (torchrun
ranks, matplotlib), so they need a local or mounted path. Nothing else in the package builds
a path under the workdir.

A table's layout (see `corpus.spark.commit` for how a stage writes and commits it):

    <table>/_MANIFEST.json      the commit: names the run directory holding the data ("data")
    <table>/<run>/              the table's files (Parquet parts, `bucket=k/`, the tokenizer
                                model): what `table_path(table)` returns
    <table>.<side>/<run>/       side tables committed with it (`tokens.rejects/`,
                                `tokens.counts/`): `table_path(table, side)`; outside
                                `<table>/`, so a glob of `<table>/**/*.parquet` reads the table
                                alone
    .staging/<stage>.lock       who runs the stage now (`corpus.spark.lock`)

Readers resolve a table's data through `table_path`, which reads the manifest: they see one
committed run, never a run being written. Once no run of the stage is in progress `<table>/`
holds the manifest and that one run directory only. A manifest without "data" (written
before run directories) names `<table>/` itself, with its side tables in `<table>/_<side>/`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

MANIFEST = "_MANIFEST.json"  # a table directory counts only with this file
TOKENIZER_MODEL = "_sentencepiece.model"  # SentencePiece model, in the tokens run directory
RUN_PREFIX = "run-"  # <table>/run-<utc time>-<id>/: one stage run's output
TRAIN = "train"
CHECKPOINTS = "checkpoints"  # in the train dir: step-N/ checkpoint directories
SUMMARY = "_TRAINED.json"  # in the train dir: the finished run's summary
METRICS = "metrics.jsonl"  # in the train dir: one JSON record per logged step (rank 0)
TENSORBOARD = "tensorboard"  # in the train dir: TensorBoard event files of those records
REPORTS = "reports"
STAGING = ".staging"
SPARK_SECRETS = "spark-secrets.properties"
RUN_CONFIG = "run-config.json"  # the config spark-submit jobs read (client mode)
PY_FILES = ".py-files"  # the package as a zip for spark-submit's --py-files


@dataclass(frozen=True)
class Workdir:
    """The directory (local path or fsspec URL) that holds every table and the training run."""

    root: str

    def path(self, table: str) -> str:
        """The directory (or URL) of one table: its manifest and its run directories. Read the
        table's data at `table_path(table)`, not here."""
        return f"{self.root.rstrip('/')}/{table}"

    def side_root(self, table: str, side: str) -> str:
        """The directory of one side table of `table` (`tokens.rejects`): its runs' dirs."""
        return f"{self.path(table)}.{side_name(side)}"

    def table_path(
        self, table: str, side: str | None = None, manifest: dict[str, Any] | None = None
    ) -> str:
        """Where the committed data of `table` (or of its side table `side`) is: the run
        directory its manifest names. Every reader of a table goes through here.

        `manifest`: the table's manifest when the caller has read it already (so the data and
        the fingerprint it uses are of one commit); read here otherwise. Raises
        FileNotFoundError, naming the table, when it has no committed output.
        """
        if manifest is None:
            manifest = self.require(table)
        run = manifest.get("data")
        if run is None:  # written before run directories: the table directory itself
            base = self.path(table)
            return base if side is None else f"{base}/_{side_name(side)}"
        if side is None:
            return f"{self.path(table)}/{run}"
        return f"{self.side_root(table, side)}/{run}"

    def read_manifest(self, table: str) -> dict[str, Any] | None:
        """The table's manifest, or None when the table has no complete output."""
        fs, path = fsspec.core.url_to_fs(f"{self.path(table)}/{MANIFEST}")
        if not fs.exists(path):
            return None
        with fs.open(path, "r") as f:
            return json.load(f)

    def require(self, table: str) -> dict[str, Any]:
        manifest = self.read_manifest(table)
        if manifest is None:
            raise FileNotFoundError(
                f"{self.path(table)} has no complete output (no {MANIFEST}): run the stage "
                f"that writes {table}"
            )
        return manifest

    @property
    def is_local(self) -> bool:
        return "://" not in self.root or self.root.startswith("file://")

    def local_root(self) -> Path:
        """The workdir as a local path; training and reports are written by local processes."""
        if not self.is_local:
            raise ValueError(
                f"workdir {self.root} is a remote URL: training and reports need a local or "
                "mounted directory (set workdir to one; the tables may stay remote)"
            )
        return Path(self.root.removeprefix("file://"))

    @property
    def train_dir(self) -> Path:
        """Checkpoints, metrics.jsonl, TensorBoard events, loss.png and the training summary."""
        return self.local_root() / TRAIN

    @property
    def checkpoints(self) -> Path:
        return self.train_dir / CHECKPOINTS

    def report_dir(self, name: str, version: str) -> Path:
        """Where the report of one artefact version is written."""
        return self.local_root() / REPORTS / name / version

    @property
    def tokenizer_model(self) -> str:
        """The SentencePiece model the tokenize stage trained (present only for that kind),
        in the committed tokens run (a path that does not exist when there is none)."""
        manifest = self.read_manifest("tokens")
        base = (
            self.path("tokens") if manifest is None else self.table_path("tokens", None, manifest)
        )
        return f"{base}/{TOKENIZER_MODEL}"

    @property
    def staging(self) -> str:
        """The stages' scratch space: their locks (and what runs killed there left)."""
        return self.path(STAGING)

    def stage_lock(self, stage: str) -> str:
        """The lock file of one stage (`corpus.spark.lock.StageLock`)."""
        return f"{self.staging}/{stage}.lock"

    @property
    def submit_dir(self) -> Path:
        """Where the local files spark-submit is handed live: the workdir when it is local;
        for a remote workdir (spark-submit reads local files) a directory of the system's
        temporary directory named after the workdir's URL."""
        if self.is_local:
            return self.local_root()
        digest = hashlib.sha256(self.root.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"embedpipe-submit-{digest}"

    @property
    def run_config(self) -> Path:
        """The saved run config that spark-submit jobs read."""
        return self.submit_dir / RUN_CONFIG

    @property
    def spark_secrets(self) -> Path:
        """The properties file (mode 0600) that hands credentials to spark-submit off argv."""
        return self.submit_dir / SPARK_SECRETS

    @property
    def py_files(self) -> Path:
        """The directory of the package zips shipped with `--py-files`."""
        return self.submit_dir / PY_FILES


def side_name(side: str) -> str:
    """A side table's name without the leading underscore it has inside a writer's output
    (`_rejects` -> `rejects`)."""
    return side.lstrip("_")


def side_output(out: str, side: str) -> str:
    """Where a stage whose run writes its table at `out` (`<workdir>/<table>/<run>`, the URL
    `run_stage` hands it) writes its side table `side`: `<workdir>/<table>.<side>/<run>`."""
    table_dir, run = out.rstrip("/").rsplit("/", 1)
    return f"{table_dir}.{side_name(side)}/{run}"
