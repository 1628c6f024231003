"""The whole flow end to end: Prefect test harness, Spark local, torchrun on 2 processes.

Also what the task options promise: a rerun is served from the cache, a changed section
reruns only what reads it, a cache hit whose output was deleted runs again, and a task
that times out leaves no child process behind.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import embedpipe
from embedpipe.artefacts import verify
from embedpipe.evaluate import BENCHMARKS, benchmark
from embedpipe.processes import alive, run_logged

pytestmark = [pytest.mark.slow, pytest.mark.spark]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "wordnet-glosses.txt.gz"


def artifacts_of(flow_run_id: str) -> dict[str, object]:
    """The flow run's artifacts by key, read back through the API (what the UI shows)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


def test_flow_publishes_an_artefact_and_reruns_only_what_changed(
    flow_module, spark, tmp_path: Path
) -> None:
    corpus = tmp_path / "tiny.txt"
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(1500)))
    params = flow_module.PretrainParameters.model_validate(
        {
            "name": "tiny",
            "workdir": str(tmp_path / "work"),
            "store": str(tmp_path / "store"),
            "corpus": {"paths": [str(corpus)]},
            "vocab": {"min_count": 3},
            "train": {"epochs": 1, "nproc": 2, "sgns": {"dim": 16, "batch_size": 512}},
        }
    )
    started = time.perf_counter()
    result = flow_module.pretrain_embeddings(params)
    first_seconds = time.perf_counter() - started
    assert set(result["tasks"].values()) == {"ran"}

    artefact = Path(result["artefact"])
    assert artefact == tmp_path / "store" / "tiny" / "v0001"
    manifest = verify(artefact)
    assert set(manifest.files) >= {"vectors.safetensors", "vocab.parquet", "vectors.w2v.txt"}
    training = manifest.lineage.training or {}
    assert training["world_size"] == 2
    vocab_size = manifest.lineage.stages["vocab"].counts["vocab_size"]
    assert vocab_size > 100
    assert -1 <= benchmark("wordsim353").read(manifest.metrics) <= 1

    loaded = embedpipe.load("tiny", store=tmp_path / "store")
    checkpoint = tmp_path / "work" / "train" / "checkpoints" / training["checkpoint"]
    assert np.array_equal(loaded.vectors, load_file(str(checkpoint / "model.safetensors"))["input"])
    word = loaded.vocab[10]
    assert len(loaded.most_similar(word, topn=5)) == 5
    layer, ids = loaded.to_torch(freeze=True)
    assert layer.weight.shape == (len(loaded.vocab), 16) and ids[word] == 10

    # What the UI shows: stage counts and timings, training, evaluation, the report.
    artifacts = artifacts_of(result["flow_run_id"])
    assert {"corpus-stages", "training", "evaluation", "report", "artefact"} <= set(artifacts)
    stage_rows = json.loads(artifacts["corpus-stages"].data)
    assert [r["stage"] for r in stage_rows] == ["tokenize", "build_vocab", "encode"]  # sgns's
    vocab_row = next(r for r in stage_rows if r["stage"] == "build_vocab")
    assert vocab_row["vocab_size"] == vocab_size and vocab_row["seconds"] > 0
    assert json.loads(artifacts["training"].data)[0]["world_size"] == 2
    benchmarks = [r["benchmark"] for r in json.loads(artifacts["evaluation"].data)]
    assert benchmarks == [b.name for b in BENCHMARKS]
    assert Path(result["report"]).resolve().as_uri() in artifacts["report"].data
    pictures = list(Path(result["report"]).parent.glob("*.png"))  # inside it, for remote UIs
    assert artifacts["report"].data.count("](data:image/png;base64,") == len(pictures) >= 2
    assert Path(result["report"]).is_file()

    # The same parameters again: every stage and the training come from the cache.
    started = time.perf_counter()
    again = flow_module.pretrain_embeddings(params)
    cached_seconds = time.perf_counter() - started
    assert set(again["tasks"].values()) == {"cached"}
    assert again["artefact"] == result["artefact"]  # the same vectors: no second version
    second = json.loads((Path(again["artefact"]) / "manifest.json").read_text())
    assert second["training"]["checkpoint"] == training["checkpoint"]
    assert cached_seconds < first_seconds

    # Skip-gram reads neither the co-occurrences nor the buckets: their settings cost nothing.
    wider = flow_module.pretrain_embeddings(params, overrides=["cooccur.window=4"])
    assert wider["tasks"] == {
        "tokenize": "cached", "build_vocab": "cached", "encode": "cached", "train": "cached",
    }  # fmt: skip
    assert not (tmp_path / "work" / "cooccur").exists()
    # A changed min_count reruns the vocabulary and everything downstream of it.
    fewer = flow_module.pretrain_embeddings(params, overrides=["vocab.min_count=4"])
    assert fewer["tasks"] == {
        "tokenize": "cached", "build_vocab": "ran", "encode": "ran", "train": "ran",
    }  # fmt: skip

    # Back to the first parameters, whose cache entries all exist, but whose tables were
    # replaced by the min_count=4 run: no stale hit is accepted; the tokens are still valid.
    back = flow_module.pretrain_embeddings(params)
    assert back["tasks"]["tokenize"] == "cached"
    assert {back["tasks"][s] for s in ("build_vocab", "encode", "train")} == {"rerun"}
    back_stages = verify(Path(back["artefact"])).lineage.stages or {}
    assert back_stages["vocab"].counts["vocab_size"] == vocab_size

    # Output deleted behind the cache's back: that stage runs again, the rest stays cached.
    shutil.rmtree(tmp_path / "work" / "vocab")
    healed = flow_module.pretrain_embeddings(params)
    assert healed["tasks"]["build_vocab"] == "rerun"
    assert healed["tasks"]["encode"] == "cached" and healed["tasks"]["train"] == "cached"
    assert (tmp_path / "work" / "vocab" / "_MANIFEST.json").is_file()


def test_a_timed_out_task_ends_its_child_processes(flow_module, tmp_path: Path) -> None:
    from prefect import flow, task

    pid_file = tmp_path / "child.pid"
    child = (
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
        "print('child started', flush=True); time.sleep(120)"
    )
    logged: list[str] = []

    @task(timeout_seconds=3, retries=0)
    def long_child() -> int:
        return run_logged([sys.executable, "-c", child, str(pid_file)], logged.append).returncode

    @flow
    def timing_out() -> None:
        long_child()

    started = time.perf_counter()
    state = timing_out(return_state=True)
    assert state.is_failed()
    assert time.perf_counter() - started < 60
    assert logged == ["child started"]
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid)
