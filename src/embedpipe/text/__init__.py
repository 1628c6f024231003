"""Text normalisation and tokenizers: pure functions over strings and Arrow arrays."""

from embedpipe.text.tokenizer import tokenize_arrow, tokenize_line

__all__ = ["tokenize_arrow", "tokenize_line"]
