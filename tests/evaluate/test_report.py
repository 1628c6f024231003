"""The artefact report: Markdown, valid PNG plots, every version in the evaluation table."""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from embedpipe.artefacts import ArtefactStore, read_manifest
from embedpipe.artefacts.store import filesystem
from embedpipe.evaluate import BENCHMARKS
from embedpipe.evaluate.report import (
    INLINE_WIDTH,
    inline_report,
    read_training_metrics,
    score_title,
    write_report,
)
from embedpipe.extras import MissingExtraError
from embedpipe.schemas import SPECIAL_TOKENS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_WORDS = 320  # more than the 300 projected


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def words() -> list[str]:
    return [f"w{i:03d}" for i in range(N_WORDS)]


def publish_version(store: ArtefactStore, tmp_path: Path, i: int) -> Path | str:
    """Version i of "emb": 5 specials + N_WORDS words (counts descending), metrics, a loss log."""
    src = tmp_path / f"src{i}"
    src.mkdir()
    rng = np.random.default_rng(i)
    tokens = [*SPECIAL_TOKENS, *words()]
    vectors = rng.standard_normal((len(tokens), 8)).astype(np.float32)
    save_file({"vectors": vectors}, src / "vectors.safetensors")
    counts = [0] * len(SPECIAL_TOKENS) + list(range(10 * N_WORDS, 0, -10))
    vocab = pa.table(
        {
            "id": pa.array(range(len(tokens)), pa.int32()),
            "token": tokens,
            "count": pa.array(counts, pa.int64()),
        }
    )
    pq.write_table(vocab, src / "vocab.parquet")
    records = [
        {"step": s, "epoch": 0, "loss": 4.0 / s, "lr": 0.025 * (1 - s / 60), "words_per_sec": 1000}
        for s in range(10, 60, 10)
    ]
    (src / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest: dict[str, Any] = {
        "model": {"kind": "sgns", "hyperparameters": {"dim": 8, "epochs": i}},
        "metrics": {
            "wordsim353": {"spearman": 0.1 * i, "oov_rate": 0.1, "pairs": 353, "found": 318},
            "simlex999": {"spearman": 0.05 * i, "oov_rate": 0.2, "pairs": 999, "found": 799},
            "analogy": {"accuracy": 0.01 * i, "coverage": 0.3},
            "neighbours": {"w000": [["w001", 0.9], ["w002", 0.8]]},
        },
        "stages": {"vocab": {"fingerprint": f"fp{i}", "counts": {"vocab_size": len(tokens)}}},
        "training": {"steps": 50, "seconds": 1.5, "words_per_sec": 1000},
    }
    files = {n: src / n for n in ("vectors.safetensors", "vocab.parquet", "metrics.jsonl")}
    return store.publish("emb", files, manifest)


def test_report_writes_markdown_and_valid_plots(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "store")
    dirs = [publish_version(store, tmp_path, i) for i in (1, 2, 3)]
    history = [read_manifest(d) for d in dirs]  # includes this version: it is ignored there

    report = write_report(dirs[1], tmp_path / "out", history=history)
    assert report == tmp_path / "out" / "report.md"
    text = report.read_text(encoding="utf-8")
    for plot in ("loss.png", "scores.png", "projection.png"):
        path = tmp_path / "out" / plot
        width, height = png_size(path)
        assert width > 100 and height > 100 and path.stat().st_size > 1000
        assert f"]({plot})" in text

    assert text.startswith("# Embedding report: emb v0002\n")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0] == (
        "| version | created | WordSim-353 ρ | SimLex-999 ρ | Google analogy acc. "
        "| WordSim-353 coverage | SimLex-999 coverage | Google analogy coverage | vocab | dim |"
    )
    rows = {cells[0]: cells for cells in (line.strip("| ").split(" | ") for line in table[1:])}
    assert {"v0001", "**v0002** (this)", "v0003"} <= set(rows)
    assert rows["v0001"][2:5] == ["0.1000", "0.0500", "0.0100"]
    assert rows["**v0002** (this)"][2:5] == ["0.2000", "0.1000", "0.0200"]
    assert rows["v0003"][2:10] == [
        *("0.3000", "0.1500", "0.0300"),  # scores
        *("0.9000", "0.8000", "0.3000"),  # coverage: 1 - OOV rate, the analogies answered
        *("325", "8"),
    ]
    assert sum(1 for r in rows if "v000" in r) == 3  # each version once

    assert "5 logged steps; final loss 0.0800 at step 50." in text
    assert "## Changes since v0001" in text
    assert "hyper-parameters:" in text and "epochs" in text
    assert "| w000 | w001 (0.90), w002 (0.80) |" in text
    assert "the 300 most frequent words" in text
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_report_without_history_or_training_log(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    tokens = [*SPECIAL_TOKENS, "a", "b", "c", "d"]
    save_file({"vectors": np.eye(9, 3, dtype=np.float32)}, src / "vectors.safetensors")
    pq.write_table(
        pa.table({"id": pa.array(range(9), pa.int32()), "token": tokens, "count": [0] * 9}),
        src / "vocab.parquet",
    )
    version = store.publish(
        "tiny", {n: src / n for n in ("vectors.safetensors", "vocab.parquet")}, {}
    )
    text = write_report(version, tmp_path / "out").read_text()
    assert "No metrics.jsonl in the artefact" in text
    assert "| **v0001** (this) |" in text
    assert "Changes since" not in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["projection.png", "report.md"]
    png_size(tmp_path / "out" / "projection.png")


def test_training_metrics_keep_the_resumed_run_for_repeated_steps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 20, "loss": 1.5}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    assert read_training_metrics(path) == [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 1.5}]
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_training_metrics(path)


def test_report_of_an_artefact_in_a_memory_store(tmp_path: Path) -> None:
    """The report reads a remote artefact (its metrics.jsonl included) like a local one."""
    url = f"memory://embedpipe-{uuid.uuid4().hex}/store"
    store = ArtefactStore(url)
    dirs = [publish_version(store, tmp_path, i) for i in (1, 2)]
    assert dirs[1] == f"{url}/emb/v0002"
    history = store.manifests("emb")
    assert [m.version for m in history] == ["v0001", "v0002"]
    text = write_report(store.resolve("emb"), tmp_path / "out", history=history).read_text()
    assert text.startswith("# Embedding report: emb v0002\n")
    assert "5 logged steps; final loss 0.0800 at step 50." in text
    assert "## Changes since v0001" in text
    for plot in ("loss.png", "scores.png", "projection.png"):
        png_size(tmp_path / "out" / plot)
    fs, path = filesystem(url)
    fs.rm(path, recursive=True)


def test_report_shows_every_declared_benchmark(tmp_path: Path) -> None:
    """A benchmark of the registry has its score and coverage columns, and a line in the plot."""
    store = ArtefactStore(tmp_path / "store")
    dirs = [publish_version(store, tmp_path, i) for i in (1, 2)]
    text = write_report(dirs[1], tmp_path / "out", history=store.manifests("emb")).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| version"))
    for bench in BENCHMARKS:
        assert f"| {score_title(bench)} |" in header
        assert f"| {bench.title} coverage |" in header
        assert f"{bench.name}.{bench.metric}" in text  # in the diff from v0001


def test_inline_report_carries_its_pictures(tmp_path: Path) -> None:
    """The Markdown a remote UI shows: each plot inside it, downscaled, in a small budget."""
    store = ArtefactStore(tmp_path / "store")
    dirs = [publish_version(store, tmp_path, i) for i in (1, 2)]
    report = write_report(dirs[1], tmp_path / "out", history=store.manifests("emb"))
    markdown = inline_report(report)
    uris = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert len(uris) == 3 and ".png)" not in markdown
    for uri in uris:
        png = tmp_path / "inline.png"
        png.write_bytes(base64.b64decode(uri))
        width, height = png_size(png)
        assert 300 < width <= INLINE_WIDTH and height > 200
    size = len(markdown.encode())
    assert size < 400_000 and size < sum(p.stat().st_size for p in (tmp_path / "out").glob("*.png"))
    assert markdown.replace(uris[0], "").startswith(report.read_text().split("![")[0])

    # Past the budget, a picture gives way to a line naming its file.
    small = inline_report(report, budget=len(report.read_text().encode()) + len(uris[0]) + 100)
    assert small.count("data:image/png") == 1 and "see scores.png by the report" in small

    (tmp_path / "out" / "projection.png").unlink()
    with pytest.raises(FileNotFoundError, match="projection.png"):
        inline_report(report)


def test_report_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtefactStore(tmp_path / "store")
    version = publish_version(store, tmp_path, 1)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as in a core install
    with pytest.raises(
        MissingExtraError, match=r"the report's plots needs matplotlib, .*embedpipe\[pipeline\]"
    ):
        write_report(version, tmp_path / "out")
    assert not (tmp_path / "out" / "report.md").exists()
