"""Masked-LM artefacts: publish, load (verified), encode(), and the input matrix as vectors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file as save_numpy

from embedpipe import schemas as S
from embedpipe.artefacts import ArtefactError, ArtefactStore, load, sha256_file
from embedpipe.artefacts.encoder import (
    ENCODER_CONFIG_FILE,
    ENCODER_FILE,
    ContextualEmbeddings,
    evaluate_input_matrix,
    word_view,
    write_encoder_files,
)
from embedpipe.artefacts.export import export
from embedpipe.artefacts.metadata import read_metadata
from embedpipe.artefacts.publish import publish_training
from embedpipe.config import TokenizeConfig, load_config
from embedpipe.evaluate import BENCHMARKS
from embedpipe.text.sentencepiece import load_processor, train_sentencepiece
from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from embedpipe.train.loop import SUMMARY, train
from embedpipe.train.mlm import CLS_ID, SEP_ID, UNK_ID, EncoderConfig, MaskedLM

TRAIN_DIR = Path(__file__).resolve().parents[1] / "train"
SETTINGS = [
    "name=tiny-mlm", "train.model=mlm", "train.epochs=1", "train.threads=1",
    "train.mlm.layers=2", "train.mlm.heads=2", "train.mlm.width=16", "train.mlm.ffn=32",
    "train.mlm.max_len=12", "train.mlm.max_tokens=96", "train.mlm.chunk_rows=100",
    "train.mlm.heldout=0.1", "train.mlm.lr=0.005",
]  # fmt: skip


def load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlm_corpus", TRAIN_DIR / "mlm_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlm_corpus"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(artefact directory, training directory) of a tiny word-level masked LM."""
    root = tmp_path_factory.mktemp("mlm-artefact")
    workdir = load_helper().write_mlm_workdir(root / "work", n_sequences=300)
    config = load_config(None, [*SETTINGS, f"workdir={workdir}", f"store={root / 'store'}"])
    train(config.train, str(workdir), root / "train")
    artefact = publish_training(config, root / "train", ArtefactStore(root / "store"))
    return Path(artefact), root / "train"


def reference_model(train_dir: Path) -> MaskedLM:
    """The trained model straight from its last checkpoint."""
    tensors, state = load_checkpoint(latest_checkpoint(train_dir / "checkpoints"))
    model = MaskedLM(EncoderConfig.from_dict(state["encoder"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return model.eval()


def test_publish_lists_the_encoder_and_loads_it(published: tuple[Path, Path]) -> None:
    artefact, train_dir = published
    emb = load(artefact)
    assert isinstance(emb, ContextualEmbeddings)
    assert emb.manifest is not None
    files = emb.manifest.files
    for name in (ENCODER_FILE, ENCODER_CONFIG_FILE, "vectors.safetensors", "vocab.parquet"):
        assert files[name].sha256 == sha256_file(artefact / name)
    for name in (ENCODER_FILE, "vectors.safetensors"):  # every safetensors file says what it is
        meta = read_metadata(artefact / name)
        assert (meta["name"], meta["model"], meta["dim"]) == ("tiny-mlm", "mlm", "16")
    config = json.loads((artefact / ENCODER_CONFIG_FILE).read_text())
    assert config["architecture"]["layers"] == 2 and config["architecture"]["vocab_size"] == 35
    assert emb.manifest.model is not None and emb.manifest.model.kind == "mlm"
    # The token embedding is stored once: as the artefact's vectors.
    assert "token.weight" not in emb.encoder_weights
    summary = json.loads((train_dir / SUMMARY).read_text())
    tensors = load_checkpoint(train_dir / "checkpoints" / summary["checkpoint"])[0]
    np.testing.assert_array_equal(emb.vectors, tensors["input"].numpy())

    metrics = emb.manifest.metrics
    assert metrics is not None and metrics.mlm is not None
    mlm = metrics.mlm
    assert mlm["heldout_loss"] == summary["heldout"][-1]["loss"]
    assert mlm["initial_heldout_loss"] == summary["heldout"][0]["loss"]
    assert mlm["heldout_perplexity"] == pytest.approx(np.exp(mlm["heldout_loss"]), rel=1e-3)
    assert set(metrics.scores) == {b.name for b in BENCHMARKS}  # every declared benchmark
    assert metrics.neighbours is not None


def test_encode_matches_the_trained_model(published: tuple[Path, Path]) -> None:
    artefact, train_dir = published
    emb = load(artefact)
    texts = ["w1 w2 w3", "W7 zebra w8 w9 w10", ""]
    out = emb.encode(texts)
    assert out.tokens == [["w1", "w2", "w3"], ["w7", "zebra", "w8", "w9", "w10"], []]
    assert [v.shape for v in out.vectors] == [(3, 16), (5, 16), (0, 16)]
    assert out.pooled.shape == (3, 16) and out.layer == 2 and out.pool == "cls"

    model = reference_model(train_dir)
    ids = torch.tensor(
        [[CLS_ID, emb.index("w7"), UNK_ID, *map(emb.index, ["w8", "w9", "w10"]), SEP_ID]]
    )
    with torch.no_grad():
        expected = model.encode(ids, torch.zeros_like(ids), None)[0].numpy()
        first = model.encode(ids, torch.zeros_like(ids), None, layer=1)[0].numpy()
    np.testing.assert_allclose(out.vectors[1], expected[1:-1], atol=1e-5)
    np.testing.assert_allclose(out.pooled[1], expected[0], atol=1e-5)

    mean = emb.encode(texts, pool="mean")
    np.testing.assert_allclose(mean.pooled[1], expected[1:-1].mean(0), atol=1e-5)
    np.testing.assert_allclose(mean.pooled[2], out.pooled[2], atol=1e-6)  # empty text: [CLS]
    layer1 = emb.encode(texts[1], layer=1)
    np.testing.assert_allclose(layer1.vectors[0], first[1:-1], atol=1e-5)
    np.testing.assert_allclose(emb.encode(texts[1], layer=-2).pooled, layer1.pooled, atol=1e-6)
    # Batching and order do not change a text's vectors.
    alone = emb.encode([texts[0]], batch_size=1)
    np.testing.assert_allclose(alone.vectors[0], out.vectors[0], atol=1e-5)
    # Long texts are cut to what fits between [CLS] and [SEP] (max_len 12).
    long = emb.encode(" ".join(["w3"] * 30))
    assert len(long.tokens[0]) == 10 and long.vectors[0].shape == (10, 16)
    with pytest.raises(ValueError, match="pool"):
        emb.encode(texts, pool="max")
    with pytest.raises(ValueError, match="layer"):
        emb.encode(texts, layer=3)


def test_input_matrix_works_like_static_vectors(
    published: tuple[Path, Path], tmp_path: Path
) -> None:
    artefact, _ = published
    emb = load(artefact)
    neighbours = emb.most_similar("w3", topn=4)
    assert len(neighbours) == 4 and all(t.startswith("w") for t, _ in neighbours)
    layer, ids = emb.to_torch(freeze=True)
    assert (
        layer.weight.shape == (35, 16) and layer.padding_idx == 0 and ids["w3"] == emb.index("w3")
    )
    path = export(artefact, "w2v-text", tmp_path / "v.txt")
    assert path.read_text().splitlines()[0] == "30 16"
    encoder = emb.to_torch_encoder()
    assert all(p.requires_grad for p in encoder.parameters())
    np.testing.assert_array_equal(encoder.token.weight.detach().numpy(), emb.vectors)


def test_a_modified_encoder_is_refused(published: tuple[Path, Path], tmp_path: Path) -> None:
    artefact, _ = published
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artefact, copy)
    target = copy / ENCODER_FILE
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=ENCODER_FILE):
        load(copy)


LINES = [f"the {w} sat on the mat with another {w}" for w in ("cat", "dog", "bird", "fish")] * 50


def sentencepiece_artefact(tmp_path: Path) -> tuple[Path, list[str], bytes]:
    """A published mlm artefact over a SentencePiece vocabulary, with random weights."""
    config = TokenizeConfig(kind="sentencepiece", sp_vocab_size=40)
    model = train_sentencepiece(LINES, config)
    pieces = sorted({p for line in LINES for p in load_processor(model).encode(line, out_type=str)})
    tokens = [*S.SPECIAL_TOKENS, *pieces]
    encoder = MaskedLM(EncoderConfig(len(tokens), 8, 1, 2, 16, max_len=16), seed=5)
    train_dir = tmp_path / "train"
    state = {"encoder": encoder.config.to_dict()}
    tensors = {f"model.{k}": v for k, v in encoder.state_dict().items()}
    step_dir = save_checkpoint(train_dir / "checkpoints", 1, tensors, state, keep=1)
    files = write_encoder_files(train_dir, {"checkpoint": step_dir.name}, tmp_path)
    vectors = encoder.token.weight.detach().numpy()
    save_numpy({"vectors": vectors}, str(tmp_path / "vectors.safetensors"))
    pq.write_table(
        pa.table({"id": pa.array(range(len(tokens)), pa.int32()), "token": tokens,
                  "count": pa.array([1] * len(tokens), pa.int64())}),
        tmp_path / "vocab.parquet",
    )  # fmt: skip
    (tmp_path / "tok.model").write_bytes(model)
    files |= {
        "vectors.safetensors": tmp_path / "vectors.safetensors",
        "vocab.parquet": tmp_path / "vocab.parquet",
        "tokenizer.model": tmp_path / "tok.model",
    }
    manifest = {"model": {"kind": "mlm"}, "tokenizer": {"kind": "sentencepiece", "lowercase": True}}
    return Path(ArtefactStore(tmp_path / "store").publish("sp-mlm", files, manifest)), tokens, model


def test_sentencepiece_artefacts_encode_with_their_model(tmp_path: Path) -> None:
    artefact, tokens, model = sentencepiece_artefact(tmp_path)
    emb = load(artefact)
    out = emb.encode(["The Dog sat", "another fish"])
    processor = load_processor(model)
    assert out.tokens == [
        processor.encode("the dog sat", out_type=str),
        processor.encode("another fish", out_type=str),
    ]
    assert [v.shape for v in out.vectors] == [(len(t), 8) for t in out.tokens]
    # Words that are one piece are found by `lookup` (and so by `align`) as that piece.
    assert emb.lookup("dog") == tokens.index("\u2581dog")
    assert emb.lookup("Fish") == tokens.index("\u2581fish")
    assert emb.lookup("mat") is None  # several pieces: not a single vector to look up
    matrix, found = emb.align(["dog", "zzzq"])
    assert found.tolist() == [True, False]
    np.testing.assert_array_equal(matrix[0], emb.vectors[tokens.index("\u2581dog")])

    vectors, words = word_view(emb)
    assert "dog" in words and all(not w.startswith("\u2581") for w in words)
    np.testing.assert_array_equal(vectors[words.index("dog")], emb["\u2581dog"])
    scores = evaluate_input_matrix(emb)
    # Benchmark words outside the pieces get composed vectors: coverage is not limited to
    # the few whole-word pieces of this tiny model.
    assert scores["wordsim353"]["found"] > 300
    assert scores["neighbours"]["dog"]


def test_cli_evaluates_an_mlm_artefact(
    published: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from embedpipe.cli import main

    artefact, train_dir = published
    main(["evaluate", str(artefact)])
    scores = json.loads(capsys.readouterr().out)
    summary = json.loads((train_dir / SUMMARY).read_text())
    assert scores["mlm"]["heldout_loss"] == summary["heldout"][-1]["loss"]
    assert scores["wordsim353"]["pairs"] == 353 and "analogy" in scores
    main(["neighbors", str(artefact), "W3", "-k", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.split()[1].startswith("w") for line in lines)
