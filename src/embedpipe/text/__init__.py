"""Text normalisation and tokenizers: pure functions over strings and Arrow arrays.

The tokenizers are imported on first use, so `embedpipe.text.normalise` (standard library
only, used by word lookups in loaded vectors) does not pull in the tokenizer's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedpipe.text.tokenizer import tokenize_arrow, tokenize_line

__all__ = ["tokenize_arrow", "tokenize_line"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from embedpipe.text import tokenizer

        return getattr(tokenizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
