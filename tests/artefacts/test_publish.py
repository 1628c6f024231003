"""publish_training on a real (tiny, in-process) training run: every manifest field the
artefact promises, into a store given by URL."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

import embedpipe
from embedpipe.artefacts import ArtefactStore, FileEntry, Model, StageRecord, verify
from embedpipe.artefacts.metadata import FORMAT, read_metadata
from embedpipe.artefacts.publish import LIBRARIES, publish_training
from embedpipe.artefacts.store import filesystem
from embedpipe.config import RunConfig, SparkConfig, TrainConfig, to_dict
from embedpipe.corpus.registry import TABLES
from embedpipe.evaluate import BENCHMARKS, PROBE_WORDS
from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint
from embedpipe.train.loop import train
from embedpipe.train.registry import Word2VecConfig
from embedpipe.workdir import MANIFEST as STAGE_MANIFEST

TRAIN_CONFTEST = Path(__file__).resolve().parents[1] / "train" / "conftest.py"


def write_workdir(root: Path) -> Path:
    """The training tests' tiny vocab + sequences workdir (40 words), plus the manifests of
    the stages the trainer does not read, as the corpus jobs leave them."""
    spec = importlib.util.spec_from_file_location("train_conftest_for_publish", TRAIN_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_workdir(root)
    for table in TABLES.values():
        manifest = root / table / STAGE_MANIFEST
        if not manifest.exists():
            manifest.parent.mkdir(parents=True)
            record = {"fingerprint": f"{table}-fp", "counts": {"rows": 1}, "seconds": 0.5}
            manifest.write_text(json.dumps(record))
    return root


@pytest.fixture
def store_url() -> Iterator[str]:
    url = f"memory://embedpipe-{uuid.uuid4().hex}/store"
    yield url
    fs, path = filesystem(url)
    fs.rm(path, recursive=True)


def test_manifest_records_everything_the_artefact_promises(tmp_path: Path, store_url: str) -> None:
    work = write_workdir(tmp_path / "work")
    options = Word2VecConfig(dim=8, window=2, negatives=2, batch_size=64)
    train_config = TrainConfig(epochs=1, log_every=1, nproc=1, threads=1, options=options)
    summary = train(train_config, str(work), work / "train")
    secret = {"spark.hadoop.fs.s3a.secret.key": "hunter2", "spark.ui.port": "4050"}
    config = RunConfig(
        name="tiny", workdir=str(work), store=store_url, train=train_config,
        spark=SparkConfig(conf=secret),
    )  # fmt: skip

    version = publish_training(config, work / "train", ArtefactStore(store_url))
    assert version == f"{store_url}/tiny/v0001"
    manifest = verify(version)

    assert (manifest.name, manifest.version) == ("tiny", "v0001")
    assert manifest.created.endswith("+00:00")
    # The model and every hyper-parameter it was trained with.
    assert manifest.model == Model(kind="sgns", hyperparameters=to_dict(train_config))
    # What went in: the fingerprint of every table skip-gram's training is made from (not
    # the buckets or co-occurrences beside them), the tokenizer and the run config.
    lineage = manifest.lineage
    assert lineage.stages is not None
    assert {t: s.fingerprint for t, s in lineage.stages.items()} == {
        "tokens": "tokens-fp",
        "vocab": "vocab-0",
        "sequences": "sequences-0",
    }
    assert lineage.stages["tokens"] == StageRecord("tokens-fp", counts={"rows": 1}, seconds=0.5)
    assert manifest.tokenizer is not None
    assert manifest.tokenizer["model_file"] is None  # word-level: no SentencePiece model
    assert manifest.tokenizer["lowercase"] == config.tokenize.lowercase
    masked = config.to_dict()
    masked["spark"]["conf"] = {"spark.hadoop.fs.s3a.secret.key": "***", "spark.ui.port": "4050"}
    assert lineage.run_config == masked  # credentials never reach the manifest
    # Code, libraries, hardware and world size.
    assert lineage.code_version is not None
    assert lineage.code_version["package"] == embedpipe.__version__
    assert set(lineage.code_version) == {"package", "source", "git"}
    assert lineage.libraries == {lib: metadata.version(lib) for lib in LIBRARIES}
    assert lineage.libraries["torch"] == torch.__version__
    assert lineage.python == platform.python_version()
    hardware = lineage.hardware or {}
    assert hardware["cpus"] == os.cpu_count() and hardware["memory_bytes"] > 2**28
    assert hardware["gpus"] == [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    training = lineage.training or {}
    assert training["world_size"] == 1 and training["device"] == "cpu"
    assert training["seconds"] == summary["seconds"] > 0
    assert training["words_per_sec"] == summary["words_per_sec"] > 0
    assert training["corpus_words"] == summary["corpus_words"] > 0
    # Every declared benchmark is evaluated (the probe words and benchmark words are not in
    # this toy vocabulary: nothing covered, no neighbours).
    metrics = manifest.metrics
    assert metrics is not None and set(metrics.scores) == {b.name for b in BENCHMARKS}
    for bench in BENCHMARKS:
        assert set(bench.fields) <= set(metrics.scores[bench.name])
        assert bench.covered(metrics) == 0.0
    assert metrics.neighbours == {word: () for word in PROBE_WORDS}
    # The sha256 and size of every file, and no file the manifest does not list.
    fs, path = filesystem(version)
    on_disk = sorted(p.rsplit("/", 1)[-1] for p in fs.find(path) if not p.endswith("manifest.json"))
    assert sorted(manifest.files) == on_disk == [
        "metrics.jsonl", "vectors.safetensors", "vectors.w2v.txt", "vocab.parquet",
    ]  # fmt: skip
    for name, entry in manifest.files.items():
        data = fs.cat_file(f"{path}/{name}")
        assert entry == FileEntry(hashlib.sha256(data).hexdigest(), len(data))
    # The typed manifest writes back exactly the JSON that was published.
    raw = json.loads(fs.cat_file(f"{path}/manifest.json"))
    assert manifest.to_json() == raw
    assert "hunter2" not in json.dumps(raw)
    assert sorted(raw) == [
        "code_version", "created", "files", "hardware", "libraries", "metrics", "model",
        "name", "python", "run_config", "stages", "tokenizer", "training", "version",
    ]  # fmt: skip

    loaded = embedpipe.load("tiny", store=store_url)
    weights, _ = load_checkpoint(latest_checkpoint(work / "train" / "checkpoints"))
    np.testing.assert_array_equal(loaded.vectors, weights["input"].numpy())
    assert loaded.vocab[5:7] == ["w0", "w1"]


def test_publish_opens_the_runs_store_by_default(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No store given: the config's, else $EMBEDPIPE_STORE (the one `store_root`)."""
    work = write_workdir(tmp_path / "work")
    options = Word2VecConfig(dim=4, window=2, negatives=2, batch_size=64)
    train_config = TrainConfig(epochs=1, options=options)
    train(train_config, str(work), work / "train")
    monkeypatch.setenv("EMBEDPIPE_STORE", str(tmp_path / "env-store"))
    config = RunConfig(name="tiny", workdir=str(work), store=store_url, train=train_config)
    assert publish_training(config, work / "train") == f"{store_url}/tiny/v0001"
    unset = dataclasses.replace(config, store=None)
    assert publish_training(unset, work / "train") == tmp_path / "env-store" / "tiny" / "v0001"


def test_vectors_carry_metadata_and_a_republish_is_the_same_version(
    tmp_path: Path, store_url: str
) -> None:
    """The safetensors file says what it is, and nothing in it (no version number, no time)
    makes the same training publish twice: `skip_unchanged` compares files by sha256."""
    work = write_workdir(tmp_path / "work")
    options = Word2VecConfig(dim=4, window=2, negatives=2, batch_size=64)
    train_config = TrainConfig(epochs=1, options=options)
    train(train_config, str(work), work / "train")
    config = RunConfig(name="tiny", workdir=str(work), store=store_url, train=train_config)
    first = publish_training(config, work / "train")
    assert publish_training(config, work / "train") == first == f"{store_url}/tiny/v0001"
    manifest = verify(first)
    assert manifest.tokenizer is not None
    assert read_metadata(f"{first}/vectors.safetensors") == {
        "name": "tiny", "model": "sgns", "dim": "4",
        "vocab_size": str(len(embedpipe.load(first))),
        "tokenizer": json.dumps(manifest.tokenizer, sort_keys=True),
        "embedpipe_version": embedpipe.__version__, "embedpipe_format": FORMAT,
    }  # fmt: skip
