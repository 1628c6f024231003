"""Causal-LM artefacts: publish, load (verified), encode() against the model, generate()."""

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
from embedpipe.artefacts.contextual import ENCODER_CONFIG_FILE
from embedpipe.artefacts.decoder import FORMAT, CausalEmbeddings, write_decoder_files
from embedpipe.artefacts.encoder import ContextualEmbeddings
from embedpipe.artefacts.loader import ENCODER_FILE
from embedpipe.artefacts.publish import publish_training
from embedpipe.config import TokenizeConfig, load_config
from embedpipe.evaluate import BENCHMARKS
from embedpipe.text.sentencepiece import load_processor, train_sentencepiece
from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from embedpipe.train.clm import BOS_ID, CausalLM, DecoderConfig
from embedpipe.train.loop import SUMMARY, train

TRAIN_DIR = Path(__file__).resolve().parents[1] / "train"
SETTINGS = [
    "name=tiny-clm", "train.model=clm", "train.epochs=3", "train.threads=1",
    "train.clm.layers=2", "train.clm.heads=2", "train.clm.width=16", "train.clm.ffn=32",
    "train.clm.max_len=12", "train.clm.max_tokens=96", "train.clm.chunk_rows=100",
    "train.clm.heldout=0.1", "train.clm.lr=0.01", "train.clm.warmup_steps=5",
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
    """(artefact directory, training directory) of a tiny word-level causal LM."""
    root = tmp_path_factory.mktemp("clm-artefact")
    workdir = load_helper().write_mlm_workdir(root / "work", n_sequences=300)
    config = load_config(None, [*SETTINGS, f"workdir={workdir}", f"store={root / 'store'}"])
    train(config.train, str(workdir), root / "train")
    artefact = publish_training(config, root / "train", ArtefactStore(root / "store"))
    return Path(artefact), root / "train"


def reference_model(train_dir: Path) -> CausalLM:
    """The trained model straight from its last checkpoint."""
    tensors, state = load_checkpoint(latest_checkpoint(train_dir / "checkpoints"))
    model = CausalLM(DecoderConfig.from_dict(state["decoder"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return model.eval()


def test_publish_lists_the_decoder_and_its_perplexities(published: tuple[Path, Path]) -> None:
    artefact, train_dir = published
    emb = load(artefact)
    assert isinstance(emb, CausalEmbeddings) and not isinstance(emb, ContextualEmbeddings)
    assert emb.manifest is not None and emb.manifest.model is not None
    assert emb.manifest.model.kind == "clm"
    for name in (ENCODER_FILE, ENCODER_CONFIG_FILE, "vectors.safetensors", "vocab.parquet"):
        assert emb.manifest.files[name].sha256 == sha256_file(artefact / name)
    config = json.loads((artefact / ENCODER_CONFIG_FILE).read_text())
    assert config["format"] == FORMAT and config["architecture"]["bos_id"] == BOS_ID
    assert "token.weight" not in emb.encoder_weights and "output.weight" not in emb.encoder_weights
    summary = json.loads((train_dir / SUMMARY).read_text())
    tensors = load_checkpoint(train_dir / "checkpoints" / summary["checkpoint"])[0]
    np.testing.assert_array_equal(emb.vectors, tensors["input"].numpy())
    assert repr(emb).startswith("CausalEmbeddings(V=35, dim=16, layers=2, heads=2")

    metrics = emb.manifest.metrics
    assert metrics is not None and metrics.clm is not None and metrics.mlm is None
    clm, heldout = metrics.clm, summary["heldout"]
    assert clm["heldout_perplexity"] == heldout[-1]["perplexity"]
    assert clm["initial_heldout_perplexity"] == heldout[0]["perplexity"]
    assert clm["unigram_heldout_perplexity"] == heldout[-1]["unigram_perplexity"]
    assert [h["epoch"] for h in clm["heldout"]] == [0, 1, 2, 3]
    assert clm["heldout_perplexity"] < clm["unigram_heldout_perplexity"]
    assert set(metrics.scores) == {b.name for b in BENCHMARKS}


def test_encode_gives_the_models_hidden_states(published: tuple[Path, Path]) -> None:
    artefact, train_dir = published
    emb = load(artefact)
    texts = ["w1 w2 w3", "W7 zebra w8 w9 w10", ""]
    out = emb.encode(texts)
    assert out.tokens == [["w1", "w2", "w3"], ["w7", "zebra", "w8", "w9", "w10"], []]
    assert [v.shape for v in out.vectors] == [(3, 16), (5, 16), (0, 16)]
    assert out.layer == 2 and out.pool == "last"

    model = reference_model(train_dir)
    ids = [BOS_ID, emb.index("w7"), S.UNK_ID, *map(emb.index, ["w8", "w9", "w10"])]
    with torch.no_grad():
        states = model.hidden_states(torch.tensor([ids]))
        expected = model.final_norm(states[-1])[0].numpy()
        first = model.final_norm(states[1])[0].numpy()
    np.testing.assert_allclose(out.vectors[1], expected[1:], atol=1e-5)
    np.testing.assert_allclose(out.pooled[1], expected[-1], atol=1e-5)
    np.testing.assert_allclose(emb.encode(texts[1], layer=1).vectors[0], first[1:], atol=1e-5)
    mean = emb.encode(texts, pool="mean")
    np.testing.assert_allclose(mean.pooled[1], expected[1:].mean(0), atol=1e-5)
    np.testing.assert_allclose(mean.pooled[2], out.pooled[2], atol=1e-6)  # empty: [CLS]
    # Causal: a token's vector does not depend on the tokens after it.
    prefix = emb.encode("w7 zebra w8")
    np.testing.assert_allclose(prefix.vectors[0], out.vectors[1][:3], atol=1e-5)
    alone = emb.encode([texts[0]], batch_size=1)
    np.testing.assert_allclose(alone.vectors[0], out.vectors[0], atol=1e-5)
    long = emb.encode(" ".join(["w3"] * 30))  # cut to max_len 12 less [CLS]
    assert long.vectors[0].shape == (11, 16)
    with pytest.raises(ValueError, match="pool"):
        emb.encode(texts, pool="cls")


def test_generate_continues_a_prompt(published: tuple[Path, Path]) -> None:
    artefact, train_dir = published
    emb = load(artefact)
    text = emb.generate("w7 w8", 6)
    words = text.split()
    assert len(words) == 6 and all(w in emb.vocab[len(S.SPECIAL_TOKENS) :] for w in words)
    assert emb.generate("w7 w8", 6) == text  # greedy: deterministic
    # Greedy is the model's argmax at every step.
    model = reference_model(train_dir)
    context = [BOS_ID, emb.index("w7"), emb.index("w8")]
    with torch.no_grad():
        for _ in range(6):
            logits = model.logits(model.encode(torch.tensor([context]))[0, -1])
            logits[: len(S.SPECIAL_TOKENS)] = -torch.inf
            context.append(int(logits.argmax()))
    assert words == [emb.vocab[i] for i in context[3:]]
    # The topic learnt: w7 and w8 are topic 1 (w5..w9), and so is what follows.
    assert sum(w in {"w5", "w6", "w7", "w8", "w9"} for w in words) >= 5

    sampled = emb.generate("w7 w8", 20, temperature=1.5, seed=3)
    assert sampled == emb.generate("w7 w8", 20, temperature=1.5, seed=3)
    assert len(sampled.split()) == 20 and sampled != emb.generate("w7 w8", 20, 1.5, seed=4)
    assert len(emb.generate("", 30).split()) == 30  # past max_len: the newest tokens are read
    assert emb.generate("w1", 0) == ""
    with pytest.raises(ValueError, match="temperature"):
        emb.generate("w1", 3, temperature=-1.0)


def test_a_modified_decoder_is_refused(published: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    artefact, _ = published
    copy = tmp_path / "copy"
    shutil.copytree(artefact, copy)
    target = copy / ENCODER_CONFIG_FILE
    target.chmod(0o644)
    target.write_text(target.read_text().replace(FORMAT, "embedpipe-gpt/9"))
    with pytest.raises(ArtefactError, match=ENCODER_CONFIG_FILE):
        load(copy)


LINES = [f"the {w} sat on the mat with another {w}" for w in ("cat", "dog", "bird", "fish")] * 50


def test_a_sentencepiece_artefact_generates_text(tmp_path: Path) -> None:
    """A clm artefact over SentencePiece pieces (random weights): text in, text out."""
    model = train_sentencepiece(LINES, TokenizeConfig(kind="sentencepiece", sp_vocab_size=40))
    processor = load_processor(model)
    pieces = sorted({p for line in LINES for p in processor.encode(line, out_type=str)})
    tokens = [*S.SPECIAL_TOKENS, *pieces]
    decoder = CausalLM(DecoderConfig(len(tokens), 8, 1, 2, 16, max_len=16), seed=5)
    tensors = {f"model.{k}": v for k, v in decoder.state_dict().items()}
    state = {"decoder": decoder.config.to_dict()}
    step_dir = save_checkpoint(tmp_path / "train" / "checkpoints", 1, tensors, state, keep=1)
    files = write_decoder_files(tmp_path / "train", {"checkpoint": step_dir.name}, tmp_path)
    save_numpy({"vectors": decoder.token.weight.detach().numpy()}, str(tmp_path / "v.st"))
    pq.write_table(
        pa.table({"id": pa.array(range(len(tokens)), pa.int32()), "token": tokens,
                  "count": pa.array([1] * len(tokens), pa.int64())}),
        tmp_path / "vocab.parquet",
    )  # fmt: skip
    (tmp_path / "tok.model").write_bytes(model)
    files |= {
        "vectors.safetensors": tmp_path / "v.st",
        "vocab.parquet": tmp_path / "vocab.parquet",
        "tokenizer.model": tmp_path / "tok.model",
    }
    manifest = {"model": {"kind": "clm"}, "tokenizer": {"kind": "sentencepiece", "lowercase": True}}
    emb = load(ArtefactStore(tmp_path / "store").publish("sp-clm", files, manifest))
    assert isinstance(emb, CausalEmbeddings)
    out = emb.encode("The Dog sat")
    assert out.tokens[0] == processor.encode("the dog sat", out_type=str)
    context = [BOS_ID, *(tokens.index(p) for p in processor.encode("the dog", out_type=str))]
    with torch.no_grad():
        for _ in range(5):
            logits = decoder.logits(decoder.eval().encode(torch.tensor([context]))[0, -1])
            logits[: len(S.SPECIAL_TOKENS)] = -torch.inf
            context.append(int(logits.argmax()))
    written = [tokens[i] for i in context[-5:]]
    assert emb.generate("The Dog", 5) == processor.decode_pieces(written)
    # A masked LM's checkpoint is not a decoder's.
    other = save_checkpoint(tmp_path / "mlm" / "checkpoints", 1, tensors, {"encoder": {}}, keep=1)
    with pytest.raises(ValueError, match="no embedpipe-clm-decoder/1 checkpoint"):
        write_decoder_files(tmp_path / "mlm", {"checkpoint": other.name}, tmp_path)
