"""Checkpoints as `step-N/` directories that count only when complete and intact.

A checkpoint is written to `step-N.tmp-<pid>/` (weights as safetensors, the cursor and
schedule as JSON with the weights' size and sha256), every file fsynced, closed by a
`COMPLETE` marker, then renamed to `step-N/` (and the directory fsynced), so a crash or a
power loss leaves either the whole checkpoint or none. Resuming takes the newest one that
verifies (marker, readable state, weights of the recorded size and hash) and falls back to
the one before when it does not, saying which and why; older ones beyond `keep` are deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from embedpipe.artefacts.files import sha256_file

MARKER = "COMPLETE"
WEIGHTS = "model.safetensors"
STATE = "state.json"
_STEP = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, unreadable or does not match what its state recorded."""


def save_checkpoint(
    root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int
) -> Path:
    """Write step-N atomically and durably; prune to the newest `keep` complete checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
    fsync_file(tmp / WEIGHTS)
    files = {
        WEIGHTS: {"bytes": (tmp / WEIGHTS).stat().st_size, "sha256": sha256_file(tmp / WEIGHTS)}
    }
    write_synced(
        tmp / STATE, json.dumps({**state, "step": step, "files": files}, indent=2, sort_keys=True)
    )
    write_synced(tmp / MARKER, "")
    fsync_file(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_file(root)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_synced(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    """fsync a file or a directory (a directory's entries: the renames into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """(tensors, state) of a complete, intact checkpoint; never unpickles. Raises
    `CheckpointError` naming the path and what is wrong."""
    state = verify_checkpoint(path)
    try:
        return load_file(str(path / WEIGHTS)), state
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / WEIGHTS}: unreadable weights ({e})") from e


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state after checking its marker, its state file and the recorded
    size and sha256 of its weights (checkpoints from before hashes were recorded: size
    and readability only, when loaded)."""
    if not (path / MARKER).exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / STATE}: unreadable checkpoint state ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / STATE}: not a JSON object")
    for name, recorded in state.get("files", {}).items():
        file = path / name
        size = file.stat().st_size if file.is_file() else None
        if size != recorded["bytes"]:
            raise CheckpointError(
                f"{file}: {size} bytes, the checkpoint recorded {recorded['bytes']}"
            )
        if sha256_file(file) != recorded["sha256"]:
            raise CheckpointError(f"{file}: sha256 differs from the one the checkpoint recorded")
    return state


def resume_checkpoint(
    root: Path, fingerprint: str, world: int
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """(path, tensors, state) of the newest complete checkpoint under `root` that verifies,
    or None when there is none at all.

    A checkpoint that does not verify is skipped with a warning naming it and why, and the
    one before it is tried; when none verifies, `CheckpointError` lists them. Refuses a
    checkpoint of another run (its fingerprint: config and input tables) or one written by
    another number of ranks (each rank's data cursor is in it).
    """
    failures = []
    for path in reversed(complete_checkpoints(root)):
        try:
            tensors, state = load_checkpoint(path)
        except CheckpointError as e:
            failures.append(str(e))
            print(f"warning: skipping checkpoint {e}", flush=True)
            continue
        if state.get("fingerprint") != fingerprint:
            raise RuntimeError(
                f"{path} belongs to another training run (fingerprint "
                f"{state.get('fingerprint')}, this run's is {fingerprint}: the config or the "
                f"input tables changed); clear {root} to start afresh"
            )
        if state.get("world") != world:
            raise RuntimeError(
                f"{path} was written by {state.get('world')} ranks; resume with as many"
            )
        return path, tensors, state
    if failures:
        raise CheckpointError(f"no checkpoint under {root} verifies: " + "; ".join(failures))
    return None
