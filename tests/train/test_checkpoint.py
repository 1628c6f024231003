"""Checkpoints count only when complete; the newest `keep` survive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embedpipe.train.checkpoint import (
    MARKER,
    STATE,
    WEIGHTS,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def save(root: Path, step: int, keep: int = 10) -> Path:
    tensors = {"input": torch.full((3, 2), float(step)), "output": torch.zeros(3, 2)}
    return save_checkpoint(root, step, tensors, {"epoch": 0, "fingerprint": "f"}, keep)


def test_roundtrip(tmp_path: Path) -> None:
    path = save(tmp_path, 7)
    assert path == tmp_path / "step-7"
    tensors, state = load_checkpoint(path)
    assert torch.equal(tensors["input"], torch.full((3, 2), 7.0))
    assert state == {"epoch": 0, "fingerprint": "f", "step": 7}


def test_incomplete_checkpoints_are_ignored(tmp_path: Path) -> None:
    save(tmp_path, 5)
    # A writer killed before its marker: a step directory without COMPLETE, and a temp dir.
    crashed = tmp_path / "step-9"
    crashed.mkdir()
    (crashed / STATE).write_text(json.dumps({"epoch": 3}))
    (crashed / WEIGHTS).write_bytes(b"partial")
    (tmp_path / "step-12.tmp-4242").mkdir()
    (tmp_path / "step-12.tmp-4242" / MARKER).write_text("")
    (tmp_path / "notes").mkdir()
    assert complete_checkpoints(tmp_path) == [tmp_path / "step-5"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-5"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(crashed)
    # The resumed run writes step-9 again over the debris.
    save(tmp_path, 9)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-9"
    assert load_checkpoint(tmp_path / "step-9")[1]["step"] == 9


def test_keep_prunes_oldest_complete(tmp_path: Path) -> None:
    for step in (3, 6, 9, 12, 15):
        save(tmp_path, step, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-12", "step-15"]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_numeric_order_not_lexical(tmp_path: Path) -> None:
    for step in (9, 10, 100):
        save(tmp_path, step)
    assert latest_checkpoint(tmp_path).name == "step-100"
    assert latest_checkpoint(tmp_path / "missing") is None
