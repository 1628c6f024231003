"""normalise_word writes a word as the tokenizer writes that word as one token."""

from __future__ import annotations

import dataclasses

import pytest

from embedpipe.config import TokenizeConfig
from embedpipe.text import tokenize_line
from embedpipe.text.normalise import WORD_SETTINGS, normalise_word

WORDS = [
    "King",
    "KING",
    "straße",
    "İstanbul",
    "ΣΟΦΟΣ",
    "Ｋｉｎｇ",
    "ﬁne",
    "1984",
    "٣٤",
    "naïve",
    "x",
]
CONFIGS = [
    TokenizeConfig(),
    TokenizeConfig(lowercase=False),
    TokenizeConfig(nfkc=False),
    TokenizeConfig(digits=True),
    TokenizeConfig(lowercase=False, nfkc=False, digits=True),
]


def test_defaults_are_the_tokenizer_defaults() -> None:
    defaults = TokenizeConfig()
    assert {name: getattr(defaults, name) for name in WORD_SETTINGS} == WORD_SETTINGS


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_a_one_token_word_normalises_as_the_tokenizer_writes_it(config: TokenizeConfig) -> None:
    settings = dataclasses.asdict(config)
    for word in WORDS:
        tokens = tokenize_line(word, config)
        assert tokens == [normalise_word(word, settings)], word
    assert normalise_word("1984", {**settings, "kind": "sentencepiece"}) == "1984"
