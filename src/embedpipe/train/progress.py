"""Rank 0's record of a training run: metrics.jsonl, TensorBoard events and loss.png.

Every logged step is one JSON record in `metrics.jsonl` (appended: a resumed run writes the
steps after its checkpoint again, and readers keep the later record of a step) and, when
TensorBoard is installed, the same scalars in event files under `tensorboard/` (point
`tensorboard --logdir` at the train dir). A resumed run opens a new event file whose
purge step is the step after its checkpoint, so TensorBoard drops what the interrupted run
logged past it: each step shows once, as in metrics.jsonl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from embedpipe.workdir import METRICS, TENSORBOARD

# metrics.jsonl field -> TensorBoard tag; any other numeric field of a record (the model's
# evaluation: held-out loss, perplexity) goes under eval/.
TRAIN_TAGS = {"loss": "train/loss", "lr": "train/lr", "words_per_sec": "train/words_per_sec"}
NOT_SCALARS = ("step", "epoch", "progress", "eta_sec")
FLUSH_SECS = 30  # TensorBoard reads what is flushed: at most this late


class ProgressLog:
    """The metrics file and the TensorBoard writer of one training process (rank 0)."""

    def __init__(self, out: Path, resume_step: int) -> None:
        self.out = out
        self.metrics = (out / METRICS).open("a", encoding="utf-8")
        self.events = open_events(out / TENSORBOARD, resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (flushed) and its scalars to the events."""
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.events is None:
            return
        for key, value in record.items():
            if key in NOT_SCALARS or not isinstance(value, int | float) or math.isnan(value):
                continue
            self.events.add_scalar(TRAIN_TAGS.get(key, f"eval/{key}"), value, record["step"])

    def close(self) -> None:
        """Flush and close both (idempotent: also called when training fails)."""
        if not self.metrics.closed:
            self.metrics.close()
        if self.events is not None:
            self.events.close()
            self.events = None


def open_events(directory: Path, purge_step: int) -> Any:
    """A TensorBoard `SummaryWriter` on `directory` that drops earlier events from
    `purge_step` on; None (with one line saying so) when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        print(f"TensorBoard events are off ({e}); metrics.jsonl has every record", flush=True)
        return None
    return SummaryWriter(str(directory), purge_step=purge_step, flush_secs=FLUSH_SECS)


def write_loss_curve(out: Path) -> Path:
    """`loss.png` beside metrics.jsonl: loss, learning rate and words/s by step."""
    from embedpipe.evaluate.plots import LOSS_PLOT, plot_training
    from embedpipe.evaluate.report import read_training_metrics

    path = out / LOSS_PLOT
    plot_training(read_training_metrics(out / METRICS), path)
    return path
