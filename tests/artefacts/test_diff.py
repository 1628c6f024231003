"""diff_manifests and format_diff on two hand-made manifests shaped like publish_training's."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from embedpipe.artefacts import ArtefactStore, Manifest, diff_manifests, format_diff, read_manifest
from embedpipe.evaluate import BENCHMARKS


def manifest_json() -> dict[str, Any]:
    return {
        "name": "emb",
        "version": "v0001",
        "created": "2026-01-01T00:00:00+00:00",
        "model": {"kind": "sgns", "hyperparameters": {"dim": 100, "window": 5, "lr": 0.025}},
        "run_config": {
            "name": "emb",
            "vocab": {"min_count": 5, "max_size": None},
            "corpus": {"paths": ["a.txt"]},
            "train": {"dim": 100, "window": 5, "lr": 0.025},
        },
        "stages": {
            "tokens": {
                "fingerprint": "aaaa",
                "config": {"lowercase": True},
                "counts": {"lines": 10},
            },
            "vocab": {
                "fingerprint": "bbbb",
                "config": {"min_count": 5},
                "counts": {"vocab_size": 1000, "tokens": 50000},
            },
            "buckets": {
                "fingerprint": "cccc",
                "counts": {"boundaries": [4, 8], "buckets": [{"bucket": 0, "sequences": 3}]},
            },
        },
        "training": {"steps": 100, "seconds": 10.0, "words_per_sec": 5000, "world_size": 2},
        "metrics": {
            "wordsim353": {"spearman": 0.30, "oov_rate": 0.15, "pairs": 353},
            "simlex999": {"spearman": math.nan, "oov_rate": 0.1},
            "analogy": {"accuracy": 0.05, "coverage": 0.25},
        },
        "files": {
            "vectors.safetensors": {"sha256": "x", "bytes": 4000},
            "vocab.parquet": {"sha256": "y", "bytes": 500},
        },
        "code_version": {"package": "0.1.0", "source": "abc", "git": None},
        "libraries": {"torch": "2.13.0", "numpy": "2.4.6"},
    }


def newer_json() -> dict[str, Any]:
    b = copy.deepcopy(manifest_json())
    b["version"] = "v0002"
    b["model"]["hyperparameters"].update(dim=200, negatives=10)
    b["run_config"]["train"].update(dim=200, negatives=10)
    b["run_config"]["vocab"]["min_count"] = 3
    b["stages"]["vocab"].update(fingerprint="dddd", config={"min_count": 3})
    b["stages"]["vocab"]["counts"]["vocab_size"] = 1500
    b["stages"]["buckets"]["counts"]["buckets"][0]["sequences"] = 4  # bulky lists: ignored
    b["metrics"]["wordsim353"]["spearman"] = 0.35
    b["metrics"]["simlex999"]["spearman"] = 0.2
    b["metrics"]["analogy"]["accuracy"] = 0.04
    b["files"]["vectors.safetensors"]["bytes"] = 8000
    b["training"].update(steps=150, seconds=12.5)
    b["code_version"]["source"] = "def"
    del b["stages"]["tokens"]
    return b


def manifest() -> Manifest:
    return Manifest.from_json(manifest_json())


def newer() -> Manifest:
    return Manifest.from_json(newer_json())


def test_diff_reports_what_changed_with_deltas() -> None:
    d = diff_manifests(manifest(), newer())
    assert d["a"] == {"name": "emb", "version": "v0001", "created": "2026-01-01T00:00:00+00:00"}
    assert d["b"]["version"] == "v0002"
    assert d["hyperparameters"] == {
        "dim": {"a": 100, "b": 200, "delta": 100},
        "negatives": {"a": None, "b": 10},
    }
    # The train section is reported once, as hyper-parameters.
    assert d["config"] == {"vocab.min_count": {"a": 5, "b": 3, "delta": -2}}
    assert d["stages"] == {
        "tokens": {"status": "removed"},
        "vocab": {
            "fingerprint": {"a": "bbbb", "b": "dddd"},
            "counts": {"vocab_size": {"a": 1000, "b": 1500, "delta": 500}},
            "config": {"min_count": {"a": 5, "b": 3, "delta": -2}},
        },
    }
    assert d["stages_unchanged"] == ["buckets"]

    metrics = d["metrics"]
    assert metrics["wordsim353.spearman"]["delta"] == pytest.approx(0.05)
    assert metrics["wordsim353.oov_rate"] == {"a": 0.15, "b": 0.15, "delta": 0.0}
    assert math.isnan(metrics["simlex999.spearman"]["a"])
    assert "delta" not in metrics["simlex999.spearman"]  # no delta from NaN
    assert metrics["analogy.accuracy"]["delta"] == pytest.approx(-0.01)
    assert metrics["analogy.coverage"]["delta"] == 0.0
    assert "analogy.semantic_accuracy" not in metrics  # absent on both sides

    assert d["sizes"]["bytes.vectors.safetensors"] == {"a": 4000, "b": 8000, "delta": 4000}
    assert d["sizes"]["bytes.total"] == {"a": 4500, "b": 8500, "delta": 4000}
    assert d["sizes"]["vocab_size"] == {"a": 1000, "b": 1500, "delta": 500}
    assert d["sizes"]["dim"] == {"a": 100, "b": 200, "delta": 100}
    assert d["training"]["steps"] == {"a": 100, "b": 150, "delta": 50}
    assert d["training"]["seconds"]["delta"] == pytest.approx(2.5)
    assert d["training"]["world_size"]["delta"] == 0
    assert d["code"] == {"source": {"a": "abc", "b": "def"}}
    assert d["libraries"] == {}
    json.dumps(d)  # JSON-ready for `--json` output


def test_diff_of_identical_manifests_is_empty() -> None:
    d = diff_manifests(manifest(), manifest())
    assert d["hyperparameters"] == d["config"] == d["stages"] == d["code"] == {}
    assert d["stages_unchanged"] == ["buckets", "tokens", "vocab"]
    assert all(e.get("delta", 0) == 0 for e in d["metrics"].values())
    text = format_diff(d)
    assert "hyper-parameters: unchanged" in text and "run config: unchanged" in text


def test_diff_of_sparse_manifests() -> None:
    """Manifests of artefacts not made by the pipeline (no model, stages or metrics)."""
    created = "2026-01-01T00:00:00+00:00"
    a, b = (Manifest("x", v, created, files={}) for v in ("v0001", "v0002"))
    d = diff_manifests(a, b)
    assert d["metrics"] == d["stages"] == d["training"] == {}
    assert d["hyperparameters"] == {}
    assert "corpus stages: none recorded" in format_diff(d)


def test_format_diff_renders_a_terminal_table() -> None:
    text = format_diff(diff_manifests(manifest(), newer()))
    lines = text.splitlines()
    assert lines[0] == "emb v0001 -> emb v0002"
    row = next(line for line in lines if line.strip().startswith("wordsim353.spearman"))
    assert row.split() == ["wordsim353.spearman", "0.3", "0.35", "+0.0500"]
    row = next(line for line in lines if line.strip().startswith("simlex999.spearman"))
    assert row.split() == ["simlex999.spearman", "nan", "0.2"]
    row = next(line for line in lines if line.strip().startswith("dim") and "+100" in line)
    assert row.split()[:4] == ["dim", "100", "200", "+100"]
    assert "  vocab: fingerprint bbbb -> dddd" in lines
    assert "  tokens: removed" in lines
    assert "corpus stages unchanged: buckets" in lines
    row = next(line for line in lines if "bytes.vectors.safetensors" in line)
    assert row.split() == ["bytes.vectors.safetensors", "4000", "8000", "+4000", "(+100.0%)"]
    assert any(line.split()[:3] == ["code.source", "abc", "def"] for line in lines)
    assert text.endswith("\n")


def test_diff_of_published_manifests(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "store")
    small, large = tmp_path / "s.bin", tmp_path / "l.bin"
    small.write_bytes(b"x" * 10)
    large.write_bytes(b"x" * 25)
    store.publish("emb", {"vectors.safetensors": small}, {"metrics": manifest_json()["metrics"]})
    store.publish("emb", {"vectors.safetensors": large}, {"metrics": newer_json()["metrics"]})
    a, b = (read_manifest(store.resolve("emb", v)) for v in (1, 2))
    d = diff_manifests(a, b)
    assert d["sizes"]["bytes.vectors.safetensors"] == {"a": 10, "b": 25, "delta": 15}
    assert d["metrics"]["wordsim353.spearman"]["b"] == 0.35


def test_diff_compares_every_declared_benchmark() -> None:
    """Each benchmark of the registry, with every field it declares, is diffed."""
    a, b = manifest_json(), newer_json()
    for i, side in enumerate((a, b)):
        side["metrics"] = {
            bench.name: {field: 0.25 * (i + 1) for field in bench.fields} for bench in BENCHMARKS
        }
    d = diff_manifests(Manifest.from_json(a), Manifest.from_json(b))
    expected = [f"{bench.name}.{field}" for bench in BENCHMARKS for field in bench.fields]
    assert list(d["metrics"]) == expected
    assert all(entry == {"a": 0.25, "b": 0.5, "delta": 0.25} for entry in d["metrics"].values())
    text = format_diff(d)
    assert all(any(line.split()[:1] == [key] for line in text.splitlines()) for key in expected)
