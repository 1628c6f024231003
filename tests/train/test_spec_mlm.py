"""The masked-LM spec through the loop: held-out loss goes down, exact resume, fingerprints, torchrun."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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
from embedpipe.train.mlm import N_SPECIAL, EncoderConfig, MaskedLM
from embedpipe.train.registry import MLMConfig
from embedpipe.train.specs.transformer import (
    learning_rate,
    optimizer_tensors,
    restore_optimizer,
)
from embedpipe.train.transformer import decay_groups
from embedpipe.workdir import METRICS, TENSORBOARD

HERE = Path(__file__).resolve().parent
PORT = 29615  # this area's ports: 29610-29629


def load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlm_corpus", HERE / "mlm_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlm_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = load_helper()
TINY = MLMConfig(
    layers=1, heads=2, width=16, ffn=32, max_len=40, max_tokens=160, warmup_steps=5,
    lr=3e-3, heldout=0.1, chunk_rows=100, dropout=0.1,
)  # fmt: skip
CONFIG = TrainConfig(
    model="mlm", epochs=2, checkpoint_every=7, keep_checkpoints=100, log_every=10, threads=1,
    options=TINY,
)  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.write_mlm_workdir(tmp_path_factory.mktemp("mlm") / "work", n_sequences=600)


def final_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(out / "checkpoints"))[0]


def test_a_tiny_run_lowers_the_heldout_loss(workdir: Path, tmp_path: Path) -> None:
    mlm = dataclasses.replace(TINY, width=32, ffn=64, max_tokens=256, lr=1e-2, dropout=0.0)
    config = dataclasses.replace(CONFIG, epochs=5, checkpoint_every=0, options=mlm)
    summary = train(config, str(workdir), tmp_path / "out")
    losses = [h["loss"] for h in summary["heldout"]]
    assert [h["epoch"] for h in summary["heldout"]] == list(range(6))
    # Untrained: about ln 30 (the words are about uniform); the topics allow about ln 5.
    assert losses[0] > 3.3
    assert losses[-1] < losses[0] - 0.8 and losses[-1] < 2.6
    assert summary["heldout"][-1]["perplexity"] == pytest.approx(
        2.718281828 ** losses[-1], rel=1e-3
    )
    assert summary["heldout"][0]["targets"] == summary["heldout"][-1]["targets"] > 30
    assert summary["steps"] > 100 and summary["world_size"] == 1
    assert 0 < summary["padding_share"] < 0.3
    # Rank 0's log: progress lines and one held-out record per evaluation.
    records = [json.loads(line) for line in (tmp_path / "out" / METRICS).read_text().splitlines()]
    assert len([r for r in records if "heldout_loss" in r]) == 6
    assert all(r["loss"] > 0 for r in records if "words_per_sec" in r)
    assert (tmp_path / "out" / "loss.png").is_file()
    # The input embeddings learnt the topics: words of one topic point the same way.
    vectors = final_tensors(tmp_path / "out")["input"][N_SPECIAL:]
    unit = torch.nn.functional.normalize(vectors, dim=1)
    cosine = unit @ unit.T
    topic = torch.arange(corpus.WORDS) // corpus.GROUP
    same = (topic[:, None] == topic[None, :]) & ~torch.eye(corpus.WORDS, dtype=torch.bool)
    assert cosine[same].mean() > cosine[topic[:, None] != topic[None, :]].mean() + 0.3
    # TensorBoard has the held-out loss of each evaluation, at its step.
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(tmp_path / "out" / TENSORBOARD))
    events.Reload()
    heldout = [(e.step, e.value) for e in events.Scalars("eval/heldout_loss")]
    assert heldout == [(h["step"], pytest.approx(h["loss"], rel=1e-6)) for h in summary["heldout"]]


def test_resume_after_a_kill_repeats_the_run_exactly(workdir: Path, tmp_path: Path) -> None:
    full = train(CONFIG, str(workdir), tmp_path / "full")
    expected = final_tensors(tmp_path / "full")
    checkpoints = complete_checkpoints(tmp_path / "full" / "checkpoints")[:-1]
    states = {p: json.loads((p / STATE).read_text()) for p in checkpoints}
    mid_chunk = [p for p, s in states.items() if s["cursors"][0][1] > 0]
    boundary = [p for p, s in states.items() if s["epoch"] == 1 and s["cursors"][0] == [0, 0]]
    assert mid_chunk and boundary
    chosen = [mid_chunk[0], mid_chunk[-1], boundary[0]]
    assert any(states[p]["epoch"] == 1 for p in mid_chunk)  # a checkpoint in the second epoch

    for killed_at in chosen:  # as if killed right after writing this checkpoint
        out = tmp_path / f"resumed-{killed_at.name}"
        shutil.copytree(killed_at, out / "checkpoints" / killed_at.name)
        resumed = train(CONFIG, str(workdir), out)
        assert resumed["steps"] == full["steps"]
        assert resumed["heldout"] == full["heldout"]
        got = final_tensors(out)
        assert set(got) == set(expected)
        for name in expected:  # weights, AdamW moments and step counts
            assert torch.equal(expected[name], got[name]), (killed_at.name, name)
    # Training moved the weights, and the optimizer state is in the checkpoint.
    initial = MaskedLM(EncoderConfig.from_mlm(TINY, 35), seed=CONFIG.seed).token.weight
    assert not torch.equal(expected["input"], initial)
    assert torch.equal(expected["input"], expected["model.token.weight"])
    assert {"optim.token.weight.exp_avg", "optim.layers.0.qkv.bias.exp_avg_sq"} <= set(expected)


def test_fingerprint_guards_resume(workdir: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(CONFIG, epochs=1, checkpoint_every=0)
    out = tmp_path / "out"
    summary = train(config, str(workdir), out)
    assert json.loads((out / SUMMARY).read_text())["fingerprint"] == summary["fingerprint"]
    assert summary["inputs"] == {"buckets": "buckets-0", "vocab": "vocab-0"}
    other = dataclasses.replace(config, options=dataclasses.replace(TINY, mask_prob=0.2))
    with pytest.raises(RuntimeError, match="another training run"):
        train(other, str(workdir), out)


def test_learning_rate_warms_up_then_decays() -> None:
    config = MLMConfig(lr=1e-3, warmup_steps=10)
    assert learning_rate(config, 0, 0.0, 0.0) == pytest.approx(1e-4)
    assert learning_rate(config, 4, 0.01, 0.0) == pytest.approx(5e-4)
    assert learning_rate(config, 9, 0.02, 0.0) == pytest.approx(1e-3)
    # Decay runs from the progress at the end of warm-up (0.2 here) to the end of the run.
    assert learning_rate(config, 10, 0.2, 0.2) == pytest.approx(1e-3)
    assert learning_rate(config, 100, 0.6, 0.2) == pytest.approx(5e-4)
    assert learning_rate(config, 500, 1.0, 0.2) == 0.0
    no_warmup = dataclasses.replace(config, warmup_steps=0)
    assert learning_rate(no_warmup, 0, 0.5, 0.0) == pytest.approx(5e-4)


def test_optimizer_state_round_trips_through_named_tensors() -> None:
    def stepped(steps: int) -> tuple[MaskedLM, torch.optim.AdamW]:
        model = MaskedLM(EncoderConfig(vocab_size=20, width=8, layers=1, heads=2, ffn=8, max_len=8))
        opt = torch.optim.AdamW(decay_groups(model, 0.01), lr=1e-2)
        ids = torch.tensor([[2, 7, 4, 9, 3]])
        labels = torch.tensor([[-100, -100, 8, -100, -100]])
        for _ in range(steps):
            model(ids, torch.zeros_like(ids), None, labels).backward()
            opt.step()
            opt.zero_grad()
        return model, opt

    model, opt = stepped(3)
    tensors = optimizer_tensors(model, opt)
    fresh_model, fresh = stepped(0)
    fresh_model.load_state_dict(model.state_dict())
    restore_optimizer(fresh_model, fresh, tensors)
    for p, q in zip(model.parameters(), fresh_model.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], fresh.state[q][key])


@pytest.mark.slow
def test_torchrun_two_ranks(workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        f"--master-port={PORT}", "-m", "embedpipe.train", "--set", f"workdir={workdir}",
        "--set", "train.model=mlm", "--set", "train.epochs=2", "--set", "train.checkpoint_every=5",
        "--set", "train.log_every=5", "--set", "train.mlm.layers=1", "--set", "train.mlm.width=16",
        "--set", "train.mlm.heads=2", "--set", "train.mlm.ffn=32", "--set", "train.mlm.max_len=40",
        "--set", "train.mlm.max_tokens=160", "--set", "train.mlm.chunk_rows=60",
        "--set", "train.mlm.heldout=0.1", "--set", "train.mlm.lr=0.01", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["steps"] > 10
    assert summary["heldout"][-1]["loss"] < summary["heldout"][0]["loss"]
    tensors, state = load_checkpoint(out / "checkpoints" / summary["checkpoint"])
    assert state["world"] == 2 and state["epoch"] == 2 and state["step"] == summary["steps"]
    assert len(state["cursors"]) == 2
    assert torch.isfinite(tensors["input"]).all()
    # Only rank 0 logged; both ranks scored their held-out share (one figure per epoch).
    assert proc.stdout.count("evaluation after epoch 2") == 1
