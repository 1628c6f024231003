"""Turn a finished training run into a published artefact, evaluated before it is sealed.

An artefact never changes after publish, so its evaluation scores are computed from the
final checkpoint first and written into the manifest with everything else: the model and
its hyper-parameters, every corpus stage's fingerprint and counts, code and library
versions, hardware and world size, training time and words/s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from safetensors.numpy import save_file

from embedpipe import schemas as S
from embedpipe.artefacts.export import write_word2vec_text
from embedpipe.artefacts.files import Location
from embedpipe.artefacts.loader import TOKENIZER_FILE, VECTORS_FILE, VOCAB_FILE
from embedpipe.artefacts.manifest import (
    Lineage,
    Metrics,
    Model,
    StageRecord,
    manifest_details,
)
from embedpipe.artefacts.metadata import artefact_metadata, stamp
from embedpipe.artefacts.store import ArtefactStore, open_store
from embedpipe.config import RunConfig, redacted
from embedpipe.corpus.registry import STAGES
from embedpipe.evaluate import evaluate_all, probe_neighbours
from embedpipe.train.registry import corpus_stages, get_model, resolve
from embedpipe.version import code_version
from embedpipe.workdir import CHECKPOINTS, METRICS, SUMMARY, Workdir

WORD2VEC_FILE = "vectors.w2v.txt"
LIBRARIES = (
    "torch", "pyspark", "pyarrow", "numpy", "prefect", "safetensors", "sentencepiece", "numba",
    "fsspec",
)  # fmt: skip


def read_trained(train_dir: Path, vectors: str = "input") -> tuple[dict[str, Any], np.ndarray]:
    """The training summary and the final `vectors` tensor of a training directory."""
    summary_path = train_dir / SUMMARY
    if not summary_path.is_file():
        raise FileNotFoundError(f"{train_dir} holds no finished training run (no {SUMMARY})")
    summary = json.loads(summary_path.read_text())
    from embedpipe.train.checkpoint import load_checkpoint  # torch: the pipeline extra

    tensors, _ = load_checkpoint(train_dir / CHECKPOINTS / summary["checkpoint"])
    return summary, tensors[vectors].numpy().astype(np.float32, copy=False)


def evaluate_vectors(vectors: np.ndarray, tokens: list[str]) -> dict[str, Any]:
    """Every declared benchmark's scores and the probe words' nearest neighbours, as the
    JSON of `Metrics`."""
    return {**evaluate_all(vectors, tokens), "neighbours": probe_neighbours(vectors, tokens)}


def environment() -> Lineage:
    """Python and library versions, and the hardware of the publishing host (CPUs, memory,
    accelerators); the training's world size and device are in the training summary."""
    import torch

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return Lineage(
        python=platform.python_version(),
        libraries=versions,
        hardware={
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "memory_bytes": _memory_bytes(),
            "system": platform.system(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
    )


def _memory_bytes() -> int | None:
    """Physical memory of this host, None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def trace_lineage(config: RunConfig, summary: dict[str, Any]) -> Lineage:
    """What the artefact was made from: the run config (secrets masked), the manifest
    (fingerprint, config, counts, inputs, seconds) of every corpus stage its training
    needs (`corpus_stages`), the training summary, the code and the environment."""
    wd = Workdir(config.workdir)
    stages = {}
    for table in (STAGES[name].table for name in corpus_stages(config.train.model)):
        m = wd.require(table)
        stages[table] = StageRecord(
            fingerprint=m.get("fingerprint"), config=m.get("config"), counts=m.get("counts"),
            inputs=m.get("inputs"), seconds=m.get("seconds"),
        )  # fmt: skip
    return dataclasses.replace(
        environment(),
        run_config=redacted(config),  # credentials in settings never reach a manifest
        stages=stages,
        training={k: v for k, v in summary.items() if k != "config"},
        code_version=code_version(),
        parent=summary.get("parent"),  # continued training: the artefact it started from
    )


def publish_training(
    config: RunConfig, train_dir: Path, store: ArtefactStore | str | None = None
) -> Location:
    """Evaluate the trained vectors and publish them as `<store>/<name>/vNNNN`; returns the
    version's location. `store`: an ArtefactStore, a path or fsspec URL, or None for the
    run's store (`config.store`, else $EMBEDPIPE_STORE, else ./artefacts: `store_root`).

    Idempotent: when the newest version already holds these very files and details (a
    retried task whose first try was killed after its commit, or a rerun whose training came
    from the cache), that version is returned and nothing is published twice."""
    spec = get_model(config.train.model)
    summary, vectors = read_trained(train_dir, spec.vectors)
    wd = Workdir(config.workdir)
    vocab_url = wd.table_path("vocab")
    vocab = pq.read_table(vocab_url).select(S.VOCAB_SCHEMA.names).sort_by(S.ID)
    tokens = vocab.column(S.TOKEN).to_pylist()
    if len(tokens) != len(vectors):
        raise ValueError(
            f"{vocab_url} has {len(tokens)} tokens but the model has {len(vectors)} rows: "
            "the vocabulary changed after training"
        )
    if spec.evaluate is not None:  # the model's own metrics (mlm: + held-out loss)
        metrics = resolve(spec.evaluate)(summary, vectors, tokens, config)
    else:
        metrics = evaluate_vectors(vectors, tokens)
    tokenizer_model = Path(wd.tokenizer_model)
    tokenizer = {
        **config.to_dict()["tokenize"],
        "model_file": TOKENIZER_FILE if tokenizer_model.is_file() else None,
    }
    details = manifest_details(
        model=Model(kind=config.train.model, hyperparameters=summary["config"]),
        tokenizer=tokenizer,
        metrics=Metrics.from_json(metrics, f"evaluation of {config.name}"),
        lineage=trace_lineage(config, summary),
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            VECTORS_FILE: Path(tmp, VECTORS_FILE),
            VOCAB_FILE: Path(tmp, VOCAB_FILE),
            WORD2VEC_FILE: Path(tmp, WORD2VEC_FILE),
            METRICS: train_dir / METRICS,
        }
        if tokenizer_model.is_file():
            files[TOKENIZER_FILE] = tokenizer_model
        if spec.files is not None:  # the model's own files (mlm: the encoder)
            files |= resolve(spec.files)(train_dir, summary, Path(tmp))
        save_file({"vectors": vectors}, str(files[VECTORS_FILE]))
        pq.write_table(vocab.cast(S.VOCAB_SCHEMA), files[VOCAB_FILE])
        words = len(S.SPECIAL_TOKENS)  # the word2vec export holds words only
        write_word2vec_text(files[WORD2VEC_FILE], tokens[words:], vectors[words:])
        meta = artefact_metadata(
            config.name, config.train.model, vectors.shape[1], len(tokens), tokenizer
        )
        files = stamped(files, meta, Path(tmp, "stamped"))
        return open_store(config.store if store is None else store).publish(
            config.name, files, details, skip_unchanged=True
        )


def stamped(files: dict[str, Path], meta: dict[str, str], folder: Path) -> dict[str, Path]:
    """`files` with every safetensors file replaced by a copy in `folder` carrying `meta`
    (the vectors, and a model's own files such as the encoder's): see `artefacts.metadata`."""
    out = dict(files)
    for key in sorted(k for k in files if k.endswith(".safetensors")):
        out[key] = stamp(files[key], folder / key, meta)
    return out


__all__ = ["environment", "evaluate_vectors", "publish_training", "trace_lineage", "read_trained"]
