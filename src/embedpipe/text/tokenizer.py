"""Word-level tokenizer: NFKC, lower-case, then maximal runs of letters, marks and digits.

`tokenize_arrow` is the vectorised form the Spark jobs apply to Arrow batches
(Arrow's UTF-8 kernels and RE2, no per-row Python); `tokenize_line` is the
plain-Python definition of the same thing, used by the CLI, the loaders and as the
reference in tests. Punctuation, whitespace and control characters separate tokens and
are dropped, so "don't" gives "don", "t" (as in text8 and the GloVe/word2vec scripts).
Steps, in order: NFKC; lower-case (simple one-to-one case mapping); URLs -> "url";
digits -> "0"; Han/Hiragana/Katakana characters each on their own (scripts written
without spaces fall back to characters); split.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from embedpipe.config import TokenizeConfig

_SEPARATOR = r"[^\p{L}\p{M}\p{N}]+"
_CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}]"
_NOT_SIMPLE = r"[^A-Za-z0-9 ]"  # a row without these splits at spaces alone
# A URL runs to the first whitespace or non-ASCII character (the same in RE2 and Python).
# Case is spelled out instead of (?i): RE2 and Python fold non-ASCII letters differently
# under (?i) (Python's [!-~] matches "İ", U+0130, as "i"; RE2's does not).
URL_PATTERN = r"(?:[hH][tT][tT][pP][sS]?://|[wW][wW][wW]\.)[!-~]+"
URL_TOKEN = "url"

_URL = re.compile(URL_PATTERN)
_CJK_CHAR = regex.compile(_CJK)


def tokenize_line(text: str, config: TokenizeConfig = TokenizeConfig()) -> list[str]:
    """Tokens of one line of text."""
    if config.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if config.lowercase:
        # Simple (one-to-one) case mapping per character, as Arrow's utf8_lower does:
        # "İ" -> "i", and no context rule for a final sigma.
        text = "".join(ch.lower()[:1] for ch in text)
    if config.urls:
        text = _URL.sub(f" {URL_TOKEN} ", text)
    tokens, current = [], []
    for ch in text:
        if unicodedata.category(ch)[0] not in "LMN":
            if current:
                tokens.append("".join(current))
                current = []
            continue
        if config.digits and unicodedata.category(ch) == "Nd":
            ch = "0"
        if config.cjk_chars and _CJK_CHAR.fullmatch(ch):
            if current:
                tokens.append("".join(current))
                current = []
            tokens.append(ch)
            continue
        current.append(ch)
    if current:
        tokens.append("".join(current))
    return tokens


def tokenize_arrow(texts: pa.Array, config: TokenizeConfig = TokenizeConfig()) -> pa.ListArray:
    """Tokens of every string in an Arrow array, as list<string>; null text gives []."""
    texts = pc.fill_null(texts, "")
    if config.nfkc:
        texts = pc.utf8_normalize(texts, form="NFKC")
    if config.lowercase:
        texts = pc.utf8_lower(texts)
    if config.urls:
        texts = pc.replace_substring_regex(texts, URL_PATTERN, f" {URL_TOKEN} ")
    if config.digits:
        texts = pc.replace_substring_regex(texts, r"\p{Nd}", "0")
    if config.cjk_chars:
        texts = pc.replace_substring_regex(texts, f"({_CJK})", r" \1 ")
    parts = split_separators(texts)
    flat = pc.list_flatten(parts)
    parents = pc.list_parent_indices(parts)
    keep = pc.greater(pc.binary_length(flat), 0)
    flat = flat.filter(keep)
    counts = np.bincount(parents.filter(keep).to_numpy(), minlength=len(texts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def split_separators(texts: pa.Array) -> pa.ListArray:
    """Split at runs of separators (anything but letters, marks and digits); empty pieces
    may remain. Rows of ASCII letters, digits and spaces only (most of an English corpus,
    once normalised) are split at spaces, about three times faster than the Unicode regex,
    which the other rows go through."""
    simple = pc.invert(pc.match_substring_regex(texts, _NOT_SIMPLE))
    if pc.all(simple).as_py() is not False:  # every row (or none at all)
        return pc.ascii_split_whitespace(texts)
    if not pc.any(simple).as_py():
        return pc.split_pattern_regex(texts, pattern=_SEPARATOR)
    others = pc.split_pattern_regex(pc.if_else(simple, "", texts), pattern=_SEPARATOR)
    return pc.if_else(simple, pc.ascii_split_whitespace(texts), others)


def split_long_line(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters, cut at the last whitespace before the limit
    (or at the limit when a piece has none); nothing is lost but the whitespace at cuts."""
    pieces = []
    while len(text) > limit:
        cut = max(text.rfind(" ", 0, limit + 1), text.rfind("\t", 0, limit + 1))
        if cut <= 0:
            cut = limit
        pieces.append(text[:cut])
        text = text[cut:].lstrip(" \t")
    pieces.append(text)
    return pieces
