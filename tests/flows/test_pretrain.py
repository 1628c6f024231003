"""The whole flow end to end: Prefect test harness, Spark local, torchrun on 2 processes."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import embedpipe
from embedpipe.artefacts import verify

pytestmark = [pytest.mark.slow, pytest.mark.spark]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "wordnet-glosses.txt.gz"


@pytest.fixture(scope="module")
def flow_module():
    from prefect.testing.utilities import prefect_test_harness

    spec = importlib.util.spec_from_file_location("pretrain_flow", ROOT / "flows" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with prefect_test_harness(server_startup_timeout=120):
        yield module


def test_flow_publishes_an_artefact_that_loads_back(flow_module, spark, tmp_path: Path) -> None:
    corpus = tmp_path / "tiny.txt"
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(1500)))
    overrides = [
        f"workdir={tmp_path / 'work'}",
        f"store={tmp_path / 'store'}",
        "name=tiny",
        f'corpus.paths=["{corpus}"]',
        "vocab.min_count=3",
        "train.dim=16",
        "train.epochs=1",
        "train.nproc=2",
        "train.batch_size=512",
    ]
    result = flow_module.pretrain_embeddings(None, overrides)

    artefact = Path(result["artefact"])
    assert artefact == tmp_path / "store" / "tiny" / "v0001"
    manifest = verify(artefact)
    assert set(manifest["files"]) >= {"vectors.safetensors", "vocab.parquet", "vectors.w2v.txt"}
    assert manifest["training"]["world_size"] == 2
    assert manifest["stages"]["vocab"]["counts"]["vocab_size"] > 100
    assert -1 <= manifest["metrics"]["wordsim353"]["spearman"] <= 1

    loaded = embedpipe.load("tiny", store=tmp_path / "store")
    checkpoint = tmp_path / "work" / "train" / "checkpoints" / manifest["training"]["checkpoint"]
    assert np.array_equal(loaded.vectors, load_file(str(checkpoint / "model.safetensors"))["input"])
    word = loaded.vocab[10]
    assert len(loaded.most_similar(word, 5)) == 5
    layer, ids = loaded.to_torch(freeze=True)
    assert layer.weight.shape == (len(loaded.vocab), 16) and ids[word] == 10

    # A second run reuses every stage and the training, and publishes the next version.
    again = flow_module.pretrain_embeddings(None, overrides)
    assert again["artefact"].endswith("v0002")
    second = json.loads((Path(again["artefact"]) / "manifest.json").read_text())
    assert second["training"]["checkpoint"] == manifest["training"]["checkpoint"]
