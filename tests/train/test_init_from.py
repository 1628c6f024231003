"""Continued training (`train.init_from`): a run on corpus B starting from an artefact
published from corpus A. Words only in B get trained vectors, shared words stay near their
parent rows, the manifest names the parent and the vector diff shows what moved."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from embedpipe import schemas as S
from embedpipe.artefacts import diff_manifests, format_diff, load
from embedpipe.artefacts.diff import diff_vectors
from embedpipe.artefacts.publish import publish_training
from embedpipe.config import ConfigError, RunConfig, TrainConfig
from embedpipe.corpus.registry import TABLES
from embedpipe.train.distributed import Cluster
from embedpipe.train.init import map_rows, start_from
from embedpipe.train.loop import train, training_fingerprint
from embedpipe.train.registry import Word2VecConfig
from embedpipe.train.sgns import SkipGram
from embedpipe.train.specs.word2vec import SkipGramRun
from embedpipe.workdir import MANIFEST, Workdir

HERE = Path(__file__).resolve().parent
CPU = Cluster(0, 1, 0, torch.device("cpu"))
NEW = 8  # words of corpus B that corpus A lacks (B's 8 rarest ids renamed)
SGNS = TrainConfig(
    epochs=5, log_every=1000, threads=1,
    options=Word2VecConfig(dim=16, window=3, negatives=3, batch_size=64, lr=0.1),
)  # fmt: skip
# The runs on B: one epoch, another seed (so a fresh run does not share the parent's init).
ON_B = dataclasses.replace(SGNS, epochs=1, seed=2)
# Measured on this toy corpus (random Zipf sequences, dim 16): the parent's rows end at a
# median cosine of 0.46 to their own init; after one epoch on B, shared words' median
# cosine to their parent row is 0.9987 continued and 0.05 for a fresh run.
CONTINUED_MEDIAN = 0.95
FRESH_MEDIAN = 0.3


def load_module(name: str, path: Path) -> ModuleType:
    """A helper file of the tests (they run with --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rename_words(root: Path, new: int) -> list[str]:
    """Give the `new` rarest words of `root`'s vocabulary names corpus A never had."""
    path = root / "vocab" / "part-00000.parquet"
    table = pq.read_table(path)
    tokens = table.column(S.TOKEN).to_pylist()
    tokens[-new:] = [f"new{i}" for i in range(new)]
    table = table.set_column(table.schema.get_field_index(S.TOKEN), S.TOKEN, pa.array(tokens))
    pq.write_table(table, path)
    return tokens


def stage_manifests(root: Path) -> Path:
    """Stub manifests of the corpus stages the trainer does not read (publish reads all)."""
    for table in TABLES.values():
        manifest = root / table / MANIFEST
        if not manifest.exists():
            manifest.parent.mkdir(parents=True, exist_ok=True)
            manifest.write_text(json.dumps({"fingerprint": f"{table}-fp", "counts": {}}))
    return root


def corpora(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Corpus A (seed 0) and corpus B (seed 1, its NEW rarest words renamed)."""
    helper = load_module("train_conftest_for_init", HERE / "conftest.py")
    a = stage_manifests(helper.write_workdir(tmp_path / "a", seed=0))
    b = stage_manifests(helper.write_workdir(tmp_path / "b", seed=1))
    return a, b, rename_words(b, NEW)


def cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return (x * y).sum(1) / np.maximum(norms, 1e-12)


def test_map_rows_matches_by_token_and_counts_words() -> None:
    specials = list(S.SPECIAL_TOKENS)
    rows = map_rows([*specials, "a", "b", "c"], [*specials, "c", "x", "a", "y"])
    n = len(specials)
    pairs = dict(zip(rows.rows.tolist(), rows.parent_rows.tolist(), strict=True))
    assert pairs == {**{i: i for i in range(n)}, n: n + 2, n + 2: n}
    assert rows.counts() == {"kept": 2, "new": 2, "dropped": 1}


def test_continued_sgns_keeps_shared_words_and_trains_new_ones(tmp_path: Path) -> None:
    a, b, tokens = corpora(tmp_path)
    store = str(tmp_path / "store")
    train(SGNS, str(a), tmp_path / "train-a")
    parent_at = publish_training(RunConfig(name="toy", workdir=str(a), store=store, train=SGNS),
                                 tmp_path / "train-a")  # fmt: skip
    continued = dataclasses.replace(ON_B, init_from="toy@v0001")
    summary = train(continued, str(b), tmp_path / "train-b", store=store)
    assert summary["parent"]["name"] == "toy" and summary["parent"]["version"] == "v0001"
    assert summary["init"] == {"kept": 40 - NEW, "new": NEW, "dropped": NEW}
    child_at = publish_training(
        RunConfig(name="toy", workdir=str(b), store=store, train=continued), tmp_path / "train-b"
    )
    fresh = train(ON_B, str(b), tmp_path / "fresh")
    assert fresh["fingerprint"] != summary["fingerprint"]  # the parent is part of the run

    parent, child = load(parent_at), load(child_at)
    fresh_vectors = load_checkpoint_input(tmp_path / "fresh")
    shared = [t for t in tokens[len(S.SPECIAL_TOKENS) :] if t in parent.key_to_index]
    p_rows = [parent.key_to_index[t] for t in shared]
    c_rows = [child.key_to_index[t] for t in shared]
    kept = cosines(parent.vectors[p_rows], child.vectors[c_rows])
    fresh_cos = cosines(parent.vectors[p_rows], fresh_vectors[c_rows])
    print(
        f"\nshared words {len(shared)}: median cosine to parent continued "
        f"{np.median(kept):.4f} (5th percentile {np.percentile(kept, 5):.4f}), fresh "
        f"{np.median(fresh_cos):.4f} (5th percentile {np.percentile(fresh_cos, 5):.4f})"
    )
    assert np.median(kept) > CONTINUED_MEDIAN and np.median(fresh_cos) < FRESH_MEDIAN
    first = SkipGram(len(tokens), 16, SGNS.seed).input.weight.detach().numpy()
    trained = cosines(parent.vectors[p_rows], first[p_rows])  # the parent's own init rows
    print(f"parent rows: median cosine to their init {np.median(trained):.4f}")
    assert np.median(trained) < 0.8  # training moved them: keeping them is not trivial
    # Words only in B: trained vectors, moved away from the spec's fresh initialisation.
    new_rows = [child.key_to_index[f"new{i}"] for i in range(NEW)]
    init = SkipGram(len(tokens), 16, ON_B.seed).input.weight.detach().numpy()
    moved = np.linalg.norm(child.vectors[new_rows] - init[new_rows], axis=1)
    print(f"new words {NEW}: distance moved from their fresh init, min {moved.min():.4f}")
    assert np.all(np.linalg.norm(child.vectors[new_rows], axis=1) > 0)
    assert np.all(moved > 0.01)

    manifest, parent_manifest = child.manifest, parent.manifest
    assert manifest is not None and parent_manifest is not None
    assert manifest.lineage.parent == {
        "name": "toy", "version": "v0001", "sha256": parent_manifest.content_sha256(),
    }  # fmt: skip
    moved_words = diff_vectors(parent, child)
    assert moved_words["added"] == NEW and moved_words["removed"] == NEW
    assert set(moved_words["added_words"]) == {f"new{i}" for i in range(NEW)}
    assert moved_words["shared"] == len(shared)
    assert moved_words["cosine"]["median"] == pytest.approx(float(np.median(kept)), abs=1e-5)
    assert moved_words["cosine"]["p5"] == pytest.approx(float(np.percentile(kept, 5)), abs=1e-5)
    changes = diff_manifests(parent_manifest, manifest, vectors=moved_words)
    assert changes["parent"] == {"a": None, "b": manifest.lineage.parent}
    text = format_diff(changes)
    assert re.search(rf"added words +{NEW} +new", text), text
    assert re.search(rf"median cosine +{moved_words['cosine']['median']:.4f}", text), text
    assert "continued from toy v0001" in text


def load_checkpoint_input(out: Path) -> np.ndarray:
    from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(out / "checkpoints"))[0]["input"].numpy()


def test_the_init_reaches_the_tables_before_the_first_step(tmp_path: Path) -> None:
    """sgns: known words' input rows are the parent's, new ones the fresh init's."""
    a, b, tokens = corpora(tmp_path)
    store = str(tmp_path / "store")
    train(SGNS, str(a), tmp_path / "train-a")
    publish_training(RunConfig(name="toy", workdir=str(a), store=store, train=SGNS),
                     tmp_path / "train-a")  # fmt: skip
    config = dataclasses.replace(SGNS, init_from="toy")  # the latest version
    parent = start_from(config, Workdir(str(b)), store)
    assert parent is not None and parent.ref.version == "v0001"
    run = SkipGramRun(config, Workdir(str(b)), CPU, None, parent=parent)
    table = run.model.input.weight.detach().numpy()
    emb = parent.emb
    for i, token in enumerate(tokens):
        if token in emb.key_to_index:
            np.testing.assert_array_equal(table[i], emb.vectors[emb.key_to_index[token]])
        else:
            fresh = SkipGram(len(tokens), 16, SGNS.seed).input.weight[i].detach().numpy()
            np.testing.assert_array_equal(table[i], fresh)
    assert not run.model.output.weight.detach().any()  # output starts fresh (zero)


def test_bad_parents_are_config_errors(tmp_path: Path) -> None:
    a, b, _ = corpora(tmp_path)
    store = str(tmp_path / "store")
    train(SGNS, str(a), tmp_path / "train-a")
    publish_training(RunConfig(name="toy", workdir=str(a), store=store, train=SGNS),
                     tmp_path / "train-a")  # fmt: skip
    wd = Workdir(str(b))
    for init_from in ("nothing", "toy@v0009", str(tmp_path / "no-such-dir")):
        config = dataclasses.replace(SGNS, init_from=init_from)
        with pytest.raises(ConfigError, match="train.init_from"):
            training_fingerprint(config, wd, store)
    wider = dataclasses.replace(
        SGNS, init_from="toy@1", options=dataclasses.replace(SGNS.options, dim=32)
    )
    with pytest.raises(ConfigError, match=r"dimension 16, train\.sgns\.dim is 32"):
        train(wider, str(b), tmp_path / "wider", store=store)
    with pytest.raises(ConfigError, match="NAME@VERSION"):
        TrainConfig(init_from="toy@")
