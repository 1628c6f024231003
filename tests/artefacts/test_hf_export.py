"""Exports read back by transformers and sentence-transformers, offline: the same token ids
as the artefact's own tokenizer, the same hidden states as `encode()`, the same vectors."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy

from embedpipe import schemas as S
from embedpipe.artefacts import ArtefactError, ArtefactStore, Embeddings, load
from embedpipe.artefacts.decoder import CausalEmbeddings, write_decoder_files
from embedpipe.artefacts.encoder import ContextualEmbeddings, write_encoder_files
from embedpipe.artefacts.export import export
from embedpipe.artefacts.metadata import read_metadata
from embedpipe.config import TokenizeConfig
from embedpipe.text.sentencepiece import load_processor, train_sentencepiece
from embedpipe.train.checkpoint import save_checkpoint
from embedpipe.train.clm import CausalLM, DecoderConfig
from embedpipe.train.mlm import EncoderConfig, MaskedLM, pack, padding_mask

transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

WORDS = [
    "the", "king", "queen", "sat", "on", "a", "mat", "with", "another", "cat", "dog", "visit",
    "url", "in", "0000", "数", "据",
]  # fmt: skip
WORD_TEXTS = [
    "The King sat on a MAT",
    "queen zebra dog!",  # an unknown word: [UNK]
    "visit https://Example.org/x?y=1 in 1984",  # urls and digits, as configured
    "数据 cat",  # Han characters one by one
    " ".join(["cat"] * 30),  # cut to max_len
    "",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def publish_mlm(
    root: Path,
    tokens: list[str],
    config: EncoderConfig,
    tokenizer: dict[str, Any],
    sp_model: bytes | None,
) -> Path:
    """A published mlm artefact whose every weight is random and far from its init (so a
    weight mapped to the wrong place shows), through the encoder's own writer."""
    encoder = MaskedLM(config, seed=3)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    state = {"encoder": encoder.config.to_dict()}
    tensors = {f"model.{k}": v for k, v in encoder.state_dict().items()}
    step = save_checkpoint(root / "train" / "checkpoints", 1, tensors, state, keep=1)
    files = write_encoder_files(root / "train", {"checkpoint": step.name}, root)
    save_numpy(
        {"vectors": encoder.token.weight.detach().numpy()}, str(root / "vectors.safetensors")
    )
    ids = pa.array(range(len(tokens)), pa.int32())
    table = pa.table({"id": ids, "token": tokens, "count": pa.array([1] * len(tokens), pa.int64())})
    pq.write_table(table, root / "vocab.parquet")
    files |= {name: root / name for name in ("vectors.safetensors", "vocab.parquet")}
    if sp_model is not None:
        (root / "tok.model").write_bytes(sp_model)
        files["tokenizer.model"] = root / "tok.model"
    details = {"model": {"kind": "mlm"}, "tokenizer": tokenizer}
    return Path(ArtefactStore(root / "store").publish("tiny-mlm", files, details))


@pytest.fixture(scope="module")
def word_mlm(tmp_path_factory: pytest.TempPathFactory) -> tuple[ContextualEmbeddings, Path]:
    """(artefact, its transformers export): word vocabulary, untied output layer."""
    root = tmp_path_factory.mktemp("word-mlm")
    tokens = [*S.SPECIAL_TOKENS, *WORDS]
    config = EncoderConfig(len(tokens), 16, 2, 2, 32, max_len=12, tie_output=False)
    tokenizer = {"kind": "word", "lowercase": True, "urls": True, "digits": True}
    emb = load(publish_mlm(root, tokens, config, tokenizer, None))
    assert isinstance(emb, ContextualEmbeddings)
    return emb, Path(export(emb.path, "hf", root / "hf"))


def hf_outputs(out: Path, texts: list[str]) -> tuple[Any, Any]:
    """(tokenizer batch, AutoModel output with hidden states) of `texts`."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModel.from_pretrained(out).eval()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return batch, model(**batch, output_hidden_states=True)


def test_autotokenizer_gives_the_artefacts_ids(word_mlm: tuple[ContextualEmbeddings, Path]) -> None:
    emb, out = word_mlm
    batch, _ = hf_outputs(out, WORD_TEXTS)
    tokens = emb.tokenize(WORD_TEXTS)
    assert tokens[2] == ["visit", "url", "in", "0000"] and tokens[3] == ["数", "据", "cat"]
    for row, words in enumerate(tokens):
        ids = [S.SPECIAL_TOKENS.index(S.CLS), *emb.token_ids(words), S.SPECIAL_TOKENS.index(S.SEP)]
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :n].tolist() == ids
    assert emb.token_ids(tokens[1])[1] == S.UNK_ID and int(batch["attention_mask"][4].sum()) == 12


def test_automodel_hidden_states_equal_encode(word_mlm: tuple[ContextualEmbeddings, Path]) -> None:
    """last_hidden_state is encode(); hidden_states[k] through the final LayerNorm is
    encode(layer=k) (transformers 5 puts last_hidden_state itself in the last place)."""
    emb, out = word_mlm
    _, output = hf_outputs(out, WORD_TEXTS)
    final_norm = transformers.AutoModel.from_pretrained(out).LayerNorm
    states = [*output.hidden_states[:-1], output.last_hidden_state]
    np.testing.assert_array_equal(output.hidden_states[-1], output.last_hidden_state)
    assert len(states) == emb.layers + 1
    for layer, state in enumerate(states):
        ours = emb.encode(WORD_TEXTS, layer=layer)
        with torch.no_grad():
            theirs = (state if layer == emb.layers else final_norm(state)).numpy()
        for row, vectors in enumerate(ours.vectors):
            n = len(vectors)
            assert n == len(ours.tokens[row])
            np.testing.assert_allclose(theirs[row, 1 : 1 + n], vectors, atol=1e-5)
            np.testing.assert_allclose(theirs[row, 0], ours.pooled[row], atol=1e-5)  # "cls"
    assert np.abs(output.last_hidden_state.numpy()).max() > 0.5  # not a degenerate model


def test_masked_lm_logits_and_sentence_pairs(word_mlm: tuple[ContextualEmbeddings, Path]) -> None:
    emb, out = word_mlm
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    reference = emb.model
    first, second = "the [MASK] sat", "on a mat"
    batch = tokenizer([first], [second], return_tensors="pt")
    a = np.array(emb.token_ids(emb.tokenize(["the"])[0]) + [S.SPECIAL_TOKENS.index(S.MASK)]
                 + emb.token_ids(["sat"]))  # fmt: skip
    b = np.array(emb.token_ids(emb.tokenize([second])[0]))
    ids, segments, lengths = pack([a], [b])
    assert batch["input_ids"].tolist() == ids.tolist()  # "[MASK]" in text is the mask token
    assert batch["token_type_ids"].tolist() == segments.tolist()
    mask = torch.from_numpy(padding_mask(lengths, ids.shape[1]))
    with torch.no_grad():
        hidden = reference.encode(torch.from_numpy(ids), torch.from_numpy(segments), mask)
        want = reference.logits(hidden)
        got = mlm(**batch).logits
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)
    assert got.shape[-1] == len(emb)


def test_sentence_transformers_reads_the_masked_lm_as_its_cls_vector(
    word_mlm: tuple[ContextualEmbeddings, Path],
) -> None:
    emb, out = word_mlm
    model = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    got = model.encode(WORD_TEXTS)
    np.testing.assert_allclose(got, emb.encode(WORD_TEXTS).pooled, atol=1e-5)
    with safe_open(str(out / "model.safetensors"), "pt") as f:  # still the masked LM's file
        assert "lm_head.dense.weight" in set(f.keys())
    assert (out / "1_Pooling" / "config.json").is_file()


def test_exported_weights_carry_the_artefacts_metadata(
    word_mlm: tuple[ContextualEmbeddings, Path],
) -> None:
    emb, out = word_mlm
    meta = read_metadata(out / "model.safetensors")
    assert meta["format"] == "pt"  # what transformers checks
    assert (meta["name"], meta["model"], meta["dim"], meta["vocab_size"]) == (
        "tiny-mlm", "mlm", "16", str(len(emb)),
    )  # fmt: skip
    assert '"urls": true' in meta["tokenizer"]


SP_LINES = [f"the {w} sat on the mat with another {w}" for w in ("cat", "dog", "bird", "fish")] * 50


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_mlm_exports_with_its_segmentation(tmp_path: Path, model_type: str) -> None:
    settings = TokenizeConfig(kind="sentencepiece", sp_vocab_size=60, sp_model_type=model_type)
    sp_model = train_sentencepiece(SP_LINES, settings)
    processor = load_processor(sp_model)
    pieces = sorted({p for line in SP_LINES for p in processor.encode(line, out_type=str)})
    lost = "\u2581fish"  # a piece of the model that the vocabulary lost: [UNK]
    kept = [p for p in pieces if p != lost]
    tokens = [*S.SPECIAL_TOKENS, *kept]
    config = EncoderConfig(len(tokens), 8, 1, 2, 16, max_len=16)
    tokenizer = {"kind": "sentencepiece", "lowercase": True, "nfkc": True}
    emb = load(publish_mlm(tmp_path, tokens, config, tokenizer, sp_model))
    assert isinstance(emb, ContextualEmbeddings)
    out = Path(export(emb, "hf", tmp_path / "hf"))
    texts = ["The Dog sat on another mat", "a fish, and the BIRD", "catfish"]
    batch, output = hf_outputs(out, texts)
    ours = emb.encode(texts)
    assert lost in ours.tokens[1]
    for row, words in enumerate(ours.tokens):
        n = len(words)
        ids = batch["input_ids"][row, 1 : 1 + n].numpy()
        # An id beyond the vocabulary is a piece the artefact reads as [UNK] (its row too).
        assert np.where(ids >= len(emb), S.UNK_ID, ids).tolist() == emb.token_ids(words)
        np.testing.assert_allclose(output.last_hidden_state[row, 1 : 1 + n], ours.vectors[row],
                                   atol=1e-5)  # fmt: skip
    assert (batch["input_ids"] >= len(emb)).any()  # the lost piece has an id of its own
    # The tied output layer: the training's logits, and the [UNK] score for the lost piece.
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    row, real = batch["input_ids"][1:2], batch["attention_mask"][1:2].bool()
    ids = torch.where(row >= len(emb), S.UNK_ID, row)
    with torch.no_grad():
        got = mlm(input_ids=row, attention_mask=real.long()).logits[real].numpy()
        hidden = emb.model.encode(ids, torch.zeros_like(ids), real)
        want = emb.model.logits(hidden)[real].numpy()
    np.testing.assert_allclose(got[:, : len(emb)], want, atol=1e-4)
    unk = np.repeat(want[:, [S.UNK_ID]], got.shape[1] - len(emb), axis=1)
    np.testing.assert_allclose(got[:, len(emb) :], unk, atol=1e-4)


def test_causal_lm_exports_as_gpt2_with_its_tokenizer(tmp_path: Path) -> None:
    """[CLS] begins a text, no token types (GPT-2 would add them), the decoder's vectors."""
    tokens = [*S.SPECIAL_TOKENS, *WORDS]
    decoder = CausalLM(DecoderConfig(len(tokens), 16, 2, 4, 24, max_len=10), seed=3)
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.5)
    state = {"decoder": decoder.config.to_dict()}
    tensors = {f"model.{k}": v for k, v in decoder.state_dict().items()}
    step = save_checkpoint(tmp_path / "train" / "checkpoints", 1, tensors, state, keep=1)
    files = write_decoder_files(tmp_path / "train", {"checkpoint": step.name}, tmp_path)
    save_numpy({"vectors": decoder.token.weight.detach().numpy()}, str(tmp_path / "v.st"))
    ids = pa.array(range(len(tokens)), pa.int32())
    table = pa.table({"id": ids, "token": tokens, "count": pa.array([1] * len(tokens), pa.int64())})
    pq.write_table(table, tmp_path / "vocab.pq")
    files |= {"vectors.safetensors": tmp_path / "v.st", "vocab.parquet": tmp_path / "vocab.pq"}
    details = {"model": {"kind": "clm"}, "tokenizer": {"kind": "word", "digits": True}}
    emb = load(ArtefactStore(tmp_path / "store").publish("clm", files, details))
    assert isinstance(emb, CausalEmbeddings)
    out = Path(export(emb, "hf", tmp_path / "hf"))

    batch, output = hf_outputs(out, WORD_TEXTS)
    assert "token_type_ids" not in batch
    ours = emb.encode(WORD_TEXTS)
    cls = S.SPECIAL_TOKENS.index(S.CLS)
    for row, words in enumerate(ours.tokens):
        n = len(words)
        assert batch["input_ids"][row, : n + 1].tolist() == [cls, *emb.token_ids(words)]
        assert int(batch["attention_mask"][row].sum()) == n + 1  # cut to max_len as encode()
        np.testing.assert_allclose(output.last_hidden_state[row, 1 : 1 + n], ours.vectors[row],
                                   atol=1e-5)  # fmt: skip
    assert len(ours.tokens[4]) == 9 and read_metadata(out / "model.safetensors")["model"] == "clm"


def static_artefact(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A published word2vec-like artefact: 5 special tokens and 6 words, random vectors."""
    tokens = [*S.SPECIAL_TOKENS, "the", "king", "queen", "café", "数", "据"]
    vectors = np.random.default_rng(11).standard_normal((len(tokens), 6)).astype(np.float32)
    src = tmp_path / "src"
    src.mkdir()
    save_numpy({"vectors": vectors}, str(src / "vectors.safetensors"))
    ids = pa.array(range(len(tokens)), pa.int32())
    table = pa.table({"id": ids, "token": tokens, "count": pa.array([3] * len(tokens), pa.int64())})
    pq.write_table(table, src / "vocab.parquet")
    files = {name: src / name for name in ("vectors.safetensors", "vocab.parquet")}
    details = {"model": {"kind": "sgns"}, "tokenizer": {"kind": "word", "lowercase": True}}
    return Path(ArtefactStore(tmp_path / "store").publish("words", files, details)), vectors


def test_sentence_transformers_encode_is_the_mean_of_word_vectors(tmp_path: Path) -> None:
    artefact, vectors = static_artefact(tmp_path)
    out = Path(export(artefact, "sentence-transformers", tmp_path / "st"))
    model = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    got = model.encode(["king queen", "The KING, café!", "zebra king", "数据"])
    np.testing.assert_allclose(got[0], vectors[[6, 7]].mean(0), atol=1e-6)
    np.testing.assert_allclose(got[1], vectors[[5, 6, 8]].mean(0), atol=1e-6)
    np.testing.assert_allclose(got[2], vectors[[S.UNK_ID, 6]].mean(0), atol=1e-6)  # [UNK] row
    np.testing.assert_allclose(got[3], vectors[[9, 10]].mean(0), atol=1e-6)
    meta = read_metadata(out / "model.safetensors")
    assert (meta["name"], meta["model"], meta["dim"]) == ("words", "sgns", "6")


def test_directory_exports_refuse_bad_input(tmp_path: Path) -> None:
    artefact, _ = static_artefact(tmp_path)
    with pytest.raises(ArtefactError, match="format 'hf' needs a language-model artefact"):
        export(artefact, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".tmp-*"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken exists"):
        export(artefact, "sentence-transformers", tmp_path / "taken")
    no_unk = Embeddings.from_arrays(["a", "b"], np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match=r"lacks \[UNK\]"):
        export(no_unk, "sentence-transformers", tmp_path / "st")
    assert not (tmp_path / "st").exists() and not list(tmp_path.glob(".tmp-*"))


def test_directory_export_to_a_url(tmp_path: Path) -> None:
    import fsspec

    artefact, _ = static_artefact(tmp_path)
    url = f"memory://hf-export-{os.getpid()}/models/st"
    assert export(artefact, "sentence-transformers", url) == url
    fs = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(url.removeprefix("memory://")))
    assert {"model.safetensors", "modules.json", "tokenizer.json"} <= set(names)
    fs.rm(url.removeprefix("memory://").rsplit("/", 2)[0], recursive=True)
