"""Checkpoints as `step-N/` directories that count only when complete.

A checkpoint is written to `step-N.tmp-<pid>/` (weights as safetensors, the cursor and
schedule as JSON), closed by a `COMPLETE` marker, then renamed to `step-N/`. Loading picks
the newest directory with its marker; older ones beyond `keep` are deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"
WEIGHTS = "model.safetensors"
STATE = "state.json"
_STEP = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int
) -> Path:
    """Write step-N atomically and prune to the newest `keep` complete checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
    (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2, sort_keys=True))
    (tmp / MARKER).write_text("")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP.match(p.name)) and (p / MARKER).exists()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, state) of a complete checkpoint; never unpickles."""
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    return load_file(str(path / WEIGHTS)), json.loads((path / STATE).read_text())


def resume_checkpoint(
    root: Path, fingerprint: str, world: int
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """(path, tensors, state) of the newest complete checkpoint under `root`, or None.

    Refuses a checkpoint of another run (its fingerprint: config and input tables) or one
    written by another number of ranks (each rank's data cursor is in it).
    """
    path = latest_checkpoint(root)
    if path is None:
        return None
    tensors, state = load_checkpoint(path)
    if state.get("fingerprint") != fingerprint:
        raise RuntimeError(
            f"{path} belongs to another training run (fingerprint {state.get('fingerprint')}, "
            f"this run's is {fingerprint}: the config or the input tables changed); clear "
            f"{root} to start afresh"
        )
    if state["world"] != world:
        raise RuntimeError(f"{path} was written by {state['world']} ranks; resume with as many")
    return path, tensors, state
