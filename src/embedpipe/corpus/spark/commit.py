"""How a stage publishes its output: all or nothing, with a manifest, skipped when unchanged.

A stage writes into `<workdir>/.staging/<table>-<uuid>/`, puts its `_MANIFEST.json` there
last, then renames the directory to `<workdir>/<table>/`. An output directory counts only
with its manifest; a rerun whose fingerprint (the config sections the registry names for
the stage, its inputs, the code) matches the manifest is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import fsspec

from embedpipe.config import RunConfig, fingerprint
from embedpipe.corpus.registry import Stage
from embedpipe.version import code_version
from embedpipe.workdir import MANIFEST, Workdir


def run_stage(
    stage: Stage,
    config: RunConfig,
    write: Callable[[str], dict[str, Any]],
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `write(staging_url) -> counts` unless an identical run already completed.

    The fingerprint holds `stage.config_of(config)` (the sections the registry names, the
    same the flow's cache key holds) and `inputs`: by default the fingerprints of the
    stage's upstream tables, read from their manifests; the tokenize stage passes its input
    files' instead. Returns the stage manifest; `skipped` tells whether the work was reused.
    """
    workdir = Workdir(config.workdir)
    if inputs is None:
        inputs = {t: workdir.require(t)["fingerprint"] for t in stage.upstream}
    sections = stage.config_of(config)
    key = fingerprint(stage.name, sections, inputs, code_version()["source"])
    existing = workdir.read_manifest(stage.table)
    if existing is not None and existing.get("fingerprint") == key:
        return {**existing, "skipped": True}

    fs, staging = fsspec.core.url_to_fs(f"{workdir.staging}/{stage.table}-{uuid.uuid4().hex[:12]}")
    _, final = fsspec.core.url_to_fs(workdir.path(stage.table))
    started = time.time()
    try:
        counts = write(fs.unstrip_protocol(staging))
        manifest = {
            "stage": stage.name,
            "table": stage.table,
            "fingerprint": key,
            "config": sections,
            "inputs": inputs,
            "counts": counts,
            "code_version": code_version(),
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "seconds": round(time.time() - started, 3),
        }
        manifest = json.loads(json.dumps(manifest, default=_jsonable))
        with fs.open(f"{staging}/{MANIFEST}", "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        if fs.exists(final):
            fs.rm(final, recursive=True)
        fs.mv(staging, final, recursive=True)
    finally:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
    return {**manifest, "skipped": False}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")
