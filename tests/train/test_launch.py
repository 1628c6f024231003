"""torchrun launches: the command builder, two nodes by c10d rendezvous on loopback, and a
worker killed mid-run that torchrun restarts and that resumes from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from embedpipe.config import LaunchConfig, load_config, save_config
from embedpipe.processes import descendants, end_tree
from embedpipe.train.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint
from embedpipe.train.launch import TORCHRUN_ENV, torchrun_command
from embedpipe.train.loop import SUMMARY
from embedpipe.workdir import METRICS

from .conftest import write_workdir

RDZV_PORT = 29640  # this area's rendezvous ports: 29640-29659
TRAIN = [
    "train.sgns.dim=8", "train.sgns.window=3", "train.sgns.negatives=3", "train.sgns.batch_size=48",
    "train.sgns.sync_every=200",  # words a rank trains between exchanges: several per epoch
    "train.threads=1",  # bit-reproducible ranks (auto gives a lone rank every core: Hogwild)
]  # fmt: skip
# Gloo and the rendezvous stay on loopback; the launch environment of launch.py.
LOOPBACK = {**os.environ, **TORCHRUN_ENV, "GLOO_SOCKET_IFNAME": "lo"}


def test_one_node_is_standalone_and_many_nodes_meet_at_the_endpoint() -> None:
    config, out = Path("/r/run.json"), Path("/r/train")
    one = torchrun_command(config, out, 2)
    assert one[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=2" in one and "--max-restarts=0" in one
    assert one[-6:] == ["-m", "embedpipe.train", "--config", str(config), "--out", str(out)]
    launch = LaunchConfig(
        nnodes=4, node_rank=3, rdzv_endpoint="head:29400", rdzv_id="job-7", max_restarts=2
    )
    many = torchrun_command(config, out, 8, launch)
    assert "--standalone" not in many
    for arg in (
        "--nnodes=4", "--node-rank=3", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29400",
        "--rdzv-id=job-7", "--nproc-per-node=8", "--max-restarts=2",
    ):  # fmt: skip
        assert arg in many, arg
    # The flags torchrun itself accepts (its parser, not a copy of its option list).
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(many[3:])
    assert (parsed.nnodes, parsed.node_rank, parsed.rdzv_endpoint) == ("4", 3, "head:29400")
    assert (
        parsed.max_restarts == 2 and parsed.module and parsed.training_script == "embedpipe.train"
    )


def final_vectors(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(out / "checkpoints"))[0]


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=LOOPBACK,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        end_tree(proc.pid, grace=5)
    return subprocess.CompletedProcess(command, proc.returncode, out)


@pytest.mark.slow
def test_two_nodes_by_c10d_rendezvous_equal_one_node_of_two(tmp_path: Path) -> None:
    workdir = write_workdir(tmp_path / "work", n_sequences=400)
    config = save_config(
        load_config(None, [f"workdir={workdir}", "train.epochs=2", *TRAIN]), tmp_path / "run.json"
    )
    single = run(torchrun_command(config, tmp_path / "single", 2))
    assert single.returncode == 0, single.stdout[-3000:]

    nodes = []
    try:
        for rank in (0, 1):
            launch = LaunchConfig(
                nnodes=2, node_rank=rank, rdzv_endpoint=f"127.0.0.1:{RDZV_PORT}",
                rdzv_id=f"test-{os.getpid()}", local_addr="127.0.0.1",
            )  # fmt: skip
            command = torchrun_command(config, tmp_path / "nodes", 1, launch)
            nodes.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=LOOPBACK,
                    start_new_session=True,
                )  # fmt: skip
            )
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            end_tree(node.pid, grace=5)
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    summary = (tmp_path / "nodes" / SUMMARY).read_text()
    assert '"world_size": 2' in summary

    one, two = final_vectors(tmp_path / "single"), final_vectors(tmp_path / "nodes")
    for name in ("input", "output"):
        assert torch.equal(one[name], two[name]), name


def worker_pids(agent: int) -> dict[int, int]:
    """LOCAL_RANK -> pid of the trainer processes a torchrun agent started."""
    found = {}
    for pid in descendants(agent):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        env = dict(e.split(b"=", 1) for e in environ if b"=" in e)
        if b"embedpipe.train" in cmdline and b"LOCAL_RANK" in env:
            found[int(env[b"LOCAL_RANK"])] = pid
    return found


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_resumes_to_the_same_vectors(tmp_path: Path) -> None:
    workdir = write_workdir(tmp_path / "work", n_sequences=6000)
    settings = [
        f"workdir={workdir}", "train.epochs=2", *TRAIN, "train.checkpoint_every=25",
        "train.keep_checkpoints=100", "train.log_every=5",
    ]  # fmt: skip
    config = save_config(load_config(None, settings), tmp_path / "run.json")
    full = run(torchrun_command(config, tmp_path / "full", 2))
    assert full.returncode == 0, full.stdout[-3000:]
    full_steps = int(
        load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))[1]["step"]
    )

    out = tmp_path / "killed"
    command = torchrun_command(config, out, 2, LaunchConfig(max_restarts=1))
    agent = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**LOOPBACK, "LOGLEVEL": "INFO"}, start_new_session=True,
    )  # fmt: skip
    try:
        # Wait for a complete mid-run checkpoint, then SIGKILL rank 0 (the one that writes).
        deadline = time.monotonic() + 180
        while not [p for p in complete_checkpoints(out / "checkpoints") if p.name != "step-0"]:
            assert agent.poll() is None, agent.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        victim = worker_pids(agent.pid)[0]
        os.kill(victim, signal.SIGKILL)
        resumed_from = int(latest_checkpoint(out / "checkpoints").name.removeprefix("step-"))
        assert not (out / SUMMARY).exists(), "the run ended before the kill: make it longer"
        output, _ = agent.communicate(timeout=300)
    finally:
        end_tree(agent.pid, grace=5)
    assert agent.returncode == 0, output[-3000:]
    assert 0 < resumed_from < full_steps
    # torchrun's own report of the restart (its agent logs at INFO with LOGLEVEL=INFO).
    assert "attempts left; will restart worker group" in output

    # The second attempt resumed: steps up to the checkpoint were logged once, not twice.
    logged = Counter(int(line.split('"step": ')[1].split(",")[0]) for line in
                     (out / METRICS).read_text().splitlines())  # fmt: skip
    assert all(n == 1 for step, n in logged.items() if step <= resumed_from)
    states = [
        load_checkpoint(p)[1] for p in complete_checkpoints(tmp_path / "full" / "checkpoints")
    ]
    epoch_ends = {s["step"] for s in states if s["cursors"] == [[0, 0], [0, 0]]}
    assert full_steps in epoch_ends and len(epoch_ends) == 2
    assert set(logged) == {1, *range(5, full_steps + 1, 5), *epoch_ends}  # first, 5th, each last

    expected, got = final_vectors(tmp_path / "full"), final_vectors(out)
    for name in ("input", "output"):
        assert torch.equal(expected[name], got[name]), name  # bit for bit on CPU
