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
    CheckpointError,
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
    assert state.pop("files")[WEIGHTS]["bytes"] == (path / WEIGHTS).stat().st_size
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
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
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


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedpipe.train.checkpoint import resume_checkpoint

    for step in (3, 5):
        save(tmp_path, step)
    # The recorded hash travels in state.json: editing it there would be caught as well.
    for step in (3, 5):
        path = tmp_path / f"step-{step}" / STATE
        path.write_text(json.dumps({**json.loads(path.read_text()), "world": 1}))
    weights = tmp_path / "step-5" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-40])  # COMPLETE is there, the data is not
    path, tensors, state = resume_checkpoint(tmp_path, "f", world=1)
    assert path == tmp_path / "step-3" and state["step"] == 3
    assert torch.equal(tensors["input"], torch.full((3, 2), 3.0))
    warning = capsys.readouterr().out
    assert str(weights) in warning and "bytes" in warning


def test_a_corrupt_checkpoint_names_its_file(tmp_path: Path) -> None:
    from embedpipe.train.checkpoint import CheckpointError, resume_checkpoint

    path = save(tmp_path, 4)
    weights = path / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{weights}: sha256 differs"):
        load_checkpoint(path)
    (path / STATE).write_text('{"step": 4, "epo')  # a truncated state file
    with pytest.raises(CheckpointError, match=f"{path / STATE}: unreadable checkpoint state"):
        load_checkpoint(path)
    # Nothing verifies: one error listing what was wrong, naming the path.
    with pytest.raises(CheckpointError, match=f"no checkpoint under {tmp_path} verifies"):
        resume_checkpoint(tmp_path, "f", world=1)


def test_a_checkpoint_records_its_weights_size_and_hash(tmp_path: Path) -> None:
    from embedpipe.artefacts.files import sha256_file

    path = save(tmp_path, 2)
    recorded = json.loads((path / STATE).read_text())["files"][WEIGHTS]
    assert recorded == {
        "bytes": (path / WEIGHTS).stat().st_size,
        "sha256": sha256_file(path / WEIGHTS),
    }
    assert not list(tmp_path.glob("*.tmp-*"))  # the staging directory was renamed away


def test_a_killed_writers_leftovers_go_at_the_next_save(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    save(tmp_path, 3)
    for name in (f"step-6.tmp-{proc.pid}", f"step-1.old-{proc.pid}", f"step-7.tmp-{os.getppid()}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / WEIGHTS).write_bytes(b"partial")
    save(tmp_path, 6, keep=1)
    # The dead writer's are gone; a live process's (the parent's) is not ours to remove.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-6", f"step-7.tmp-{os.getppid()}"]
