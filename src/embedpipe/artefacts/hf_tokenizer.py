"""An artefact's tokenizer as a `tokenizers.Tokenizer` giving the artefact's own token ids.

Word vocabularies (`text.tokenizer.tokenize_line`): NFKC, lower-casing, URLs to "url" and
digits to "0" as configured, then runs of letters, marks and digits (Han, Hiragana and
Katakana characters alone) looked up in the vocabulary, [UNK] for the rest. Known
differences: the `tokenizers` library knows a newer Unicode version than Python 3.11 (a few
dozen characters added since lower-case and split differently); "[CLS]", "[MASK]" and the
other special tokens written in the text are the special tokens, where the artefact's own
tokenizer reads the word "cls" (this is what lets a fill-mask pipeline read "[MASK]").

SentencePiece vocabularies (`text.sentencepiece`): NFKC and lower-casing, then the model's
own normaliser (its precompiled character map, whitespace rules, dummy prefix) and its
segmentation (unigram or BPE, pieces scored as in the model), each piece mapped to its row
in the artefact's vocabulary, which holds the pieces the corpus used often enough
(`vocab.min_count`). A piece of the model that is not in the vocabulary gets an id after the
vocabulary's (`extra_pieces`): the artefact itself reads it as [UNK], so exports give those
ids the [UNK] row; the text's segmentation is then exactly the model's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from embedpipe.schemas import CLS, SEP, SPECIAL_TOKENS, UNK, UNK_ID

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from embedpipe.artefacts.keyed import Embeddings
    from embedpipe.config import TokenizeConfig

UNK_PENALTY = 10.0  # SentencePiece scores an unknown piece this far below its lowest piece
NORMAL, USER_DEFINED = 1, 4  # SentencePiece piece types that segment text


def artefact_tokenizer(
    emb: Embeddings, frame: Literal["encoder", "decoder"] | None = "encoder"
) -> tuple[Tokenizer, list[str]]:
    """(tokenizer, extra pieces) of the artefact `emb`: ids are rows of `emb.vectors`, then
    one per extra piece (SentencePiece pieces missing from the vocabulary, which the artefact
    reads as [UNK]). `frame`: the special tokens encoding adds, as the model saw its input:
    "encoder", [CLS] a [SEP] (b [SEP], segment 1), the masked LM; "decoder", [CLS] a, the
    causal LM; None, nothing (static vectors)."""
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing

    config = emb.tokenize_config()
    if emb.tokenizer_model is not None:
        tokenizer, extra = sentencepiece_tokenizer(emb.tokenizer_model, emb.vocab, config)
    else:
        tokenizer, extra = word_tokenizer(emb.vocab, config), []
    ids = emb.key_to_index
    specials = [t for t in SPECIAL_TOKENS if t in ids]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if frame is not None:
        missing = [t for t in ((CLS, SEP) if frame == "encoder" else (CLS,)) if t not in ids]
        if missing:
            raise ValueError(f"{emb.path or 'the vocabulary'} lacks the special tokens {missing}")
        if frame == "encoder":
            single, pair = f"{CLS} $A {SEP}", f"{CLS} $A {SEP} $B:1 {SEP}:1"
        else:
            single, pair = f"{CLS} $A", f"{CLS} $A $B"
        tokenizer.post_processor = TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, ids[t]) for t in (CLS, SEP) if t in ids]
        )
    return tokenizer, extra


def text_normalizers(config: TokenizeConfig) -> list[Any]:
    """NFKC and lower-casing as configured, the steps every tokenizer of ours starts with.

    Lower-casing is one character to one (as Arrow's utf8_lower and `tokenize_line` do):
    "İ" (U+0130) becomes "i", not "i" and a combining dot as a full mapping would make it.
    """
    from tokenizers import normalizers

    steps: list[Any] = [normalizers.NFKC()] if config.nfkc else []
    if config.lowercase:
        steps += [normalizers.Replace("\u0130", "i"), normalizers.Lowercase()]
    return steps


def word_tokenizer(vocab: list[str], config: TokenizeConfig) -> Tokenizer:
    """`tokenize_line` with `config` and a word-level lookup in `vocab` ([UNK] if absent)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    from embedpipe.text.tokenizer import CJK_PATTERN, SEPARATOR_PATTERN, URL_PATTERN, URL_TOKEN

    if UNK not in vocab:
        raise ValueError(f"the vocabulary lacks {UNK}: unknown words would have no id")
    tokenizer = Tokenizer(WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    steps = text_normalizers(config)
    if config.urls:
        steps.append(normalizers.Replace(Regex(URL_PATTERN), f" {URL_TOKEN} "))
    if config.digits:
        steps.append(normalizers.Replace(Regex(r"\p{Nd}"), "0"))
    if steps:
        tokenizer.normalizer = normalizers.Sequence(steps)
    split = [pre_tokenizers.Split(Regex(SEPARATOR_PATTERN), behavior="removed")]
    if config.cjk_chars:
        split.append(pre_tokenizers.Split(Regex(CJK_PATTERN), behavior="isolated"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(split)
    return tokenizer


def sentencepiece_tokenizer(
    model: bytes, vocab: list[str], config: TokenizeConfig
) -> tuple[Tokenizer, list[str]]:
    """(tokenizer, extra pieces) for a SentencePiece `model` (serialized) whose pieces are
    looked up in `vocab`: `normalize_arrow` with `config`, then the model's own encoding."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Tokenizer
    from tokenizers.models import BPE, Unigram

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    if proto.trainer_spec.byte_fallback or any(p.type == USER_DEFINED for p in proto.pieces):
        raise ValueError(
            "SentencePiece models with byte fallback or user-defined pieces are not supported"
        )
    pieces = [(p.piece, p.score) for p in proto.pieces if p.type == NORMAL]
    known = set(vocab)
    extra = [piece for piece, _ in pieces if piece not in known]
    ids = {token: i for i, token in enumerate([*vocab, *extra])}
    if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
        tokenizer = Tokenizer(
            BPE(ids, bpe_merges(pieces), unk_token=UNK, fuse_unk=True, dropout=None)
        )
    else:
        scores = dict(pieces)
        floor = min(scores.values(), default=0.0) - UNK_PENALTY
        table = [(token, scores.get(token, floor)) for token in ids]
        tokenizer = Tokenizer(Unigram(table, unk_id=UNK_ID, byte_fallback=False))
    _sentencepiece_pipeline(tokenizer, proto, config)
    return tokenizer, extra


def bpe_merges(pieces: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """BPE merges of SentencePiece BPE pieces: every split of a piece into two pieces, the
    higher-scored (earlier) piece first, as SentencePiece merges them."""
    rank = {piece: (-score, i) for i, (piece, score) in enumerate(pieces)}
    ranked = [
        (rank[piece], piece[:k], piece[k:])
        for piece in rank
        for k in range(1, len(piece))
        if piece[:k] in rank and piece[k:] in rank
    ]
    return [(left, right) for _, left, right in sorted(ranked)]


def _sentencepiece_pipeline(tokenizer: Tokenizer, proto: Any, config: TokenizeConfig) -> None:
    """Normaliser, pre-tokenizer and decoder of `tokenizer` as `normalize_arrow` (with
    `config`) then the SentencePiece model `proto` do."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    spec = proto.normalizer_spec
    steps = text_normalizers(config)
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # spaces only: SentencePiece leaves newlines alone
        steps += [
            normalizers.Replace(Regex(r"\A +| +\z"), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "\u2581"))
    if spec.add_dummy_prefix:
        # Metaspace adds no prefix to a text starting with "▁"; SentencePiece always does.
        steps.append(normalizers.Replace(Regex("\\A\u2581"), "\u2581\u2581"))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="always", split=False
        )
    tokenizer.normalizer = normalizers.Sequence(steps)
    steps = [decoders.Replace("\u2581", " ")]
    if spec.add_dummy_prefix:
        steps += [decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    tokenizer.decoder = decoders.Sequence(steps)
