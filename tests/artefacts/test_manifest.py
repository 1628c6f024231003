"""The typed manifest: manifests published before it existed load and round-trip unchanged,
and a broken manifest fails naming its file and the field."""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embedpipe
from embedpipe.artefacts import (
    ArtefactError,
    ArtefactStore,
    FileEntry,
    Manifest,
    ManifestError,
    Metrics,
    Model,
    read_manifest,
    verify,
)
from embedpipe.evaluate import BENCHMARKS, score_rows

PUBLISHED = Path(__file__).parent / "data" / "published-0.1.0"
# A sgns artefact of the bundled sample (3000 lines), published by embedpipe 0.1.0 before
# the manifest was typed: only its manifest.json is kept.
GLOSSES = PUBLISHED / "glosses-manifest.json"
# A whole artefact of a toy vocabulary published by the same code, files included.
TINY = PUBLISHED / "tiny" / "v0001"


def glosses_json() -> dict[str, Any]:
    return json.loads(GLOSSES.read_text())


def test_a_published_manifest_round_trips_unchanged() -> None:
    raw = glosses_json()
    manifest = Manifest.from_json(raw, str(GLOSSES))
    assert manifest.to_json() == raw
    text = json.dumps(manifest.to_json(), sort_keys=True, indent=2) + "\n"
    assert text == GLOSSES.read_text()  # byte for byte, as the store writes it

    assert (manifest.name, manifest.version) == ("glosses", "v0001")
    assert manifest.model == Model("sgns", raw["model"]["hyperparameters"])
    assert manifest.files["vocab.parquet"] == FileEntry(
        raw["files"]["vocab.parquet"]["sha256"], 39706
    )
    assert manifest.extra == {}
    lineage = manifest.lineage
    assert lineage.stages is not None and list(lineage.stages) == [
        "buckets", "cooccur", "sequences", "tokens", "vocab",
    ]  # fmt: skip
    vocab = lineage.stages["vocab"]
    assert vocab.fingerprint == "148d3b7f310fa5c2" and vocab.inputs == {
        "tokens": "5ceb993ce7395e1b"
    }
    assert vocab.counts is not None and vocab.counts["vocab_size"] == 2594
    assert lineage.training is not None and lineage.training["world_size"] == 1
    assert lineage.python is not None and lineage.libraries is not None

    metrics = manifest.metrics
    assert metrics is not None and set(metrics.scores) == {b.name for b in BENCHMARKS}
    assert metrics.neighbours is not None
    assert metrics.neighbours["dog"][0] == ("beyond", 0.9668)
    rows = {row["benchmark"]: row for row in score_rows(metrics)}
    assert rows["wordsim353"]["value"] == pytest.approx(0.0654904741242549)
    assert rows["wordsim353"]["coverage"] == pytest.approx(88 / 353)
    assert rows["simlex999"]["coverage"] == pytest.approx(154 / 999)


def test_an_artefact_published_before_the_schema_verifies_and_loads(tmp_path: Path) -> None:
    copied = tmp_path / "store" / "tiny" / "v0001"
    shutil.copytree(TINY, copied)
    manifest = verify(copied)
    assert manifest == read_manifest(copied)
    assert manifest.to_json() == json.loads((TINY / "manifest.json").read_text())
    assert manifest.metrics is not None
    assert math.isnan(manifest.metrics.scores["wordsim353"]["spearman"])  # NaN survives
    emb = embedpipe.load("tiny", version=1, store=tmp_path / "store")
    assert emb.manifest == manifest and emb.vocab[5:7] == ["w0", "w1"]
    assert emb.tokenize_config().lowercase is True
    assert emb.vectors.shape == (45, 8) and np.isfinite(emb.vectors).all()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting the dotted field `path` of manifest JSON to `value`."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.pop(key)


BROKEN = [
    (_drop("name"), "field 'name' is missing"),
    (_drop("files"), "field 'files' is missing"),
    (_set("version", 1), "field 'version' must be a string, not a number"),
    (_set("files", []), "field 'files' must be an object, not an array"),
    (
        _set("files/vocab.parquet/sha256", None),
        "field 'files.vocab.parquet.sha256' must be a string, not null",
    ),
    (_set("files/vocab.parquet/bytes", "1"), "field 'files.vocab.parquet.bytes' must be an integer"),
    (_set("files", {"../x": {"sha256": "0", "bytes": 1}}), r"field 'files' lists '\.\./x': invalid file name '\.\.'"),
    (_set("model/kind", None), "field 'model.kind' must be a string, not null"),
    (_set("model/layers", 2), "unknown field 'model.layers'"),
    (_set("metrics/wordsim353/spearman", "high"), "field 'metrics.wordsim353.spearman' must be a number, not a string"),
    (_set("metrics/analogy", 0.5), "field 'metrics.analogy' must be an object, not a number"),
    (_set("metrics/neighbours/dog", [["cat"]]), r"field 'metrics.neighbours.dog\[0\]' must be a \[token, cosine\] pair"),
    (_set("stages/vocab/counts", [1]), "field 'stages.vocab.counts' must be an object or null, not an array"),
    (_set("stages/vocab/seconds", "fast"), "field 'stages.vocab.seconds' must be a number or null"),
    (_set("libraries/torch", 2), "field 'libraries.torch' must be a string or null, not a number"),
    (_set("training", "done"), "field 'training' must be an object or null, not a string"),
]  # fmt: skip


@pytest.mark.parametrize("mutate, message", BROKEN)
def test_a_broken_manifest_names_its_file_and_the_field(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = glosses_json()
    mutate(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(data, "somewhere/manifest.json")

    broken = tmp_path / "v0001"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=rf"^{tmp_path}/v0001/manifest.json: .*{message}"):
        read_manifest(broken)


def test_a_manifest_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match=r"manifest.json does not hold a JSON object"):
        read_manifest(tmp_path)


def test_publish_checks_the_details_before_claiming_a_version(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "store")
    src = tmp_path / "a.bin"
    src.write_bytes(b"a")
    bad = {"metrics": {"wordsim353": {"spearman": "high"}}}
    with pytest.raises(ManifestError, match=r"manifest for 'emb': field 'metrics.wordsim353"):
        store.publish("emb", {"a.bin": src}, bad)
    with pytest.raises(ArtefactError, match="name, version are set by the store"):
        store.publish("emb", {"a.bin": src}, {"version": "v0009", "name": "x"})
    assert not (tmp_path / "store" / "emb").exists()

    # Content of other tools' artefacts is kept as it came, next to the typed sections.
    details = {"model": {"kind": "custom"}, "note": {"by": "hand"}}
    manifest = read_manifest(store.publish("emb", {"a.bin": src}, details))
    assert manifest.model == Model("custom") and manifest.extra == {"note": {"by": "hand"}}
    assert manifest.metrics is None and manifest.lineage.stages is None
    assert {k: v for k, v in manifest.to_json().items() if k in details} == details


def test_metrics_to_json_is_the_layout_evaluation_writes() -> None:
    raw = copy.deepcopy(glosses_json()["metrics"])
    metrics = Metrics.from_json(raw, "test")
    assert metrics.to_json() == raw
    assert Metrics.from_json({"mlm": {"heldout_loss": 2.5}}, "t").mlm == {"heldout_loss": 2.5}
