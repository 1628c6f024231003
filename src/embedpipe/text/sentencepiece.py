"""SentencePiece (unigram or BPE): trained once on a sample, applied in Arrow batches.

Text is normalised first exactly as the word tokenizer does (NFKC, lower-case), so a
model trained on a sample sees what it will later encode. The model travels as bytes
(its serialized proto) to Spark executors; nothing is read from disk there.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import sentencepiece as spm

from embedpipe.config import TokenizeConfig
from embedpipe.text.tokenizer import nfkc_arrow
from embedpipe.workdir import TOKENIZER_MODEL

MODEL_FILE = TOKENIZER_MODEL  # beside the tokens table


def normalize_arrow(texts: pa.Array, config: TokenizeConfig) -> pa.Array:
    """NFKC and lower-casing as configured; null text becomes ""."""
    texts = pc.fill_null(texts, "")
    if config.nfkc:
        texts = nfkc_arrow(texts)
    if config.lowercase:
        texts = pc.utf8_lower(texts)
    return texts


def train_sentencepiece(lines: Iterable[str], config: TokenizeConfig) -> bytes:
    """Train a model on normalised lines; returns the serialized model."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type=config.sp_model_type,
        vocab_size=config.sp_vocab_size,
        character_coverage=config.sp_character_coverage,
        # The sample is drawn (seeded) by Spark: use all of it, in order, for a repeatable model.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        hard_vocab_limit=False,
        num_threads=2,
        minloglevel=2,
    )
    return model.getvalue()


def load_processor(model: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=model)


def encode_pieces_arrow(
    texts: pa.Array, processor: spm.SentencePieceProcessor, config: TokenizeConfig
) -> pa.ListArray:
    """Piece strings of every text (one batched SentencePiece call per Arrow batch)."""
    normalized = normalize_arrow(texts, config).to_pylist()
    return pa.array(processor.encode(normalized, out_type=str), pa.list_(pa.string()))
