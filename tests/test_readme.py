"""The README's transcripts: every one is marked, and a fresh run still looks the same."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "readme_transcripts.py"


def transcripts():
    spec = importlib.util.spec_from_file_location("readme_transcripts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


def test_every_transcript_marker_names_a_recipe_and_a_block() -> None:
    module = transcripts()
    found = module.blocks(module.README.read_text())
    assert set(found) == set(module.RECIPES)
    lines = module.README.read_text().splitlines()
    for name, (first, end) in found.items():
        assert lines[first].startswith("$ ") and first < end, name


def test_shape_masks_what_varies_between_runs_and_nothing_else() -> None:
    shape = transcripts().shape
    a = '02:27:55.312 | INFO | {"steps": 190, "seconds": 3.271, "words_per_sec": 1356060}'
    b = '18:02:58.310 | INFO | {"steps": 95, "seconds": 2.7, "words_per_sec": 1,617,639}'
    assert shape(a) == shape(b)
    assert shape("  dog        big, hat, bull") == shape("  dog        wore, devil")
    assert shape("  dog        big, hat") != shape("  cat        big, hat")
    assert shape("$ embedpipe run --config a.toml") != shape("$ embedpipe run --config b.toml")
    assert shape("0.9230  son") == shape("0.8974  prince")
    assert shape("Task run 'train-fb3' - layout") == shape("Task run 'train-0a1' - layout")
    assert shape("Task run 'train-fb3' - layout") != shape("Task run 'eval-fb3' - layout")


@pytest.mark.slow
@pytest.mark.spark
def test_a_fresh_run_matches_the_readme_transcripts() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
