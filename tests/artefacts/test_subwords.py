"""fasttext artefacts: the n-gram table published beside the vectors, unseen words composed
from it after loading, and exports that hold the vocabulary only."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from embedpipe import schemas as S
from embedpipe.artefacts import ArtefactError, export_vectors, load
from embedpipe.artefacts.publish import WORD2VEC_FILE, publish_training
from embedpipe.artefacts.subwords import (
    SUBWORDS_CONFIG_FILE,
    SubwordEmbeddings,
    _settings,
    subwords_config,
)
from embedpipe.config import RunConfig, TrainConfig
from embedpipe.text.subwords import word_ngrams
from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint
from embedpipe.train.loop import train
from embedpipe.train.registry import FastTextConfig

PUBLISH_TESTS = Path(__file__).with_name("test_publish.py")


def publish_tests() -> ModuleType:
    """test_publish.py, for its workdir with every stage's manifest."""
    spec = importlib.util.spec_from_file_location("publish_tests_for_subwords", PUBLISH_TESTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_unseen_word_is_the_mean_of_its_ngram_rows() -> None:
    rng = np.random.default_rng(0)
    vocab = ["dog", "dogs", "cat"]
    vectors = rng.standard_normal((3, 4)).astype(np.float32)
    ngrams = rng.standard_normal((50, 4)).astype(np.float32)
    emb = SubwordEmbeddings(vectors, vocab, ngrams=ngrams, minn=3, maxn=6)
    np.testing.assert_array_equal(emb["dogs"], vectors[1])  # a vocabulary word: its vector
    assert "doggy" not in emb and emb.bucket == 50
    # "<doggy>": 5 + 4 + 3 + 2 n-grams of 3..6 characters, fastText's getWordVector mean.
    rows = word_ngrams("doggy", 3, 6, 50)
    assert len(rows) == 14
    np.testing.assert_allclose(emb["doggy"], ngrams[rows].mean(axis=0), rtol=1e-6)
    assert emb.similarity("dog", "doggy") == pytest.approx(
        float(
            emb["dog"] @ emb["doggy"] / np.linalg.norm(emb["dog"]) / np.linalg.norm(emb["doggy"])
        ),
        rel=1e-5,
    )
    with pytest.raises(KeyError, match="no n-gram of 3..6"):
        emb[""]  # "<>": shorter than 3 characters
    with pytest.raises(ValueError, match="must be"):
        SubwordEmbeddings(vectors, vocab, ngrams=ngrams[:, :3], minn=3, maxn=6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hash": "murmur3"}, "hash"),
        ({"bucket": 0}, "bucket"),
        ({"minn": 7}, "minn 7 > maxn 6"),
        ({"format": "other/1"}, "not a"),
    ],
)
def test_subwords_json_is_checked(change: dict[str, object], message: str) -> None:
    assert _settings(subwords_config(3, 6, 100), "x.json") == {"minn": 3, "maxn": 6, "bucket": 100}
    with pytest.raises(ArtefactError, match=message):
        _settings({**subwords_config(3, 6, 100), **change}, "x.json")


def test_publish_and_load_compose_unseen_words(tmp_path: Path) -> None:
    work = publish_tests().write_workdir(tmp_path / "work")
    options = FastTextConfig(dim=8, window=2, negatives=2, batch_size=64, bucket=200, maxn=5)
    train_config = TrainConfig(
        model="fasttext", epochs=2, log_every=1000, threads=1, options=options
    )
    train(train_config, str(work), work / "train")
    config = RunConfig(
        name="ft", workdir=str(work), store=str(tmp_path / "store"), train=train_config
    )
    version = publish_training(config, work / "train")
    tensors, _ = load_checkpoint(latest_checkpoint(work / "train" / "checkpoints"))
    vocab_size = len(tensors["output"])

    emb = load(version)
    assert isinstance(emb, SubwordEmbeddings) and emb.manifest is not None
    assert (emb.minn, emb.maxn, emb.bucket) == (3, 5, 200)
    assert emb.manifest.model.kind == "fasttext"
    settings = json.loads((Path(version) / SUBWORDS_CONFIG_FILE).read_text())
    assert settings["hash"] == "fnv1a32-signed-bytes" and settings["bucket"] == 200
    # Vocabulary words: the trained subword means; the n-gram table: the input's last rows.
    np.testing.assert_array_equal(emb.vectors, tensors["vectors"].numpy())
    np.testing.assert_array_equal(emb.ngrams, tensors["input"][vocab_size:].numpy())
    word = emb.vocab[S.UNK_ID + 10]
    unseen = word + "zq"
    assert unseen not in emb
    rows = word_ngrams(unseen, 3, 5, 200)
    expected = tensors["input"][vocab_size + rows].numpy().mean(axis=0)
    np.testing.assert_allclose(emb[unseen], expected, rtol=1e-6)
    assert np.isfinite(emb.similarity(word, unseen))

    # word2vec text, as published and as exported: the vocabulary's words only.
    for path in (Path(version) / WORD2VEC_FILE, tmp_path / "export.txt"):
        if not path.exists():
            export_vectors(emb, "w2v-text", path)
        lines = path.read_text().splitlines()
        words = [line.split(" ", 1)[0] for line in lines[1:]]
        assert lines[0] == f"{vocab_size - len(S.SPECIAL_TOKENS)} 8"
        assert words == emb.vocab[len(S.SPECIAL_TOKENS) :]
        first = np.array(lines[1].split()[1:], dtype=np.float32)
        np.testing.assert_array_equal(first, emb.vectors[len(S.SPECIAL_TOKENS)])

    # A modified n-gram table is refused.
    (Path(version) / "subwords.safetensors").chmod(0o644)
    with (Path(version) / "subwords.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    with pytest.raises(ArtefactError, match="subwords.safetensors"):
        load(version)
