import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from embedpipe.config import TokenizeConfig
from embedpipe.text import tokenize_arrow, tokenize_line

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


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=ALPHABET, max_size=40), max_size=20), st.booleans(), st.booleans())
def test_arrow_matches_reference(lines: list[str], lowercase: bool, nfkc: bool) -> None:
    config = TokenizeConfig(lowercase=lowercase, nfkc=nfkc)
    got = tokenize_arrow(pa.array(lines, pa.string()), config).to_pylist()
    assert got == [tokenize_line(line, config) for line in lines]


def test_null_text_gives_no_tokens() -> None:
    assert tokenize_arrow(pa.array([None, "a b"], pa.string())).to_pylist() == [[], ["a", "b"]]
