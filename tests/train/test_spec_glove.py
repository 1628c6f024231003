"""GloVe training on a tiny `cooccur` table: chunks per rank, loss, exact resume."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from embedpipe import schemas as S
from embedpipe.config import ConfigError, TrainConfig
from embedpipe.train.checkpoint import (
    STATE,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
)
from embedpipe.train.data import CooccurReader, cooccur_chunks, rank_chunks, read_chunk
from embedpipe.train.glove import TABLES, GloVe
from embedpipe.train.loop import SUMMARY, train
from embedpipe.train.registry import GloVeConfig
from embedpipe.train.specs.glove import POOL_CHUNKS, pool_order
from embedpipe.workdir import MANIFEST


def write_cooccur(workdir: Path, shards: int, window: int = 3) -> Path:
    """`cooccur` of the fixture's sequences (weight 1/d), partitioned shard=k/."""
    counts: dict[tuple[int, int], float] = defaultdict(float)
    for chunk in rank_chunks(str(workdir / "sequences"), 0, 1):
        flat, offsets = read_chunk(chunk)
        for a, b in zip(offsets[:-1], offsets[1:], strict=True):
            seq = flat[a:b].tolist()
            for i, w in enumerate(seq):
                for d in range(1, window + 1):
                    if i + d < len(seq) and min(w, seq[i + d]) >= len(S.SPECIAL_TOKENS):
                        counts[w, seq[i + d]] += 1.0 / d
                        counts[seq[i + d], w] += 1.0 / d
    root = workdir / "cooccur"
    keys = sorted(counts)
    for k in range(shards):
        part = [key for key in keys if key[0] % shards == k]
        table = pa.table(
            {
                S.ROW: pa.array([r for r, _ in part], pa.int32()),
                S.COL: pa.array([c for _, c in part], pa.int32()),
                S.WEIGHT: pa.array([counts[key] for key in part], pa.float32()),
            }
        )
        (root / f"shard={k}").mkdir(parents=True)
        pq.write_table(table, root / f"shard={k}" / "part-0.parquet", row_group_size=50)
    (root / MANIFEST).write_text(json.dumps({"fingerprint": f"cooccur-{shards}"}))
    return workdir


CONFIG = TrainConfig(
    model="glove", epochs=2, checkpoint_every=7, keep_checkpoints=100, log_every=1000, threads=1,
    options=GloVeConfig(dim=8, batch_size=16),
)  # fmt: skip


def all_entries(workdir: Path) -> tuple[torch.Tensor, ...]:
    read = CooccurReader()
    parts = [read(c) for c in cooccur_chunks(str(workdir / "cooccur"), 0, 1)]
    return tuple(torch.from_numpy(np.concatenate(p)) for p in zip(*parts, strict=True))


def test_config_accepts_the_models_and_checks_glove_fields() -> None:
    for model in ("sgns", "cbow", "glove"):
        assert TrainConfig(model=model).model == model
    assert TrainConfig(model="glove").options == GloVeConfig()
    with pytest.raises(ConfigError, match="word2vec2"):
        TrainConfig(model="word2vec2")
    for bad in ({"x_max": 0.0}, {"alpha": 0.0}, {"lr": -1.0}, {"batch_size": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            GloVeConfig(**bad)


def test_an_unset_batch_size_is_chosen_by_device_and_a_set_one_wins() -> None:
    unset = GloVeConfig()
    assert (unset.batch_for("cpu"), unset.batch_for("cuda")) == (1_048_576, 65_536)
    assert GloVeConfig(batch_size=4096).batch_for("cuda") == 4096
    parsed = TrainConfig.from_table({"model": "glove", "glove": {"batch_size": 64}})
    assert parsed.options.batch_size == 64


def test_cooccur_chunks_split_shards_or_rows(workdir: Path) -> None:
    write_cooccur(workdir, shards=3)
    table = str(workdir / "cooccur")
    total = sum(c.stop - c.start for c in cooccur_chunks(table, 0, 1))
    # Two ranks, three shards: whole shards by k % 2.
    read = CooccurReader()
    seen = []
    for rank in range(2):
        rows = np.concatenate([read(c)[0] for c in cooccur_chunks(table, rank, 2, 40)])
        assert set((rows % 3 % 2).tolist()) == {rank}
        seen.append(len(rows))
    assert sum(seen) == total
    # Four ranks, three shards: rows are split evenly.
    sizes = [sum(c.stop - c.start for c in cooccur_chunks(table, r, 4)) for r in range(4)]
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1


def test_training_lowers_the_loss(workdir: Path, tmp_path: Path) -> None:
    write_cooccur(workdir, shards=2)
    config = dataclasses.replace(CONFIG, epochs=15, checkpoint_every=0)
    summary = train(config, str(workdir), tmp_path / "out")
    assert json.loads((tmp_path / "out" / SUMMARY).read_text())["model"] == "glove"
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path / "out" / "checkpoints"))
    entries = all_entries(workdir)
    assert summary["corpus_words"] == len(entries[0])

    model = GloVe(len(tensors["word"]), config.options.dim, config.seed)
    with torch.no_grad():
        before = model(*entries, config.options.x_max, config.options.alpha).item()
        for name in ("word", "context", "word_bias", "context_bias"):
            getattr(model, name).weight.copy_(tensors[name])
        after = model(*entries, config.options.x_max, config.options.alpha).item()
    assert after < 0.5 * before
    torch.testing.assert_close(tensors["input"], model.vectors())


def test_resume_after_a_kill_repeats_the_run_exactly(workdir: Path, tmp_path: Path) -> None:
    write_cooccur(workdir, shards=2)
    full = train(CONFIG, str(workdir), tmp_path / "full")
    expected = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))[0]
    assert "adagrad.word" in expected
    checkpoints = complete_checkpoints(tmp_path / "full" / "checkpoints")[:-1]
    states = [json.loads((p / STATE).read_text()) for p in checkpoints]
    mid = [p for p, s in zip(checkpoints, states, strict=True) if s["cursors"][0][1] >= 1]
    assert mid
    for killed_at in {mid[0], mid[-1], checkpoints[len(checkpoints) // 2]}:
        out = tmp_path / f"resumed-{killed_at.name}"
        shutil.copytree(killed_at, out / "checkpoints" / killed_at.name)
        resumed = train(CONFIG, str(workdir), out)
        assert resumed["steps"] == full["steps"]
        got = load_checkpoint(latest_checkpoint(out / "checkpoints"))[0]
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(expected[name], got[name]), (killed_at.name, name)


@pytest.mark.slow
def test_torchrun_two_ranks(workdir: Path, tmp_path: Path) -> None:
    write_cooccur(workdir, shards=3)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "embedpipe.train", "--set", f"workdir={workdir}", "--set", "train.model=glove",
        "--set", "train.epochs=2", "--set", "train.glove.dim=8",
        "--set", "train.glove.batch_size=16", "--set", "train.glove.lr=0.2",
        "--set", "train.checkpoint_every=4", "--set", "train.glove.sync_every=32",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["steps"] > 0
    tensors, state = load_checkpoint(out / "checkpoints" / summary["checkpoint"])
    assert state["world"] == 2 and state["epoch"] == 2
    # The ranks exchanged their changes at sync boundaries and at every checkpoint.
    assert summary["syncs"] > 2 * 2 and summary["bytes_per_word"] > 0
    # Both ranks' entries moved the one shared model: the loss over all entries fell.
    model = GloVe(len(tensors["word"]), 8, seed=0)
    entries = all_entries(workdir)
    with torch.no_grad():
        before = model(*entries, 100.0, 0.75).item()
        for name in TABLES:
            getattr(model, name).weight.copy_(tensors[name])
        after = model(*entries, 100.0, 0.75).item()
    assert after < 0.7 * before
    torch.testing.assert_close(tensors["input"], model.vectors())


def test_pools_visit_every_chunk_once_in_a_seeded_order() -> None:
    n = 3 * POOL_CHUNKS + 5
    orders = [pool_order(CONFIG.seed, n, epoch, rank) for epoch in (0, 1) for rank in (0, 1)]
    for pools in orders:
        assert sorted(c for pool in pools for c in pool) == list(range(n))
        assert [len(p) for p in pools] == [POOL_CHUNKS] * 3 + [5]
    assert len({str(o) for o in orders}) == 4  # each epoch and rank its own order
    assert pool_order(CONFIG.seed, n, 1, 0) == orders[2]
