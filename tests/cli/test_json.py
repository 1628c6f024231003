"""`--json` on every read command: one JSON document on stdout, the same data as the text."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from embedpipe.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    main(argv)
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(run([*argv, "--json"], capsys))


def test_list(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    at = ["--store", str(store)]
    main(["artefacts", "alias", "tiny", "production", "v0001", *at])
    capsys.readouterr()
    rows = run_json(["artefacts", "list", *at], capsys)
    assert rows == [
        {"name": "tiny", "version": "v0001", "aliases": ["production"]},
        {"name": "tiny", "version": "v0002", "aliases": ["latest"]},
    ]
    lines = run(["artefacts", "list", *at], capsys).splitlines()
    assert lines == [f"{r['name']}\t{r['version']}\t{','.join(r['aliases'])}" for r in rows]


def test_show_is_the_manifest_either_way(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    at = ["--store", str(store)]
    shown = run_json(["artefacts", "show", "tiny", "--version", "v0001", *at], capsys)
    on_disk = json.loads((store / "tiny" / "v0001" / "manifest.json").read_text())
    assert shown == on_disk and shown["version"] == "v0001"
    assert (
        json.loads(run(["artefacts", "show", "tiny", "--version", "v0001", *at], capsys)) == shown
    )


def test_verify(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    at = ["--store", str(store)]
    result = run_json(["artefacts", "verify", "tiny", *at], capsys)
    assert result == {
        "path": str(store / "tiny" / "v0002"),
        "name": "tiny",
        "version": "v0002",
        "files": ["vectors.safetensors", "vocab.parquet"],
        "verified": True,
    }
    text = run(["artefacts", "verify", "tiny", *at], capsys)
    assert text == f"{result['path']}: every file matches its sha256\n"


def test_diff(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    at = ["--store", str(store)]
    diff = run_json(["artefacts", "diff", "tiny", "v0001", "v0002", *at], capsys)
    assert (diff["a"]["version"], diff["b"]["version"]) == ("v0001", "v0002")
    text = run(["artefacts", "diff", "tiny", "v0001", "v0002", *at], capsys)
    assert text.splitlines()[0] == "tiny v0001 -> tiny v0002"
    assert "vectors" not in diff  # manifests only, unless asked


def test_diff_vectors(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    at = ["--store", str(store), "--vectors"]
    diff = run_json(["artefacts", "diff", "tiny", "v0001", "v0002", *at], capsys)
    moved = diff["vectors"]
    words = pq.read_table(store / "tiny" / "v0002" / "vocab.parquet").num_rows - 5
    assert moved["added"] + moved["shared"] == words and moved["shared"] > 0
    assert -1.0 <= moved["cosine"]["p5"] <= moved["cosine"]["median"] <= 1.0
    text = run(["artefacts", "diff", "tiny", "v0001", "v0002", *at], capsys)
    assert re.search(rf"median cosine +{moved['cosine']['median']:.4f}\n", text), text


def test_export(
    store: Path, tmp_path: Path, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.parquet"
    argv = ["artefacts", "export", "tiny", "--format", "parquet", "--out", str(out)]
    result = run_json([*argv, "--store", str(store)], capsys)
    assert result == {
        "path": str(out),
        "format": "parquet",
        "artefact": str(store / "tiny" / "v0002"),
    }
    assert pq.read_table(out).column("token").to_pylist() == words


def test_neighbors(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["neighbors", "tiny", "King", "-k", "3", "--store", str(store)]
    result = run_json(argv, capsys)
    assert result["word"] == "king" and result["artefact"] == str(store / "tiny" / "v0002")
    found = result["neighbours"]
    assert {n["token"] for n in found[:2]} == {"prince", "queen"}
    assert [n["score"] for n in found] == sorted((n["score"] for n in found), reverse=True)
    lines = run(argv, capsys).splitlines()
    assert lines == [f"{n['score']:.4f}  {n['token']}" for n in found]


def test_evaluate(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", "tiny", "--store", str(store)]
    result = run_json(argv, capsys)
    assert result["wordsim353"]["pairs"] == 353
    assert json.loads(run(argv, capsys)) == result


def test_config_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The resolved config: file, then overrides, then defaults; credentials masked; each
    text line, but those of tables with dotted keys (spark.conf), a valid --set."""
    path = tmp_path / "run.toml"
    path.write_text(
        '[vocab]\nmin_count = 3\n[spark.conf]\n"spark.hadoop.fs.s3a.secret.key" = "hunter2"\n'
    )
    argv = ["config", "show", "--config", str(path), "--set", "train.epochs=7"]
    data = run_json(argv, capsys)
    assert data["vocab"]["min_count"] == 3 and data["train"]["epochs"] == 7
    assert data["spark"]["conf"] == {"spark.hadoop.fs.s3a.secret.key": "***"}
    lines = run(argv, capsys).splitlines()
    assert "vocab.min_count = 3" in lines and "train.epochs = 7" in lines
    assert 'spark.conf.spark.hadoop.fs.s3a.secret.key = "***"' in lines
    assert "hunter2" not in "\n".join(lines)
    from embedpipe.config import load_config

    overrides = [line.replace(" = ", "=", 1) for line in lines if not line.startswith("spark.conf")]
    assert load_config(None, overrides).train.epochs == 7
