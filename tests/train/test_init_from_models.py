"""`train.init_from` for glove, the language models (mlm, clm, bilm) and fasttext: before
the first step, the model's rows for known words hold the parent's, new words the spec's
fresh init, and a parent that does not fit (architecture, n-gram settings, another kind of
model) is a ConfigError naming the field."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from embedpipe.artefacts.publish import publish_training
from embedpipe.config import ConfigError, RunConfig, TrainConfig
from embedpipe.train.distributed import Cluster
from embedpipe.train.glove import GloVe
from embedpipe.train.init import Parent, start_from
from embedpipe.train.loop import train
from embedpipe.train.registry import (
    BiLMConfig,
    CLMConfig,
    FastTextConfig,
    GloVeConfig,
    MLMConfig,
    Word2VecConfig,
)
from embedpipe.train.specs.bilm import BiLMRun
from embedpipe.train.specs.clm import CausalLMRun
from embedpipe.train.specs.fasttext import FastTextRun
from embedpipe.train.specs.glove import GloVeRun
from embedpipe.train.specs.mlm import MaskedLMRun
from embedpipe.workdir import Workdir

HERE = Path(__file__).resolve().parent
CPU = Cluster(0, 1, 0, torch.device("cpu"))
NEW = 8  # words only in corpus B (`corpora` renames 8; the mlm test as many)


def load_module(name: str, file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


helpers = load_module("init_from_helpers", "test_init_from.py")


def published(tmp_path: Path, config: TrainConfig, a: Path) -> str:
    """Train `config` on workdir `a` and publish it as toy@v0001 in tmp_path/store."""
    store = str(tmp_path / "store")
    train(config, str(a), tmp_path / "train-a")
    run = RunConfig(name="toy", workdir=str(a), store=store, train=config)
    publish_training(run, tmp_path / "train-a")
    return store


def parent_of(config: TrainConfig, b: Path, store: str) -> Parent:
    parent = start_from(dataclasses.replace(config, init_from="toy@v0001"), Workdir(str(b)), store)
    assert parent is not None and parent.map.counts()["new"] == NEW
    return parent


def known_rows(parent: Parent) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the new vocabulary, rows of the parent) of the words both know."""
    return parent.map.rows, parent.map.parent_rows


def test_glove_starts_at_half_the_parent_in_each_table(tmp_path: Path) -> None:
    """The published vector is W + C: both start at half of it, so W + C is the parent's."""
    a, b, tokens = helpers.corpora(tmp_path)
    sgns = TrainConfig(threads=1, options=Word2VecConfig(dim=8, window=2, batch_size=64))
    store = published(tmp_path, sgns, a)
    load_module("glove_tests_for_init", "test_spec_glove.py").write_cooccur(b, shards=2)
    config = TrainConfig(model="glove", threads=1, options=GloVeConfig(dim=8, batch_size=16))
    parent = parent_of(config, b, store)
    run = GloVeRun(config, Workdir(str(b)), CPU, None, parent=parent)
    rows, parent_rows = known_rows(parent)
    vectors = run.model.vectors().numpy()
    np.testing.assert_array_equal(vectors[rows], parent.emb.vectors[parent_rows])
    fresh = GloVe(len(tokens), 8, config.seed)
    new = np.setdiff1d(np.arange(len(tokens)), rows)
    np.testing.assert_array_equal(vectors[new], fresh.vectors().numpy()[new])
    biases = run.model.word_bias.weight.detach()
    assert torch.equal(biases, fresh.word_bias.weight.detach())  # biases start fresh
    assert all(torch.equal(s, torch.ones_like(s)) for s in run.sums)  # AdaGrad sums too
    wider = dataclasses.replace(config, options=GloVeConfig(dim=12))
    with pytest.raises(ConfigError, match=r"dimension 8, train\.glove\.dim is 12"):
        GloVeRun(wider, Workdir(str(b)), CPU, None, parent=parent)


TINY_MLM = MLMConfig(
    layers=1, heads=2, width=16, ffn=32, max_len=12, max_tokens=96, chunk_rows=100,
    heldout=0.1, warmup_steps=2, lr=5e-3,
)  # fmt: skip
SHARED = {k: getattr(TINY_MLM, k) for k in ("max_len", "max_tokens", "chunk_rows", "heldout")}
LANGUAGE_MODELS = {
    "mlm": (TINY_MLM, MaskedLMRun, dataclasses.replace(TINY_MLM, layers=2), "layers 1", "2"),
    "clm": (
        CLMConfig(layers=1, heads=2, width=16, ffn=32, **SHARED), CausalLMRun,
        CLMConfig(layers=1, heads=2, width=16, ffn=64, **SHARED), "ffn 32", "64",
    ),
    "bilm": (
        BiLMConfig(dim=16, hidden=24, layers=1, **SHARED), BiLMRun,
        BiLMConfig(dim=16, hidden=32, layers=1, **SHARED), "hidden 24", "32",
    ),
}  # fmt: skip


@pytest.mark.parametrize("model", sorted(LANGUAGE_MODELS))
def test_language_models_start_from_the_parents_weights(model: str, tmp_path: Path) -> None:
    """Every weight is the parent's; the token embedding (and output bias) by token, new
    words fresh; AdamW fresh; a parent of another shape or kind is a ConfigError."""
    options, run_class, other, theirs, ours = LANGUAGE_MODELS[model]
    corpus = load_module("mlm_corpus_for_init", "mlm_corpus.py")
    a = corpus.write_mlm_workdir(tmp_path / "a", n_sequences=200, seed=0)
    b = corpus.write_mlm_workdir(tmp_path / "b", n_sequences=200, seed=1)
    tokens = helpers.rename_words(b, NEW)
    config = TrainConfig(model=model, threads=1, options=options)
    store = published(tmp_path, config, a)
    parent = parent_of(config, b, store)
    run = run_class(config, Workdir(str(b)), CPU, None, parent=parent)
    rows, parent_rows = known_rows(parent)
    token = run.model.token.weight.detach().numpy()
    np.testing.assert_array_equal(token[rows], parent.emb.vectors[parent_rows])
    fresh = run_class.build(run, len(tokens), config.seed)[1].token.weight.detach().numpy()
    new = np.setdiff1d(np.arange(len(tokens)), rows)
    np.testing.assert_array_equal(token[new], fresh[new])
    weights = parent.emb.encoder_weights  # every other weight: the parent's
    assert len(weights) >= 4
    for name, p in run.model.named_parameters():
        if name == "output_bias":
            np.testing.assert_array_equal(p.detach().numpy()[rows], weights[name][parent_rows])
        elif name != "token.weight":
            np.testing.assert_array_equal(p.detach().numpy(), weights[name], err_msg=name)
    assert not run.optimizer.state  # AdamW starts fresh
    continued = dataclasses.replace(config, init_from="toy@v0001")  # through the loop
    summary = train(continued, str(b), tmp_path / "train-b", store=store)
    assert summary["parent"]["name"] == "toy" and summary["init"]["new"] == NEW
    reshaped = dataclasses.replace(config, options=other)
    with pytest.raises(ConfigError, match=f"has {theirs}, this run's \\w+ has {ours}"):
        run_class(reshaped, Workdir(str(b)), CPU, None, parent=parent)
    other_kind = "clm" if model == "mlm" else "mlm"
    options, run_class = LANGUAGE_MODELS[other_kind][:2]
    with pytest.raises(ConfigError, match="not the (encoder|decoder) this run trains"):
        run_class(TrainConfig(model=other_kind, threads=1, options=options),
                  Workdir(str(b)), CPU, None, parent=parent)  # fmt: skip


def test_fasttext_keeps_the_ngram_table_and_the_word_vectors(tmp_path: Path) -> None:
    a, b, tokens = helpers.corpora(tmp_path)
    options = FastTextConfig(dim=8, window=2, negatives=2, batch_size=64, bucket=200, maxn=5)
    config = TrainConfig(model="fasttext", threads=1, options=options)
    store = published(tmp_path, config, a)
    parent = parent_of(config, b, store)
    run = FastTextRun(config, Workdir(str(b)), CPU, None, parent=parent)
    rows, parent_rows = known_rows(parent)
    vectors = run.model.word_vectors().numpy()
    np.testing.assert_allclose(vectors[rows], parent.emb.vectors[parent_rows], atol=1e-6)
    table = run.model.input.weight.detach().numpy()
    np.testing.assert_array_equal(table[len(tokens) :], parent.emb.ngrams)
    other = dataclasses.replace(config, options=dataclasses.replace(options, bucket=300))
    with pytest.raises(ConfigError, match=r"has bucket 200, train\.fasttext\.bucket is 300"):
        FastTextRun(other, Workdir(str(b)), CPU, None, parent=parent)
