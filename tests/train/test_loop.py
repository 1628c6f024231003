"""The training loop with the skip-gram spec: exact resume after a kill, run fingerprints,
the row exchange, and a real 2-rank torchrun."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from embedpipe.config import TrainConfig
from embedpipe.train.checkpoint import (
    STATE,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
)
from embedpipe.train.loop import SUMMARY, Loop, train, training_fingerprint
from embedpipe.train.registry import Word2VecConfig
from embedpipe.train.sgns import SkipGram
from embedpipe.workdir import MANIFEST, Workdir

CONFIG = TrainConfig(
    epochs=2, checkpoint_every=3, keep_checkpoints=100, log_every=10_000, threads=1,
    options=Word2VecConfig(dim=8, window=3, negatives=3, batch_size=48),
)  # fmt: skip


def final_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(out / "checkpoints"))[0]


def test_resume_after_a_kill_repeats_the_run_exactly(workdir: Path, tmp_path: Path) -> None:
    full = train(CONFIG, str(workdir), tmp_path / "full")
    expected = final_tensors(tmp_path / "full")
    checkpoints = complete_checkpoints(tmp_path / "full" / "checkpoints")[:-1]
    states = [json.loads((p / STATE).read_text()) for p in checkpoints]
    # The run holds checkpoints mid-chunk, at chunk boundaries and at the epoch boundary.
    cursors = {(s["epoch"], tuple(s["cursors"][0])) for s in states}
    assert any(c[1][0] >= 1 and c[1][1] >= 1 for c in cursors)
    assert (1, (0, 0)) in cursors

    for killed_at in checkpoints:  # as if killed right after writing this checkpoint
        out = tmp_path / f"resumed-{killed_at.name}"
        shutil.copytree(killed_at, out / "checkpoints" / killed_at.name)
        resumed = train(CONFIG, str(workdir), out)
        assert resumed["steps"] == full["steps"]
        got = final_tensors(out)
        for name in ("input", "output"):
            assert torch.equal(expected[name], got[name]), (killed_at.name, name)
    # ... and training did move the vectors.
    initial = SkipGram(len(expected["input"]), CONFIG.options.dim, CONFIG.seed).input.weight
    assert not torch.equal(expected["input"], initial)
    assert torch.isfinite(expected["input"]).all()


def test_fingerprint_is_recorded_and_guards_resume(workdir: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(CONFIG, epochs=1, checkpoint_every=0)
    out = tmp_path / "out"
    summary = train(config, str(workdir), out)
    wd = Workdir(str(workdir))
    expected = training_fingerprint(config, wd)
    assert summary["fingerprint"] == expected
    assert json.loads((out / SUMMARY).read_text())["fingerprint"] == expected
    state = json.loads((latest_checkpoint(out / "checkpoints") / STATE).read_text())
    assert state["fingerprint"] == expected

    # Another setting: the old checkpoint must not be resumed.
    other = dataclasses.replace(config, options=dataclasses.replace(config.options, lr=0.05))
    with pytest.raises(RuntimeError, match=str(out / "checkpoints")):
        train(other, str(workdir), out)

    # Same settings, new upstream table: refused as well.
    manifest = workdir / "vocab" / MANIFEST
    manifest.write_text(json.dumps({"fingerprint": "vocab-rebuilt"}))
    assert training_fingerprint(config, wd) != expected
    with pytest.raises(RuntimeError, match="fingerprint"):
        train(config, str(workdir), out)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sgns", "cbow"])
def test_torchrun_two_ranks(workdir: Path, tmp_path: Path, model: str) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "embedpipe.train", "--set", f"workdir={workdir}", "--set", "train.epochs=2",
        "--set", f"train.model={model}",
        "--set", f"train.{model}.dim=8", "--set", f"train.{model}.batch_size=48",
        "--set", f"train.{model}.negatives=3", "--set", f"train.{model}.sync_every=100",
        "--set", "train.checkpoint_every=4", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["steps"] > 0
    tensors, state = load_checkpoint(out / "checkpoints" / summary["checkpoint"])
    assert state["world"] == 2 and state["epoch"] == 2 and state["step"] == summary["steps"]
    # Exchanges at sync boundaries, and at each checkpoint one that leaves the replicas
    # equal (RowSync.finish compares a checksum of every rank's tables, or the run fails).
    checkpoints = summary["steps"] // 4 + 2
    assert summary["syncs"] > checkpoints and summary["bytes_per_word"] > 0
    vectors = tensors["input"]
    assert torch.isfinite(vectors).all() and torch.isfinite(tensors["output"]).all()
    assert not torch.equal(vectors, SkipGram(len(vectors), 8, seed=1).input.weight)


def test_an_exchange_is_settled_once_its_share_of_the_interval_is_trained() -> None:
    """Loop.sync_step: an exchange at every `sync_every` words, and the one in flight
    applied (`settle`) from `sync_overlap` of the next interval on, never before."""
    calls: list[tuple[str, int]] = []
    loop = SimpleNamespace(words=0, synced=0)
    loop.model = SimpleNamespace(
        sync_every=100,
        sync_overlap=0.5,
        exchange=lambda: calls.append(("exchange", loop.words)),
        settle=lambda: calls.append(("settle", loop.words)),
    )
    for _ in range(16):  # steps of 15 words
        loop.words += 15
        Loop.sync_step(loop)  # type: ignore[arg-type]
    assert calls == [
        ("settle", 60), ("settle", 75), ("settle", 90), ("exchange", 105),
        ("settle", 165), ("settle", 180), ("settle", 195), ("exchange", 210),
    ]  # fmt: skip
