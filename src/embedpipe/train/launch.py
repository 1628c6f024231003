"""Launching training as torchrun does it: the same command for the CLI and the flow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedpipe.config import RunConfig, save_config
from embedpipe.train.trainer import SUMMARY


def torchrun_command(config_file: Path, out: Path, nproc: int) -> list[str]:
    """`torchrun --standalone --nproc_per_node N -m embedpipe.train ...` with this interpreter."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}",
        "-m", "embedpipe.train", "--config", str(config_file), "--out", str(out),
    ]  # fmt: skip


def run_training(
    config: RunConfig, out: Path, expected_fingerprint: str, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train under torchrun unless `out` already holds this exact run; returns its summary.

    A finished run with the same fingerprint is reused; checkpoints of a different run
    (other inputs or settings) are cleared first, those of the same run are resumed.
    """
    summary_path = out / SUMMARY
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("fingerprint") == expected_fingerprint:
            return {**summary, "skipped": True}
    checkpoint_states = sorted((out / "checkpoints").glob("step-*/state.json"))
    stale = any(
        json.loads(p.read_text()).get("fingerprint") != expected_fingerprint
        for p in checkpoint_states
    )
    if stale or summary_path.is_file():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    config_file = save_config(config, out / "run-config.json")
    command = torchrun_command(config_file, out, config.train.nproc)
    log("$ " + " ".join(command))
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log(line.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"training failed: torchrun exited with {proc.returncode}")
    return {**json.loads(summary_path.read_text()), "skipped": False}
