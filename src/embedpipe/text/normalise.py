"""Character normalisation shared by the word tokenizer and word lookups in loaded vectors.

Standard library only, so looking a word up in a loaded artefact needs no tokenizer
dependency (regex, Arrow compute kernels, the config loader).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

# The settings `normalise_word` reads, with the defaults of `config.TokenizeConfig` (a test
# checks they agree): an artefact without recorded settings was tokenized with those.
WORD_SETTINGS: dict[str, Any] = {"nfkc": True, "lowercase": True, "digits": False, "kind": "word"}


def normalise_text(text: str, nfkc: bool = True, lowercase: bool = True) -> str:
    """NFKC, then lower-case with the simple (one-to-one) mapping per character, as Arrow's
    utf8_lower does ("İ" -> "i", no context rule for a final sigma)."""
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = "".join(ch.lower()[:1] for ch in text)
    return text


def fold_digit(ch: str) -> str:
    """A decimal digit of any script as "0" (the tokenizer's `digits` option), else `ch`."""
    return "0" if unicodedata.category(ch) == "Nd" else ch


def normalise_word(word: str, settings: Mapping[str, Any]) -> str:
    """`word` as the tokenizer of `settings` (tokenize settings, missing keys at their
    defaults) would write it as one token: NFKC and lower-casing as configured, and decimal
    digits as "0" when `digits` is set for the word tokenizer (SentencePiece keeps them)."""
    get = {**WORD_SETTINGS, **settings}.get
    text = normalise_text(word, bool(get("nfkc")), bool(get("lowercase")))
    if get("digits") and get("kind") == "word":
        text = "".join(map(fold_digit, text))
    return text
