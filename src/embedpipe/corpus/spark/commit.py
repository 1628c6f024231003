"""How a stage publishes its output: all or nothing, with a manifest, skipped when unchanged.

A stage writes into `<workdir>/.staging/<stage>-<uuid>/`, puts its `_MANIFEST.json` there
last, then renames the directory to `<workdir>/<stage>/`. An output directory counts only
with its manifest; a rerun whose fingerprint (config, inputs, code) matches the manifest
is skipped.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import fsspec

from embedpipe.config import fingerprint
from embedpipe.version import code_version
from embedpipe.workdir import MANIFEST, Workdir


def run_stage(
    workdir: Workdir,
    stage: str,
    config: Any,
    inputs: dict[str, Any],
    write: Callable[[str], dict[str, Any]],
) -> dict[str, Any]:
    """Run `write(staging_path) -> counts` unless an identical run already completed.

    `inputs` holds the fingerprints of what went in (files or upstream manifests).
    Returns the stage manifest; `skipped` tells whether the work was reused.
    """
    key = fingerprint(stage, config, inputs, code_version()["source"])
    existing = workdir.read_manifest(stage)
    if existing is not None and existing.get("fingerprint") == key:
        return {**existing, "skipped": True}

    fs, root = fsspec.core.url_to_fs(workdir.root)
    staging = f"{root}/.staging/{stage}-{uuid.uuid4().hex[:12]}"
    staging_url = fs.unstrip_protocol(staging)
    started = time.time()
    try:
        counts = write(staging_url)
        manifest = {
            "stage": stage,
            "fingerprint": key,
            "config": config,
            "inputs": inputs,
            "counts": counts,
            "code_version": code_version(),
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "seconds": round(time.time() - started, 3),
        }
        manifest = json.loads(json.dumps(manifest, default=_jsonable))
        with fs.open(f"{staging}/{MANIFEST}", "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        final = f"{root}/{stage}"
        if fs.exists(final):
            fs.rm(final, recursive=True)
        fs.mv(staging, final, recursive=True)
    finally:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
    return {**manifest, "skipped": False}


def _jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")
