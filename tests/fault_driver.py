"""What the fault-injection suite (test_fault_injection.py) runs, in its own process or in
the test's: a small stage committed by `run_stage`, a training run, a real Spark stage.

    python tests/fault_driver.py fake <workdir> <variant> [<lock wait>]
    python tests/fault_driver.py train <workdir> <out>
    python tests/fault_driver.py spark <workdir> <vocab.min_count>

`EMBEDPIPE_CRASH_AT` (embedpipe.faults) kills the process at a named point; a run that
ends prints its manifest or summary as JSON on the last line of stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

FAKE_PARTS = 4
SLOW_ENV = "FAULT_DRIVER_SLOW"  # seconds the fake stage sleeps after each part


# ------------------------------------------------------------------ the fake stage


def fake_stage() -> Any:
    from embedpipe.corpus.registry import Stage

    return Stage("fake", "fake", ("corpus",), (), "unused:unused")


def write_fake(out: str, variant: int) -> dict[str, Any]:
    """A table of FAKE_PARTS Parquet parts in two `bucket=k/` dirs, a plain file beside
    them and a side table (`fake.rejects/`); the content depends on `variant` alone."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedpipe.faults import crash_point
    from embedpipe.workdir import side_output

    fs, root = fsspec.core.url_to_fs(out)
    slow = float(os.environ.get(SLOW_ENV, "0"))
    for i in range(FAKE_PARTS):
        start = variant * 1000 + i * 10
        table = pa.table({"x": pa.array(range(start, start + 10), pa.int64())})
        fs.makedirs(f"{root}/bucket={i % 2}", exist_ok=True)
        with fs.open(f"{root}/bucket={i % 2}/part-{i:05d}.parquet", "wb") as f:
            pq.write_table(table, f)
        crash_point("fake.part")
        time.sleep(slow)
    with fs.open(f"{root}/_model.bin", "wb") as f:
        f.write(bytes([variant]) * 64)
    side = side_output(out, "_rejects")
    sfs, side_root = fsspec.core.url_to_fs(side)
    sfs.makedirs(side_root, exist_ok=True)
    with sfs.open(f"{side_root}/part-00000.parquet", "wb") as f:
        pq.write_table(pa.table({"record": [f"rejected by variant {variant}"]}), f)
    return {"rows": FAKE_PARTS * 10, "variant": variant}


def run_fake(workdir: str, variant: int, lock_wait: float | None = None) -> dict[str, Any]:
    from embedpipe.config import load_config
    from embedpipe.corpus.spark.commit import run_stage

    config = load_config(None, [f"workdir={workdir}"])
    return run_stage(
        fake_stage(),
        config,
        lambda out: write_fake(out, variant),
        {"variant": variant},
        lock_wait=lock_wait,
    )


# ------------------------------------------------------------------ training


def train_config() -> Any:
    from embedpipe.config import TrainConfig
    from embedpipe.train.registry import Word2VecConfig

    # A checkpoint every 3 steps, only the newest kept: each save after the first prunes.
    return TrainConfig(
        epochs=2, checkpoint_every=3, keep_checkpoints=1, log_every=10_000, threads=1,
        options=Word2VecConfig(dim=8, window=3, negatives=3, batch_size=48),
    )  # fmt: skip


def run_train(workdir: str, out: str) -> dict[str, Any]:
    from embedpipe.train.loop import train

    return train(train_config(), workdir, Path(out))


# ------------------------------------------------------------------ a real Spark stage


def spark_config(workdir: str, min_count: int, *overrides: str) -> Any:
    from embedpipe.config import load_config

    return load_config(
        None,
        [
            f"workdir={workdir}",
            f"vocab.min_count={min_count}",
            "spark.master=local[1]",
            "spark.shuffle_partitions=2",
            "spark.driver_memory=1g",
            *overrides,
        ],
    )


def run_spark_vocab(workdir: str, min_count: int) -> dict[str, Any]:
    from embedpipe.corpus.registry import STAGES
    from embedpipe.corpus.spark.session import get_spark

    config = spark_config(workdir, min_count)
    spark = get_spark(config.spark)
    return STAGES["build_vocab"].run(spark, config)


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "fake":
        wait = float(args[2]) if len(args) > 2 else None
        result = run_fake(args[0], int(args[1]), wait)
    elif kind == "train":
        result = run_train(args[0], args[1])
    elif kind == "spark":
        result = run_spark_vocab(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown run {kind!r}")
    print(json.dumps(result, sort_keys=True, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
