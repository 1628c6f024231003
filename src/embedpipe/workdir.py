"""The work directory: every path a run reads or writes under `config.workdir`, in one place.

Tables (one directory per corpus stage, each complete only with its `_MANIFEST.json`) may
live on any fsspec URL; the training directory (checkpoints, metrics, the summary) and
the reports are written by local processes (torchrun ranks, matplotlib), so they need a
local or mounted path. Nothing else in the package builds a path under the workdir.
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
TOKENIZER_MODEL = "_sentencepiece.model"  # SentencePiece model beside the tokens table
TRAIN = "train"
CHECKPOINTS = "checkpoints"  # in the train dir: step-N/ checkpoint directories
SUMMARY = "_TRAINED.json"  # in the train dir: the finished run's summary
METRICS = "metrics.jsonl"  # in the train dir: one JSON record per logged step (rank 0)
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
        """The directory (or URL) of one table."""
        return f"{self.root.rstrip('/')}/{table}"

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
        """Checkpoints, metrics.jsonl, loss.png and the training summary."""
        return self.local_root() / TRAIN

    @property
    def checkpoints(self) -> Path:
        return self.train_dir / CHECKPOINTS

    def report_dir(self, name: str, version: str) -> Path:
        """Where the report of one artefact version is written."""
        return self.local_root() / REPORTS / name / version

    @property
    def tokenizer_model(self) -> str:
        """The SentencePiece model the tokenize stage trained (present only for that kind)."""
        return f"{self.path('tokens')}/{TOKENIZER_MODEL}"

    @property
    def staging(self) -> str:
        """Where stages write before they commit."""
        return self.path(STAGING)

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
