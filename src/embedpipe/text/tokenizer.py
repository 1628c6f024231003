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

import functools
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from embedpipe.config import TokenizeConfig
from embedpipe.text.normalise import fold_digit, normalise_text

SEPARATOR_PATTERN = r"[^\p{L}\p{M}\p{N}]+"
CJK_PATTERN = r"[\p{Han}\p{Hiragana}\p{Katakana}]"
# A URL runs to the first whitespace or non-ASCII character (the same in RE2 and Python).
# Case is spelled out instead of (?i): RE2 and Python fold non-ASCII letters differently
# under (?i) (Python's [!-~] matches "İ", U+0130, as "i"; RE2's does not).
URL_PATTERN = r"(?:[hH][tT][tT][pP][sS]?://|[wW][wW][wW]\.)[!-~]+"
URL_TOKEN = "url"

_URL = re.compile(URL_PATTERN)
_BLANKS = re.compile(r"[ \t]+")
_CJK_CHAR = regex.compile(CJK_PATTERN)


def tokenize_line(text: str, config: TokenizeConfig = TokenizeConfig()) -> list[str]:
    """Tokens of one line of text."""
    text = normalise_text(text, config.nfkc, config.lowercase)
    if config.urls:
        text = _URL.sub(f" {URL_TOKEN} ", text)
    tokens, current = [], []
    for ch in text:
        if unicodedata.category(ch)[0] not in "LMN":
            if current:
                tokens.append("".join(current))
                current = []
            continue
        if config.digits:
            ch = fold_digit(ch)
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
    """Tokens of every string in an Arrow array, as list<string>; null text gives [].

    Rows of ASCII text (most of an English corpus) take a byte-level path: NFKC leaves them
    as they are, and case, digits and separators are single bytes, mapped by one table
    lookup over the batch's bytes. The other rows go through Arrow's Unicode kernels and
    RE2, their separators replaced by spaces. Then both are cut into runs of word bytes.
    """
    texts = pc.fill_null(texts, "").cast(pa.string())
    is_ascii = pc.string_is_ascii(texts)
    mapped = _map_ascii(texts, config)
    if config.urls:
        candidates = pc.and_(is_ascii, _may_hold_url(mapped, config))
        if pc.any(candidates).as_py():
            urls = pc.replace_substring_regex(
                mapped.filter(candidates), URL_PATTERN, f" {URL_TOKEN} "
            )
            mapped = pc.replace_with_mask(mapped, candidates, _map_ascii(urls, config))
    if pc.all(is_ascii).as_py() is False:
        others = pc.invert(is_ascii)
        normalised = _normalise_unicode(texts.filter(others), config)
        mapped = pc.replace_with_mask(mapped, others, normalised)
    return split_words(mapped)


def _map_ascii(texts: pa.StringArray, config: TokenizeConfig) -> pa.StringArray:
    """`texts` with every byte mapped through the ASCII table of `config` (same offsets):
    lower-case, digits to "0"; bytes of multi-byte characters are left as they are."""
    offsets, data = _string_buffers(texts)
    lo, hi = int(offsets[0]), int(offsets[-1])
    mapped = _ascii_table(config.lowercase, config.digits)[data[lo:hi]]
    new_offsets = (offsets - lo).astype(np.int32)
    return pa.StringArray.from_buffers(len(texts), pa.py_buffer(new_offsets), pa.py_buffer(mapped))


def _ascii_table(lowercase: bool, digits: bool) -> np.ndarray:
    table = np.arange(256, dtype=np.uint8)
    if lowercase:
        table[ord("A") : ord("Z") + 1] += 32
    if digits:
        table[ord("0") : ord("9") + 1] = ord("0")
    return table


def _may_hold_url(texts: pa.StringArray, config: TokenizeConfig) -> pa.BooleanArray:
    """Rows that hold "://" or "www." (any case): the only ones URL_PATTERN can match."""
    www = pc.match_substring(texts, "www.", ignore_case=not config.lowercase)
    return pc.or_(pc.match_substring(texts, "://"), www)


@functools.cache
def arrow_composes() -> bool:
    """Whether Arrow's utf8_normalize composes: before pyarrow 26 its NFC and NFKC returned
    the decomposed forms, "é" as "e" + U+0301 (apache/arrow#51225)."""
    return pc.utf8_normalize(pa.array(["e\u0301"]), form="NFKC")[0].as_py() == "\u00e9"


def nfkc_arrow(texts: pa.Array) -> pa.Array:
    """NFKC of every string, as `unicodedata.normalize` gives it: Arrow's kernel where it
    composes, else Python's (a batch of pure ASCII, its own NFKC, is returned as it is)."""
    if arrow_composes():
        return pc.utf8_normalize(texts, form="NFKC")
    if pc.all(pc.string_is_ascii(texts)).as_py() is not False:
        return texts
    return pa.array(
        [t if t is None else unicodedata.normalize("NFKC", t) for t in texts.to_pylist()],
        texts.type,
    )


def _normalise_unicode(texts: pa.StringArray, config: TokenizeConfig) -> pa.StringArray:
    """The steps of `tokenize_line` for any text, with every run of separators (anything
    but letters, marks and digits) replaced by one space."""
    if config.nfkc:
        texts = nfkc_arrow(texts)
    if config.lowercase:
        texts = pc.utf8_lower(texts)
    if config.urls:
        texts = pc.replace_substring_regex(texts, URL_PATTERN, f" {URL_TOKEN} ")
    if config.digits:
        texts = pc.replace_substring_regex(texts, r"\p{Nd}", "0")
    if config.cjk_chars:
        texts = pc.replace_substring_regex(texts, f"({CJK_PATTERN})", r" \1 ")
    return pc.replace_substring_regex(texts, SEPARATOR_PATTERN, " ").cast(pa.string())


# Word bytes once separators are spaces: ASCII letters and digits, and every byte of a
# multi-byte character (only letters, marks and digits are left by then).
_WORD_BYTE = np.zeros(256, bool)
for _lo, _hi in ("AZ", "az", "09"):
    _WORD_BYTE[ord(_lo) : ord(_hi) + 1] = True
_WORD_BYTE[0x80:] = True


def split_words(texts: pa.StringArray) -> pa.ListArray:
    """Maximal runs of word bytes of each string (ASCII letters and digits, multi-byte
    characters), as list<string>: every other byte separates."""
    offsets, data = _string_buffers(texts)
    lo, hi = int(offsets[0]), int(offsets[-1])
    body = data[lo:hi]
    rows = (offsets - lo).astype(np.int64)
    word = _WORD_BYTE[body]
    # A token starts at a word byte that begins a row or follows a non-word byte, and ends
    # (exclusive) after a word byte that ends a row or precedes a non-word byte.
    before = np.empty(len(body), bool)
    if len(body):
        before[0] = False
        before[1:] = word[:-1]
        before[rows[:-1][rows[:-1] < len(body)]] = False
    starts = np.flatnonzero(word & ~before)
    after = np.empty(len(body), bool)
    if len(body):
        after[-1] = False
        after[:-1] = word[1:]
        after[rows[1:][rows[1:] > 0] - 1] = False
    ends = np.flatnonzero(word & ~after) + 1
    token_offsets = np.zeros(len(starts) + 1, np.int32)
    np.cumsum(ends - starts, out=token_offsets[1:])
    values = pa.StringArray.from_buffers(
        len(starts), pa.py_buffer(token_offsets), pa.py_buffer(body[word])
    )
    list_offsets = np.searchsorted(starts, rows, side="left").astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(list_offsets), values)


def _string_buffers(texts: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data bytes) of a string array without nulls (offsets of its slice)."""
    n = len(texts)
    buffers = texts.buffers()
    offsets = np.frombuffer(buffers[1], np.int32, count=n + 1, offset=4 * texts.offset)
    data = buffers[2]
    return offsets, (np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8))


def split_long_line(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters, cut at the last whitespace before the limit
    (or at the limit when a piece has none); nothing is lost but the whitespace at cuts."""
    pieces = []
    start, end = 0, len(text)
    while end - start > limit:  # by index: no copy of the rest per piece
        stop = start + limit + 1
        cut = max(text.rfind(" ", start, stop), text.rfind("\t", start, stop))
        if cut <= start:
            cut = start + limit
        pieces.append(text[start:cut])
        blank = _BLANKS.match(text, cut)
        start = blank.end() if blank else cut
    pieces.append(text[start:])
    return pieces
