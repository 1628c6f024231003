"""Progress of `embedpipe prepare` and `embedpipe train`: a live rich bar on a terminal,
plain lines anywhere else (a pipe, a file, a Prefect run's log, a dumb terminal).

The bar is drawn on stderr, so stdout keeps only the command's results. Training runs
under torchrun in child processes: the bar is drawn here, in the parent, from the records
rank 0 appends to `metrics.jsonl` (the file's contract is unchanged; the parent only reads
it), polled whenever a line of the workers' output arrives. Corpus stages run in this
process's Spark session: a thread polls the session's task counts (or, under
spark-submit, the bar counts stages alone).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # rich is imported only where a bar is drawn (a command starts sooner)
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn

POLL_SECONDS = 0.5  # between two looks at the Spark session's task counts
# Rank 0's progress line (`train.loop.Loop.log`): the bar shows what it says, so a live
# bar hides it; any other line of the workers' output is shown above the bar.
PROGRESS_LINE = re.compile(r"^step \d+ epoch \d+ ")
RATE_UNIT = re.compile(r" [\d,]+ (\w+)/s ")

TaskCounts = tuple[int, int]  # (finished, total) tasks of the running Spark stages


def live_progress(stream: TextIO | None = None) -> bool:
    """Whether to draw a live bar on `stream` (default stderr): only on a terminal that can
    redraw a line, and not inside a Prefect flow run (whose log wants plain lines)."""
    stream = sys.stderr if stream is None else stream
    if os.environ.get("TERM") == "dumb" or os.environ.get("PREFECT__FLOW_RUN_ID"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LiveBar:
    """A rich Progress on stderr while in a `with` block when `live`, else plain lines.

    `log` shows a line of output: above the bar when live, else printed to stdout.
    """

    def __init__(
        self,
        live: bool,
        columns: Callable[[], Sequence[ProgressColumn]],
        console: Console | None,
    ):
        self.progress: Progress | None = None
        if live:
            from rich.console import Console
            from rich.progress import Progress

            self.progress = Progress(
                *columns(),
                console=console or Console(stderr=True),
                redirect_stdout=sys.stdout.isatty(),  # results sent to a file stay there
                refresh_per_second=4,
            )

    def __enter__(self) -> LiveBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def log(self, line: str) -> None:
        if self.progress is None:
            print(line, flush=True)
        else:
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)


def stage_line(stage: str, manifest: dict[str, Any]) -> str:
    """A finished stage as one line: its name, time (or reused) and counts."""
    state = "reused" if manifest["skipped"] else f"{manifest['seconds']}s"
    return f"{stage:12s} {state:>8s}  {json.dumps(manifest['counts'])[:160]}"


def _stage_columns() -> tuple[ProgressColumn, ...]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


def _training_columns() -> tuple[ProgressColumn, ...]:
    from rich.progress import (
        BarColumn,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return (
        SpinnerColumn(),
        TextColumn("train epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )


class StageProgress(LiveBar):
    """`embedpipe prepare`: stage i of n, and the Spark tasks of the running stage when
    `poll` (this process's session) says; each finished stage's line goes to stdout."""

    def __init__(
        self,
        stages: Sequence[str],
        live: bool,
        poll: Callable[[], TaskCounts | None] | None = None,
        console: Console | None = None,
    ) -> None:
        super().__init__(live, _stage_columns, console)
        self.stages, self.poll, self.done_stages = list(stages), poll, 0
        self.stopped = threading.Event()
        self.poller = threading.Thread(target=self._poll_tasks, daemon=True)
        if self.progress is not None:
            self.overall = self.progress.add_task("stages", total=len(self.stages))
            self.tasks = self.progress.add_task("  spark tasks", total=None, visible=False)

    def __enter__(self) -> StageProgress:
        super().__enter__()
        if self.progress is not None and self.poll is not None:
            self.poller.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopped.set()
        if self.poller.is_alive():
            self.poller.join()
        if self.progress is not None:
            self.progress.update(self.tasks, visible=False)
        super().__exit__(kind, error, tb)

    def start(self, stage: str) -> None:
        """Stage `stage` begins."""
        if self.progress is not None:
            i = self.stages.index(stage) + 1
            self.progress.update(self.overall, description=f"stage {i}/{len(self.stages)} {stage}")

    def done(self, stage: str, manifest: dict[str, Any]) -> None:
        """Stage `stage` ended with `manifest`: its line on stdout, the bar one step on."""
        print(stage_line(stage, manifest), flush=True)
        if self.progress is not None:
            self.progress.advance(self.overall)
            self.progress.update(self.tasks, visible=False)  # until the next stage's tasks

    def _poll_tasks(self) -> None:
        """Until the block ends: the running Spark stages' task counts into the bar."""
        assert self.poll is not None and self.progress is not None
        while not self.stopped.wait(POLL_SECONDS):
            try:
                counts = self.poll()
            except Exception:  # the session stopping or starting: look again later
                counts = None
            if counts is None or counts[1] == 0:
                self.progress.update(self.tasks, visible=False)
            else:
                finished, total = counts
                self.progress.update(self.tasks, completed=finished, total=total, visible=True)


class TrainingProgress(LiveBar):
    """`embedpipe train`: epoch, share of the run, step, loss, rate and ETA from rank 0's
    `metrics.jsonl` records; the workers' other lines above the bar."""

    def __init__(self, metrics: Path, epochs: int, live: bool, console: Console | None = None):
        super().__init__(live, _training_columns, console)
        self.metrics, self.offset, self.unit = metrics, 0, "words"
        self.last: dict[str, Any] | None = None  # the newest step record
        if self.progress is not None:
            self.task = self.progress.add_task(
                "train", total=1.0, epoch=1, epochs=epochs, detail="starting"
            )

    def log(self, line: str) -> None:
        """A line of the launch's or the workers' output; a progress line updates the bar."""
        if self.progress is None:
            super().log(line)
            return
        if PROGRESS_LINE.match(line):
            unit = RATE_UNIT.search(line)
            self.unit = unit.group(1) if unit else self.unit
        else:
            super().log(line)
        self.update()

    def update(self) -> None:
        """Show the newest records of `metrics.jsonl`."""
        assert self.progress is not None
        for record in self.new_records():
            fields: dict[str, Any] = {"completed": float(record.get("progress") or 0.0)}
            if "words_per_sec" in record:  # a step record (else an evaluation's)
                self.last = record
                fields["epoch"] = int(record["epoch"]) + 1
                fields["detail"] = self.detail(record) + f"  eta {record['eta_sec']}s"
            self.progress.update(self.task, **fields)

    def detail(self, record: dict[str, Any]) -> str:
        """A step record's step, loss and rate."""
        return (
            f"step {record['step']}  loss {record['loss']:.4f}  "
            f"{record['words_per_sec']:,} {self.unit}/s"
        )

    def finish(self) -> None:
        """Training ended: the bar at 100%, with the last step's figures."""
        if self.progress is not None:
            self.update()
            done = self.detail(self.last) if self.last else "done"
            self.progress.update(self.task, completed=1.0, detail=done)

    def new_records(self) -> list[dict[str, Any]]:
        """The whole records appended to `metrics.jsonl` since the last call (from the
        start again when the file was replaced: a new run of other settings)."""
        try:
            with self.metrics.open("rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    self.offset = 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            self.offset = 0
            return []
        whole = data[: data.rfind(b"\n") + 1]
        self.offset += len(whole)
        records = []
        for line in whole.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # not a record: leave it to the reader of the file
        return records
