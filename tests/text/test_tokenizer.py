import unicodedata

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedpipe.config import TokenizeConfig
from embedpipe.text import tokenize_arrow, tokenize_line
from embedpipe.text import tokenizer as tokenizer_module
from embedpipe.text.tokenizer import nfkc_arrow, split_long_line

# Latin with accents, Greek with final sigma, Cyrillic, CJK, digits, combining marks,
# full-width forms and ligatures (NFKC), punctuation, whitespace, control characters.
ALPHABET = (
    "abcXYZéÉßİΣσςДж東京は日本語０１２ＡＢｆｉﬁ\u0301\u00a0 \t.,;:!?'\"-_()[]\x00\x07\ufffd😀12"
)


def test_examples() -> None:
    assert tokenize_line("Hello, World! don't 42x") == ["hello", "world", "don", "t", "42x"]
    assert tokenize_line("Ｆｕｌｌ　ｗｉｄｔｈ ﬁne") == ["full", "width", "fine"]
    assert tokenize_line("ΣΑΣ İstanbul") == ["σασ", "istanbul"]
    assert tokenize_line("caf\u0065\u0301 naïve") == ["café", "naïve"]
    assert tokenize_line("...  \t") == []
    cased = TokenizeConfig(lowercase=False, nfkc=False)
    assert tokenize_line("Ｆｕｌｌ Case", cased) == ["Ｆｕｌｌ", "Case"]


FRAGMENTS = [*ALPHABET, "http://", "HTTPS://", "www.", "a.org/x?y=1", "١٢٣", "ー", "한국어"]
lines = st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join), max_size=20)


@settings(max_examples=300, deadline=None)
@given(lines, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_arrow_matches_reference(
    lines: list[str], lowercase: bool, nfkc: bool, cjk: bool, urls: bool, digits: bool
) -> None:
    config = TokenizeConfig(lowercase=lowercase, nfkc=nfkc, cjk_chars=cjk, urls=urls, digits=digits)
    got = tokenize_arrow(pa.array(lines, pa.string()), config).to_pylist()
    assert got == [tokenize_line(line, config) for line in lines]


@pytest.mark.parametrize("composes", [True, False])
def test_nfkc_is_python_s_whichever_arrow_kernel(
    composes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow < 26 decomposes in NFKC (apache/arrow#51225): then Python's NFKC is used."""
    if composes and not tokenizer_module.arrow_composes():
        pytest.skip("this pyarrow's utf8_normalize does not compose")
    monkeypatch.setattr(tokenizer_module, "arrow_composes", lambda: composes)
    texts = ["caf\u0065\u0301", "\u00e9", "\ufb01ne", None, "plain", "\uff21\u0301"]
    got = nfkc_arrow(pa.array(texts, pa.string())).to_pylist()
    assert got == [t and unicodedata.normalize("NFKC", t) for t in texts]
    assert got[:3] == ["caf\u00e9", "\u00e9", "fine"]
    ascii_only = pa.array(["a", None, "b c"], pa.string())
    assert nfkc_arrow(ascii_only).to_pylist() == ["a", None, "b c"]
    line = ALPHABET * 2
    assert tokenize_arrow(pa.array([line])).to_pylist() == [tokenize_line(line)]


def test_options() -> None:
    config = TokenizeConfig(urls=True, digits=True)
    assert tokenize_line("See HTTPS://a.b/c?d=1 in 1984", config) == ["see", "url", "in", "0000"]
    assert tokenize_line("東京は日本 abc") == ["東", "京", "は", "日", "本", "abc"]
    assert tokenize_line("東京", TokenizeConfig(cjk_chars=False)) == ["東京"]


def test_split_long_line_keeps_every_word() -> None:
    assert split_long_line("aaaa bbbb cccccccccccc d", 6) == [
        "aaaa",
        "bbbb",
        "cccccc",
        "cccccc",
        "d",
    ]
    text = " ".join(f"word{i}" for i in range(100))
    pieces = split_long_line(text, 37)
    assert all(len(p) <= 37 for p in pieces) and " ".join(pieces).split() == text.split()


def test_null_text_gives_no_tokens() -> None:
    assert tokenize_arrow(pa.array([None, "a b"], pa.string())).to_pylist() == [[], ["a", "b"]]
