"""Rank 0's record of a run: metrics.jsonl, TensorBoard events that read back the same, the
first and last steps always logged, a loss curve with visible points."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from embedpipe.config import TrainConfig
from embedpipe.evaluate.plots import plot_training
from embedpipe.evaluate.report import read_training_metrics
from embedpipe.train import progress
from embedpipe.train.checkpoint import complete_checkpoints
from embedpipe.train.loop import SUMMARY, train
from embedpipe.train.registry import Word2VecConfig
from embedpipe.workdir import METRICS, TENSORBOARD

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

CONFIG = TrainConfig(
    epochs=2, checkpoint_every=3, keep_checkpoints=100, log_every=2, threads=1,
    options=Word2VecConfig(dim=8, window=3, negatives=3, batch_size=48),
)  # fmt: skip


def scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the train dir's TensorBoard events, as TensorBoard reads them."""
    events = EventAccumulator(str(out / TENSORBOARD))
    events.Reload()
    tags = events.Tags()["scalars"]
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags}


def raw_steps(out: Path) -> list[int]:
    lines = (out / METRICS).read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_events_read_back_as_metrics_jsonl_after_a_resume(workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    full = train(CONFIG, str(workdir), out)
    # Killed after a mid-run checkpoint: the later checkpoints are gone, what it logged stays.
    checkpoints = complete_checkpoints(out / "checkpoints")
    kept = checkpoints[len(checkpoints) // 2]
    for later in checkpoints[len(checkpoints) // 2 + 1 :]:
        shutil.rmtree(later)
    (out / SUMMARY).unlink()
    time.sleep(1.1)  # event files are named by the second they are opened in
    resumed = train(CONFIG, str(workdir), out)
    assert resumed["steps"] == full["steps"]

    steps = raw_steps(out)
    resumed_at = int(kept.name.removeprefix("step-"))
    assert len(steps) > len(set(steps))  # steps past the checkpoint were logged twice
    assert len(list((out / TENSORBOARD).glob("events.out.tfevents.*"))) == 2

    records = read_training_metrics(out / METRICS)
    logged = scalars(out)
    expected = [(r["step"], r["loss"]) for r in records if r["loss"] is not None]
    assert [s for s, _ in logged["train/loss"]] == [s for s, _ in expected]  # each step once
    for (_, got), (_, want) in zip(logged["train/loss"], expected, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    assert [s for s, _ in logged["train/lr"]] == [r["step"] for r in records]
    rates = [(r["step"], r["words_per_sec"]) for r in records if "words_per_sec" in r]
    assert logged["train/words_per_sec"] == [(s, pytest.approx(v)) for s, v in rates]
    assert expected[0][0] == 1 and expected[-1][0] == full["steps"]
    assert resumed_at < full["steps"]


def test_a_short_run_logs_its_first_and_last_step(workdir: Path, tmp_path: Path) -> None:
    """log_every above the run's length: still a curve of two points, each marked."""
    config = dataclasses.replace(CONFIG, epochs=1, checkpoint_every=0, log_every=10_000)
    summary = train(config, str(workdir), tmp_path / "a")
    last = summary["steps"]
    assert last > 4
    records = read_training_metrics(tmp_path / "a" / METRICS)
    assert [r["step"] for r in records] == [1, last]
    assert all(r["loss"] > 0 and r["words_per_sec"] > 0 for r in records)

    fig = plot_training(records, tmp_path / "loss.png")
    loss = next(line for line in fig.axes[0].get_lines() if line.get_label() == "loss")
    assert list(loss.get_xdata()) == [1, last]
    assert loss.get_marker() == "o" and loss.get_markersize() > 0
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000

    # The demo's case: log_every about half the run gives the first, the middle, the last.
    half = dataclasses.replace(config, log_every=last // 2 + 1)
    train(half, str(workdir), tmp_path / "b")
    steps = [r["step"] for r in read_training_metrics(tmp_path / "b" / METRICS)]
    assert steps == [1, last // 2 + 1, last]


def test_training_without_tensorboard_says_so_and_logs(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    config = dataclasses.replace(CONFIG, epochs=1, checkpoint_every=0)
    summary = train(config, str(workdir), tmp_path / "out")
    printed = capsys.readouterr().out
    assert printed.count("TensorBoard events are off") == 1
    assert not (tmp_path / "out" / TENSORBOARD).exists()
    assert raw_steps(tmp_path / "out")[-1] == summary["steps"]


def test_events_are_closed_when_training_fails(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    opened: list[Any] = []
    real_open = progress.open_events

    def open_events(directory: Path, purge_step: int) -> Any:
        opened.append(real_open(directory, purge_step))
        return opened[-1]

    monkeypatch.setattr(progress, "open_events", open_events)
    monkeypatch.setattr("embedpipe.train.loop.save_checkpoint", disk_full)
    config = dataclasses.replace(CONFIG, log_every=1, checkpoint_every=2)
    with pytest.raises(OSError, match="disk full"):
        train(config, str(workdir), tmp_path / "out")
    assert len(opened) == 1 and opened[0].file_writer is None  # closed: its thread joined
    logged = scalars(tmp_path / "out")
    assert [s for s, _ in logged["train/loss"]] == [1, 2] == raw_steps(tmp_path / "out")
