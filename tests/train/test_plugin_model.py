"""A model registered from outside the package (`tiny_model`, listed in `train.plugins`)
runs through the real loop: config section, exact resume, a 2-rank torchrun."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from embedpipe.config import ConfigError, RunConfig, TrainConfig, from_dict, load_config, to_dict
from embedpipe.train.checkpoint import (
    STATE,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
)
from embedpipe.train.loop import SUMMARY, train

HERE = Path(__file__).resolve().parent
PLUGIN = ['train.plugins=["tiny_model"]', "train.model=tiny"]


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("tiny_model")


def tiny_config(tiny: ModuleType, **shared: object) -> TrainConfig:
    return TrainConfig(
        model="tiny", plugins=("tiny_model",), options=tiny.TinyConfig(dim=3, batch_size=16),
        **{"epochs": 2, "checkpoint_every": 23, "keep_checkpoints": 100, "log_every": 4,
           "threads": 1, **shared},
    )  # fmt: skip


def test_its_section_parses_and_round_trips(tiny: ModuleType) -> None:
    config = load_config(None, [*PLUGIN, "train.tiny.dim=7", "train.epochs=3"])
    assert config.train.options == tiny.TinyConfig(dim=7)
    table = to_dict(config)["train"]
    assert table["tiny"] == {"dim": 7, "lr": 0.05, "batch_size": 32}
    assert "options" not in table and table["plugins"] == ["tiny_model"]
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(config)))) == config
    with pytest.raises(ConfigError, match="train.sgns is set but train.model is 'tiny'"):
        load_config(None, [*PLUGIN, "train.sgns.window=3"])
    with pytest.raises(ConfigError, match="unknown config key.*train.tiny.window"):
        load_config(None, [*PLUGIN, "train.tiny.window=3"])
    with pytest.raises(ConfigError, match="not a registered model"):
        load_config(None, ["train.model=tiny_unknown"])


def test_resume_after_a_kill_repeats_the_run_exactly(
    tiny: ModuleType, workdir: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny)
    full = train(config, str(workdir), tmp_path / "full")
    expected = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))[0]["input"]
    checkpoints = complete_checkpoints(tmp_path / "full" / "checkpoints")[:-1]
    states = [json.loads((p / STATE).read_text()) for p in checkpoints]
    assert any(s["cursors"][0][1] >= 1 for s in states) and len(checkpoints) >= 3
    for killed_at in checkpoints:
        out = tmp_path / f"resumed-{killed_at.name}"
        shutil.copytree(killed_at, out / "checkpoints" / killed_at.name)
        resumed = train(config, str(workdir), out)
        assert (resumed["steps"], resumed["moves"]) == (full["steps"], full["moves"])
        got = load_checkpoint(latest_checkpoint(out / "checkpoints"))[0]["input"]
        assert torch.equal(expected, got), killed_at.name
    # The rows moved towards their targets.
    start = torch.nn.init.normal_(
        torch.empty_like(expected), generator=torch.Generator().manual_seed(1)
    )
    target = tiny.targets(len(expected), 3, 1)
    assert (expected - target).norm() < 0.5 * (start - target).norm()
    assert full["moves"] == 2 * full["corpus_words"]


@pytest.mark.slow
def test_torchrun_two_ranks(tiny: ModuleType, workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "embedpipe.train", "--set", f"workdir={workdir}", "--set", "train.epochs=2",
        *(arg for item in PLUGIN for arg in ("--set", item)),
        "--set", "train.tiny.dim=3", "--set", "train.checkpoint_every=4", "--out", str(out),
    ]  # fmt: skip
    path = os.pathsep.join([str(HERE), *sys.path])  # where the workers find tiny_model
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["model"] == "tiny"
    tensors, state = load_checkpoint(out / "checkpoints" / summary["checkpoint"])
    assert state["world"] == 2 and state["epoch"] == 2 and state["step"] == summary["steps"]
    # Rank 0's moves count its own tokens; both ranks' tokens moved the one shared table.
    assert 0 < state["moves"] < 2 * summary["corpus_words"]
    vectors = tensors["input"]
    target = tiny.targets(len(vectors), 3, 1)
    start = torch.nn.init.normal_(
        torch.empty_like(vectors), generator=torch.Generator().manual_seed(1)
    )
    assert (vectors - target).norm() < 0.5 * (start - target).norm()
