"""Checkpoints as `step-N/` directories that count only when complete and intact.

A checkpoint is written to `step-N.tmp-<pid>/` (weights as safetensors, the cursor and
schedule as JSON with the weights' size and sha256), every file fsynced, closed by a
`COMPLETE` marker, then renamed to `step-N/` (and the directory fsynced), so a crash or a
power loss leaves either the whole checkpoint or none. Resuming takes the newest one that
verifies (marker, readable state, weights of the recorded size and hash) and falls back to
the one before when it does not, saying which and why; older ones beyond `keep` are deleted,
each first renamed to `step-N.old-<pid>/` (so a half-deleted one is never taken for a
checkpoint). What a killed writer left (`*.tmp-<pid>/`, `*.old-<pid>/` of a process that is
gone) is removed by the next save. The crash points (`embedpipe.faults`) between the steps
are in CRASH_POINTS.
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
from embedpipe.faults import crash_point

MARKER = "COMPLETE"
WEIGHTS = "model.safetensors"
STATE = "state.json"
_STEP = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^step-\d+\.(?:tmp|old)-(\d+)$")  # a writer's, by its pid
# In save order: weights written; state written (before the COMPLETE marker); marked
# (before the rename); renamed (before pruning the old ones); pruned.
CRASH_POINTS = (
    "checkpoint.weights_written",
    "checkpoint.state_written",
    "checkpoint.marked",
    "checkpoint.renamed",
    "checkpoint.pruned",
)


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, unreadable or does not match what its state recorded."""


def save_checkpoint(
    root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int
) -> Path:
    """Write step-N atomically and durably; prune to the newest `keep` complete checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root)
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
    fsync_file(tmp / WEIGHTS)
    crash_point("checkpoint.weights_written")
    files = {
        WEIGHTS: {"bytes": (tmp / WEIGHTS).stat().st_size, "sha256": sha256_file(tmp / WEIGHTS)}
    }
    write_synced(
        tmp / STATE, json.dumps({**state, "step": step, "files": files}, indent=2, sort_keys=True)
    )
    crash_point("checkpoint.state_written")
    write_synced(tmp / MARKER, "")
    fsync_file(tmp)
    crash_point("checkpoint.marked")
    replaced = None
    if final.exists():  # debris of an earlier run at this step: out of the way, atomically
        replaced = _set_aside(final)
    tmp.rename(final)
    fsync_file(root)
    crash_point("checkpoint.renamed")
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(_set_aside(old), ignore_errors=True)
    crash_point("checkpoint.pruned")
    return final


def _set_aside(path: Path) -> Path:
    """Rename a checkpoint directory to `<name>.old-<pid>` (no longer a checkpoint)."""
    aside = path.with_name(f"{path.name}.old-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    path.rename(aside)
    return aside


def remove_leftovers(root: Path) -> list[Path]:
    """Remove the `step-N.tmp-<pid>/` and `step-N.old-<pid>/` directories of writers that
    are gone (killed mid-save or mid-prune); returns them."""
    removed = []
    for path in root.iterdir() if root.is_dir() else ():
        m = _LEFTOVER.match(path.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _alive(pid):
            continue  # another live writer's (two runs sharing a directory: not ours to judge)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


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
