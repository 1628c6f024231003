"""The causal-LM spec through the loop: held-out perplexity against the unigram model,
exact resume, torchrun."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from embedpipe.config import TrainConfig
from embedpipe.train.checkpoint import (
    STATE,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
)
from embedpipe.train.loop import SUMMARY, train
from embedpipe.train.registry import CLMConfig
from embedpipe.train.transformer import N_SPECIAL
from embedpipe.workdir import METRICS

HERE = Path(__file__).resolve().parent
PORT = 29621  # this area's ports: 29610-29629


def load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlm_corpus", HERE / "mlm_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlm_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = load_helper()
TINY = CLMConfig(
    layers=1, heads=2, width=16, ffn=32, max_len=40, max_tokens=160, warmup_steps=5,
    lr=3e-3, heldout=0.1, chunk_rows=100, dropout=0.1,
)  # fmt: skip
CONFIG = TrainConfig(
    model="clm", epochs=2, checkpoint_every=7, keep_checkpoints=100, log_every=10, threads=1,
    options=TINY,
)  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.write_mlm_workdir(tmp_path_factory.mktemp("clm") / "work", n_sequences=600)


def final_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(out / "checkpoints"))[0]


def heldout_unigram_perplexity(workdir: Path, heldout: float) -> float:
    """The unigram model of the vocab counts on the held-out sequences' ordinary tokens."""
    from embedpipe.train.buckets import heldout_mask

    vocab = pq.read_table(workdir / "vocab").sort_by("id")
    counts = vocab.column("count").to_numpy().astype(float)
    p = counts / counts[N_SPECIAL:].sum()
    stored = pq.read_table(workdir / "buckets").column("ids").to_pylist()
    offsets = np.cumsum([0] + [len(s) for s in stored])
    held = heldout_mask(np.concatenate(stored).astype(np.int32), offsets, heldout)
    tokens = np.array([t for s, h in zip(stored, held, strict=True) if h for t in s])
    tokens = tokens[tokens >= N_SPECIAL]
    return math.exp(-np.log(p[tokens]).mean())


def test_a_tiny_run_beats_the_unigram_model(workdir: Path, tmp_path: Path) -> None:
    clm = dataclasses.replace(TINY, width=32, ffn=64, max_tokens=256, lr=1e-2, dropout=0.0)
    config = dataclasses.replace(CONFIG, epochs=5, checkpoint_every=0, options=clm)
    summary = train(config, str(workdir), tmp_path / "out")
    heldout = summary["heldout"]
    assert [h["epoch"] for h in heldout] == list(range(6))
    unigram = heldout_unigram_perplexity(workdir, clm.heldout)
    assert all(h["unigram_perplexity"] == pytest.approx(unigram, rel=1e-4) for h in heldout)
    assert 25 < unigram < 32  # the 30 words are about equally frequent
    # Untrained: about the vocabulary's 35; trained: the topic, known after the first word,
    # leaves about 5 choices, so well under the unigram model's.
    assert heldout[0]["perplexity"] > unigram
    assert heldout[-1]["perplexity"] < 0.5 * unigram
    assert heldout[-1]["perplexity"] == pytest.approx(math.exp(heldout[-1]["loss"]), rel=1e-3)
    # Every ordinary held-out token is a target; [CLS] is a token slot, never a target.
    assert heldout[0]["targets"] == heldout[-1]["targets"] > 30
    assert heldout[0]["tokens"] > heldout[0]["targets"]
    assert summary["steps"] > 50 and summary["decoder"]["width"] == 32
    assert (
        summary["parameters"]
        == 35 * 32 + 40 * 32 + (4 * 32 * 32 + 4 * 32) + 2 * 32 * 64 + (64 + 32) + 3 * 2 * 32
    )  # token, position, attention, ffn, biases, norms: no output matrix
    records = [json.loads(line) for line in (tmp_path / "out" / METRICS).read_text().splitlines()]
    assert [r["heldout_perplexity"] for r in records if "heldout_perplexity" in r] == [
        h["perplexity"] for h in heldout
    ]


def test_resume_after_a_kill_repeats_the_run_exactly(workdir: Path, tmp_path: Path) -> None:
    full = train(CONFIG, str(workdir), tmp_path / "full")
    expected = final_tensors(tmp_path / "full")
    checkpoints = complete_checkpoints(tmp_path / "full" / "checkpoints")[:-1]
    states = {p: json.loads((p / STATE).read_text()) for p in checkpoints}
    mid_chunk = [p for p, s in states.items() if s["epoch"] == 1 and s["cursors"][0][1] > 0]
    assert mid_chunk
    out = tmp_path / "resumed"
    shutil.copytree(mid_chunk[0], out / "checkpoints" / mid_chunk[0].name)
    resumed = train(CONFIG, str(workdir), out)
    assert resumed["steps"] == full["steps"] and resumed["heldout"] == full["heldout"]
    got = final_tensors(out)
    assert set(got) == set(expected)
    for name in expected:  # weights, AdamW moments and step counts
        assert torch.equal(expected[name], got[name]), name
    assert torch.equal(expected["input"], expected["model.token.weight"])
    assert "model.output.weight" not in expected  # tied: the token embedding only
    assert json.loads((out / SUMMARY).read_text())["inputs"] == {
        "buckets": "buckets-0",
        "vocab": "vocab-0",
    }


@pytest.mark.slow
def test_torchrun_two_ranks(workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        f"--master-port={PORT}", "-m", "embedpipe.train", "--set", f"workdir={workdir}",
        "--set", "train.model=clm", "--set", "train.epochs=2", "--set", "train.checkpoint_every=5",
        "--set", "train.log_every=5", "--set", "train.clm.layers=1", "--set", "train.clm.width=16",
        "--set", "train.clm.heads=2", "--set", "train.clm.ffn=32", "--set", "train.clm.max_len=40",
        "--set", "train.clm.max_tokens=160", "--set", "train.clm.chunk_rows=60",
        "--set", "train.clm.heldout=0.1", "--set", "train.clm.lr=0.01", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["steps"] > 10
    heldout = summary["heldout"]
    assert heldout[-1]["perplexity"] < heldout[-1]["unigram_perplexity"] < heldout[0]["perplexity"]
    # Both ranks scored their share: the targets are the one-rank run's.
    one_rank = heldout_unigram_perplexity(workdir, 0.1)
    assert heldout[-1]["unigram_perplexity"] == pytest.approx(one_rank, rel=1e-4)
    tensors, state = load_checkpoint(out / "checkpoints" / summary["checkpoint"])
    assert state["world"] == 2 and state["epoch"] == 2 and len(state["cursors"]) == 2
    assert state["decoder"]["layers"] == 1 and torch.isfinite(tensors["input"]).all()
    assert proc.stdout.count("evaluation after epoch 2") == 1
