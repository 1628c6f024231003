"""The CUDA paths, run by `bench/gpu_check.sh` on a machine with a GPU (skipped elsewhere).

Each compares the GPU against the CPU on the same inputs, or trains a tiny run through the
real loop on the GPU and checks what it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from embedpipe.config import TrainConfig
from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint
from embedpipe.train.glove import glove_step
from embedpipe.train.loop import SUMMARY, train
from embedpipe.train.registry import get_model
from embedpipe.train.sgns import SkipGram

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]
CUDA = torch.device("cuda")


def test_skipgram_step_on_the_gpu_equals_the_cpu_kernel(kit: SimpleNamespace) -> None:
    batch = kit.window_fixture(seed=3)
    model = SkipGram(30, 6, seed=1)
    w_in, w_out = (t.float() for t in kit.tables())
    cpu = model.step(w_in, w_out, batch, 0.0)
    on_gpu = type(batch)(*(t.to(CUDA) for t in batch))
    gpu = model.step(w_in.to(CUDA), w_out.to(CUDA), on_gpu, 0.0)
    for x, y in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(x.double(), y.cpu().double(), rtol=1e-4, atol=1e-5)


def test_glove_step_on_the_gpu_equals_the_same_step_on_the_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    tables = [torch.randn(20, 8, generator=g) * 0.1, torch.randn(20, 8, generator=g) * 0.1,
              torch.zeros(20, 1), torch.zeros(20, 1)]  # fmt: skip
    sums = [torch.ones_like(t) for t in tables]
    rows = torch.randint(0, 20, (64,), generator=g).numpy()
    cols = torch.randint(0, 20, (64,), generator=g).numpy()
    x = (torch.rand(64, generator=g) * 50 + 1).numpy()
    from embedpipe.train.glove import batch_adagrad_

    work_cpu = [t.clone() for t in tables + sums]
    batch_adagrad_(work_cpu, rows, cols, x, 10.0, 0.75, 0.05)
    result = glove_step([t.to(CUDA) for t in tables], [s.to(CUDA) for s in sums],
                        rows, cols, x, 10.0, 0.75, 0.05)  # fmt: skip
    assert result.changes[0].device.type == "cuda" and result.loss > 0
    # The step returns changes on the touched rows only: compare them row by row.
    for k, (rows_k, change) in enumerate(zip(result.rows, result.changes, strict=True)):
        expected = work_cpu[k][rows_k.cpu()] - (tables + sums)[k][rows_k.cpu()]
        torch.testing.assert_close(change.cpu(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model", ["sgns", "cbow"])
def test_word2vec_trains_through_the_loop_on_the_gpu(
    workdir: Path, tmp_path: Path, model: str
) -> None:
    config = TrainConfig(
        model=model, epochs=2, log_every=1000, threads=1,
        options=get_model(model).section(dim=8, window=3, negatives=3, batch_size=48),
    )  # fmt: skip
    summary = train(config, str(workdir), tmp_path / "out")
    assert json.loads((tmp_path / "out" / SUMMARY).read_text())["device"] == "cuda"
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path / "out" / "checkpoints"))
    assert summary["steps"] > 0 and torch.isfinite(tensors["input"]).all()
    untrained = SkipGram(len(tensors["input"]), 8, seed=1).input.weight
    assert not torch.equal(tensors["input"], untrained)
    # The same run again gives the same tables: the GPU path is deterministic for one rank.
    again = train(config, str(workdir), tmp_path / "again")
    assert again["steps"] == summary["steps"]
    other, _ = load_checkpoint(latest_checkpoint(tmp_path / "again" / "checkpoints"))
    torch.testing.assert_close(other["input"], tensors["input"], rtol=1e-5, atol=1e-6)


def test_layout_auto_runs_one_process_per_gpu() -> None:
    from embedpipe.config import load_config
    from embedpipe.train.layout import resolve_layout

    train_config = resolve_layout(load_config(None)).train
    assert train_config.nproc == torch.cuda.device_count()
