"""The artefact's tokenizer in `tokenizers`: the same ids as the artefact's own tokenization."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from embedpipe import schemas as S
from embedpipe.artefacts import Embeddings
from embedpipe.artefacts.hf_tokenizer import artefact_tokenizer, bpe_merges
from embedpipe.config import TokenizeConfig
from embedpipe.text.sentencepiece import load_processor, train_sentencepiece
from embedpipe.text.tokenizer import tokenize_line

pytest.importorskip("tokenizers")

CLS_ID, SEP_ID = S.SPECIAL_TOKENS.index(S.CLS), S.SPECIAL_TOKENS.index(S.SEP)
TEXTS = [
    "The King, and the Queen!",
    "İstanbul ΟΔΟΣ café naïve ﬁne",  # İ lower-cases to "i" alone; NFKC splits the ligature
    "数据 ひらがな カタカナ mixed漢字text",
    "visit https://Example.com/x?y=1 or www.foo.org now",
    "year 1984 and ١٢٣",
    "don't  stop\tme\nnow",
    "ﾊﾝｶｸ Ⅻ ½",
    "",
]
CONFIGS = [
    TokenizeConfig(),
    TokenizeConfig(urls=True, digits=True),
    TokenizeConfig(lowercase=False, nfkc=False, cjk_chars=False),
]


def embeddings(vocab: list[str], config: TokenizeConfig, model: bytes | None = None) -> Embeddings:
    vectors = np.zeros((len(vocab), 2), np.float32)
    settings = dataclasses.asdict(config)
    return Embeddings(vectors, vocab, tokenizer=settings, tokenizer_model=model)


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "urls-digits", "raw"])
def test_word_tokenizer_gives_tokenize_lines_ids(config: TokenizeConfig) -> None:
    words = sorted({w for text in TEXTS for w in tokenize_line(text, config)})
    vocab = [*S.SPECIAL_TOKENS, *words[::2]]  # every other word unknown: [UNK]
    emb = embeddings(vocab, config)
    tokenizer, extra = artefact_tokenizer(emb)
    assert extra == []
    for text in TEXTS:
        want = [emb.key_to_index.get(w, S.UNK_ID) for w in tokenize_line(text, config)]
        assert tokenizer.encode(text).ids == [CLS_ID, *want, SEP_ID], text
    assert tokenizer.encode("a", "b").type_ids == [0, 0, 0, 1, 1]
    plain, _ = artefact_tokenizer(emb, frame=None)
    assert plain.encode("[MASK] x").tokens[0] == S.MASK  # written special tokens are special
    assert tokenizer.decode(tokenizer.encode(words[0]).ids) == words[0]


def test_lowercasing_is_one_character_to_one() -> None:
    config = TokenizeConfig()
    assert tokenize_line("İstanbul", config) == ["istanbul"]
    emb = embeddings([*S.SPECIAL_TOKENS, "istanbul"], config)
    tokenizer, _ = artefact_tokenizer(emb)
    assert tokenizer.encode("İstanbul").tokens == [S.CLS, "istanbul", S.SEP]


LINES = [
    f"the {w} sat on the mat with another {w} İstanbul café 1984"
    for w in ("cat", "dog", "bird", "fish")
] * 50 + ["ünïcode  spaces\tand tabs", "数据 ひらがな"] * 10


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_tokenizer_gives_the_artefacts_ids(model_type: str) -> None:
    config = TokenizeConfig(kind="sentencepiece", sp_vocab_size=60, sp_model_type=model_type)
    model = train_sentencepiece([line.lower() for line in LINES], config)
    processor = load_processor(model)
    pieces = sorted({p for line in LINES for p in processor.encode(line.lower(), out_type=str)})
    emb = embeddings([*S.SPECIAL_TOKENS, *pieces[::2]], config, model)  # half the pieces lost
    tokenizer, extra = artefact_tokenizer(emb)
    assert extra and not set(extra) & set(emb.vocab)
    texts = [*TEXTS, *LINES[:3], "  leading space", "\u2581odd start", "the cat  on\u3000the mat "]
    for text in texts:
        ids = tokenizer.encode(text).ids[1:-1]
        own = [emb.key_to_index.get(p, S.UNK_ID) for p in emb.pieces(text)]
        assert [i if i < len(emb) else S.UNK_ID for i in ids] == own, text
        # Beyond the vocabulary: exactly the model's pieces the vocabulary does not hold.
        assert {extra[i - len(emb)] for i in ids if i >= len(emb)} <= set(emb.pieces(text))


def test_bpe_merges_rank_by_the_merged_pieces_score() -> None:
    pieces = [("a", -1.0), ("b", -2.0), ("ab", -0.5), ("c", -3.0), ("abc", -0.7), ("bc", -0.6)]
    # ab (-0.5) before bc (-0.6) before both splits of abc (-0.7); single characters none.
    assert bpe_merges(pieces) == [("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]
