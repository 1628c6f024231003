"""Progress of prepare and train: a live bar on a terminal, plain lines in a pipe."""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from embedpipe.cli import main, progress
from embedpipe.cli.progress import StageProgress, TrainingProgress, live_progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal() -> tuple[Console, io.StringIO]:
    """A console that draws as on a terminal, into a buffer."""
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=160, color_system=None), buffer


def drawn(buffer: io.StringIO) -> str:
    return ANSI.sub("", buffer.getvalue())


def test_live_progress_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    master, replica = os.openpty()
    read_end, write_end = os.pipe()
    with open(replica, "w") as tty, open(write_end, "w") as pipe:
        assert live_progress(tty)
        assert not live_progress(pipe)
        assert not live_progress(io.StringIO())
        monkeypatch.setenv("TERM", "dumb")
        assert not live_progress(tty)
        monkeypatch.setenv("TERM", "xterm-256color")
        monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "5a1f")  # a Prefect worker's flow run
        assert not live_progress(tty)
    os.close(master)
    os.close(read_end)
    closed = open(tmp_path / "f", "w")  # noqa: SIM115 - closed on purpose
    closed.close()
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID")
    assert not live_progress(closed)
    assert not live_progress()  # pytest's captured stderr


def manifest(seconds: float, rows: int, skipped: bool = False) -> dict[str, Any]:
    return {"skipped": skipped, "seconds": seconds, "counts": {"rows": rows}}


def test_prepare_in_a_pipe_prints_plain_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedpipe.corpus.spark import launch

    def stage(name: str, config: object, log: Any) -> dict[str, Any]:
        log(f"[spark-submit] running {name}")
        return manifest(1.5, 3) if name == "tokenize" else manifest(0.2, 9, skipped=True)

    monkeypatch.setattr(launch, "launch_stage", stage)
    main(["prepare", "--stage", "tokenize", "--stage", "encode"])
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "[spark-submit] running tokenize",
        'tokenize         1.5s  {"rows": 3}',
        "[spark-submit] running encode",
        'encode         reused  {"rows": 9}',
    ]
    assert captured.err == ""


def test_train_in_a_pipe_prints_plain_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedpipe.train import launch

    lines = [
        "layout: 1 process(es) x 2 thread(s) on 2 CPU cores",
        "step 50 epoch 0  50.0% loss 2.1849 lr 0.00547 1,556,600 words/s eta 1s",
        "evaluation after epoch 1: heldout 2.5",
    ]

    def training(config: object, out: Path, log: Any) -> dict[str, Any]:
        for line in lines:
            log(line)
        return {"steps": 100, "seconds": 2.5, "words_per_sec": 1600000, "skipped": False}

    monkeypatch.setattr(launch, "run_training", training)
    main(["train"])
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == lines
    assert json.loads("\n".join(out.splitlines()[3:])) == {
        "steps": 100,
        "seconds": 2.5,
        "words_per_sec": 1600000,
        "skipped": False,
    }


def record(step: int, epoch: int, share: float, rate: int) -> str:
    """A step record of metrics.jsonl (`train.loop.Loop.log`)."""
    fields = {"step": step, "epoch": epoch, "progress": share, "loss": 2.5, "lr": 0.01}
    return json.dumps({**fields, "words_per_sec": rate, "eta_sec": 7}) + "\n"


def test_training_bar_on_a_terminal(tmp_path: Path) -> None:
    """The bar shows rank 0's newest record; the progress line it stands for is hidden,
    the other lines show above it."""
    metrics = tmp_path / "metrics.jsonl"
    console, buffer = terminal()
    with TrainingProgress(metrics, epochs=3, live=True, console=console) as bar:
        bar.log("layout: 1 process(es) x 2 thread(s)")
        with metrics.open("a") as f:
            f.write(record(10, 0, 0.25, 900))
            f.write(record(20, 1, 0.5, 1234))
        bar.log("step 20 epoch 1  50.0% loss 2.5000 lr 0.01000 1,234 tokens/s eta 7s")
        assert bar.progress is not None
        bar.progress.refresh()
        shown = drawn(buffer)
        assert "layout: 1 process(es) x 2 thread(s)" in shown
        assert "train epoch 2/3" in shown and " 50%" in shown
        assert "step 20  loss 2.5000  1,234 tokens/s  eta 7s" in shown
        assert "step 20 epoch 1" not in shown
        bar.finish()
    last = drawn(buffer).splitlines()[-1]
    assert "100%" in last and "1,234 tokens/s" in last and "eta" not in last


def test_metrics_records_are_read_whole_and_again_after_a_new_run(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    bar = TrainingProgress(metrics, epochs=1, live=False)
    assert bar.new_records() == []  # no file yet
    metrics.write_text(record(1, 0, 0.1, 5) + record(2, 0, 0.2, 6) + '{"step": 3')
    assert [r["step"] for r in bar.new_records()] == [1, 2]  # not the half-written third
    with metrics.open("a") as f:
        f.write(', "epoch": 0}\n')
    assert bar.new_records() == [{"step": 3, "epoch": 0}]
    metrics.write_text(record(1, 0, 0.5, 7))  # a new run replaced the file
    assert [r["words_per_sec"] for r in bar.new_records()] == [7]
    assert bar.new_records() == []


def test_stage_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stage i of n, and the Spark tasks the session reports; a failing poll hides them."""
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.01)
    counts: list[tuple[int, int] | None] = [(3, 8)]

    def poll() -> tuple[int, int] | None:
        if counts[0] is None:
            raise ConnectionError("the session is stopping")
        return counts[0]

    console, buffer = terminal()
    with StageProgress(["tokenize", "encode"], live=True, poll=poll, console=console) as bar:
        assert bar.progress is not None
        bar.start("tokenize")
        task = bar.progress.tasks[bar.tasks]
        deadline = time.monotonic() + 10
        while not task.visible and time.monotonic() < deadline:
            time.sleep(0.01)
        bar.progress.refresh()
        shown = drawn(buffer)
        assert "stage 1/2 tokenize" in shown and "0/2" in shown
        assert "spark tasks" in shown and "3/8" in shown
        bar.done("tokenize", manifest(1.5, 3))
        counts[0] = None
        while task.visible and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not task.visible
        bar.start("encode")
        bar.progress.refresh()
        assert "stage 2/2 encode" in drawn(buffer) and "1/2" in drawn(buffer)
    assert "spark tasks" not in drawn(buffer).splitlines()[-1]  # hidden at the end
    assert capsys.readouterr().out == 'tokenize         1.5s  {"rows": 3}\n'
