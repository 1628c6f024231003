"""A SentencePiece artefact gives an out-of-vocabulary word the mean vector of its pieces."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import save_file

from embedpipe import schemas as S
from embedpipe.artefacts import ArtefactStore, load
from embedpipe.config import TokenizeConfig
from embedpipe.text.sentencepiece import load_processor, train_sentencepiece

LINES = [f"the {w} sat on the mat with another {w}" for w in ("cat", "dog", "bird", "catdog")] * 50


def test_oov_word_is_the_mean_of_its_pieces(tmp_path: Path) -> None:
    config = TokenizeConfig(kind="sentencepiece", sp_vocab_size=30)
    model = train_sentencepiece(LINES, config)
    pieces = sorted({p for line in LINES for p in load_processor(model).encode(line, out_type=str)})
    tokens = [*S.SPECIAL_TOKENS, *pieces]
    vectors = np.random.default_rng(0).normal(size=(len(tokens), 4)).astype(np.float32)
    save_file({"vectors": vectors}, str(tmp_path / "v.safetensors"))
    pq.write_table(
        pa.table({"id": pa.array(range(len(tokens)), pa.int32()), "token": tokens,
                  "count": pa.array([1] * len(tokens), pa.int64())}),
        tmp_path / "vocab.parquet",
    )  # fmt: skip
    (tmp_path / "tok.model").write_bytes(model)
    store = ArtefactStore(tmp_path / "store")
    store.publish(
        "sp",
        {"vectors.safetensors": tmp_path / "v.safetensors", "vocab.parquet": tmp_path / "vocab.parquet",
         "tokenizer.model": tmp_path / "tok.model"},
        {"tokenizer": {"kind": "sentencepiece", "lowercase": True, "nfkc": True}},
    )  # fmt: skip
    emb = load("sp", store=tmp_path / "store")

    word = "Dogbird"  # not a piece itself: composed from pieces, after lower-casing
    assert word not in emb
    known = [p for p in emb.pieces(word) if p in emb]  # pieces unseen in training are skipped
    assert len(known) > 1
    np.testing.assert_allclose(emb[word], vectors[[tokens.index(p) for p in known]].mean(axis=0))
    assert word not in [t for t, _ in emb.most_similar(word, topn=3)]
