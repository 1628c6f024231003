"""Launching training as torchrun does it: the same command for the CLI, the flow and clusters.

One node: `torchrun --standalone`. Many nodes: every node runs the same command with its
own `--node_rank`, meeting at a c10d rendezvous (`launch.rdzv_endpoint`); see
infra/slurm/train.sbatch and infra/k8s/training.yaml. With `launch.max_restarts` > 0,
torchrun restarts the whole worker group when a worker dies, and the trainer resumes from
the newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedpipe.config import LaunchConfig, RunConfig, save_config
from embedpipe.processes import run_logged
from embedpipe.train.checkpoint import STATE
from embedpipe.train.layout import describe_layout, resolve_layout
from embedpipe.train.loop import training_fingerprint
from embedpipe.workdir import CHECKPOINTS, RUN_CONFIG, SUMMARY, Workdir

# The environment every torchrun launch gets (the flow, the CLI, infra/ scripts, tests):
# - unbuffered workers, so their lines reach the log (and the Prefect run log) as printed;
# - no sharing of the agent's rendezvous store with the workers: with sharing (torch's
#   default since 2.5) a restarted worker group reads the previous attempt's gloo/NCCL
#   addresses from the store and may fail to connect (pytorch/pytorch#135712), so a
#   `--max-restarts` restart fails instead of resuming. Seen here with gloo on loopback.
TORCHRUN_ENV = {"PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


class TrainingFailed(RuntimeError):
    """torchrun exited with an error; the workers' own output (already logged) says why."""


def torchrun_command(
    config_file: Path, out: Path, nproc: int, launch: LaunchConfig | None = None
) -> list[str]:
    """`torchrun [--standalone | --nnodes .. --rdzv-*] --nproc-per-node N -m embedpipe.train ...`.

    Runs torchrun as `python -m torch.distributed.run` with this interpreter; `launch`
    (default: one node, no restarts) says which node this is and where the others meet.
    """
    launch = launch or LaunchConfig()
    command = [sys.executable, "-m", "torch.distributed.run"]
    if launch.nnodes == 1 and not launch.rdzv_endpoint:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={launch.nnodes}",
            f"--node-rank={launch.node_rank}",
            f"--rdzv-backend={launch.rdzv_backend}",
            f"--rdzv-endpoint={launch.rdzv_endpoint}",
            f"--rdzv-id={launch.rdzv_id}",
        ]
    if launch.local_addr:
        command.append(f"--local-addr={launch.local_addr}")
    return [
        *command,
        f"--nproc-per-node={nproc}",
        f"--max-restarts={launch.max_restarts}",
        "-m", "embedpipe.train", "--config", str(config_file), "--out", str(out),
    ]  # fmt: skip


def run_training(
    config: RunConfig, out: Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train under torchrun unless `out` already holds this exact run; returns its summary.

    `train.nproc` / `train.threads` of "auto" are resolved here for this node (`layout`).

    A finished run with the same fingerprint is reused; checkpoints of a different run
    (other inputs or settings) are cleared first, those of the same run are resumed.
    """
    config = resolve_layout(config)
    expected_fingerprint = training_fingerprint(config.train, Workdir(config.workdir), config.store)
    summary_path = out / SUMMARY
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("fingerprint") == expected_fingerprint:
            return {**summary, "skipped": True}
    checkpoint_states = sorted((out / CHECKPOINTS).glob(f"step-*/{STATE}"))
    stale = any(
        json.loads(p.read_text()).get("fingerprint") != expected_fingerprint
        for p in checkpoint_states
    )
    if stale or summary_path.is_file():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    config_file = save_config(config, out / RUN_CONFIG, redact=True)
    command = torchrun_command(config_file, out, config.train.nproc, config.launch)
    log(describe_layout(config))
    log("$ " + " ".join(command))
    env = {**os.environ, **TORCHRUN_ENV}
    done = run_logged(command, log, env=env)
    if done.returncode != 0:
        raise TrainingFailed(f"training failed: torchrun exited with {done.returncode}")
    return {**json.loads(summary_path.read_text()), "skipped": False}
