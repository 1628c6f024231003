"""Word-level tokenizer: NFKC, lower-case, then maximal runs of letters, marks and digits.

`tokenize_arrow` is the vectorised form the Spark jobs apply to Arrow batches
(Arrow's UTF-8 kernels and RE2, no per-row Python); `tokenize_line` is the
plain-Python definition of the same thing, used by the CLI, the loaders and as the
reference in tests. Punctuation and whitespace separate tokens and are dropped,
so "don't" gives "don", "t" (as in text8 and the GloVe/word2vec preprocessing scripts).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedpipe.config import TokenizeConfig

_SEPARATOR = r"[^\p{L}\p{M}\p{N}]+"


def tokenize_line(text: str, config: TokenizeConfig = TokenizeConfig()) -> list[str]:
    """Tokens of one line of text."""
    if config.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if config.lowercase:
        # Simple (one-to-one) case mapping per character, as Arrow's utf8_lower does:
        # "İ" -> "i", and no context rule for a final sigma.
        text = "".join(ch.lower()[:1] for ch in text)
    tokens, current = [], []
    for ch in text:
        if unicodedata.category(ch)[0] in "LMN":
            current.append(ch)
        elif current:
            tokens.append("".join(current))
            current = []
    if current:
        tokens.append("".join(current))
    return tokens


def tokenize_arrow(texts: pa.Array, config: TokenizeConfig = TokenizeConfig()) -> pa.ListArray:
    """Tokens of every string in an Arrow array, as list<string>; null text gives []."""
    if config.nfkc:
        texts = pc.utf8_normalize(texts, form="NFKC")
    if config.lowercase:
        texts = pc.utf8_lower(texts)
    parts = pc.split_pattern_regex(pc.fill_null(texts, ""), pattern=_SEPARATOR)
    flat = pc.list_flatten(parts)
    parents = pc.list_parent_indices(parts)
    keep = pc.greater(pc.binary_length(flat), 0)
    flat = flat.filter(keep)
    counts = np.bincount(parents.filter(keep).to_numpy(), minlength=len(texts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat)
