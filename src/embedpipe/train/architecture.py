"""The language models' architectures (`EncoderConfig`, `DecoderConfig`, `BidirectionalConfig`)
and the special token ids they use, without torch: loading a language-model artefact checks its
encoder.json against them with the core install alone (`pip install embedpipe`); the models are
in `train.mlm`, `train.clm` and `train.bilm`, the Transformers' shared layers in
`train.transformer`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from embedpipe import schemas as S
from embedpipe.train.registry import BiLMConfig, CLMConfig, MLMConfig

PAD_ID = S.PAD_ID
UNK_ID = S.UNK_ID
CLS_ID = S.SPECIAL_TOKENS.index(S.CLS)
SEP_ID = S.SPECIAL_TOKENS.index(S.SEP)
MASK_ID = S.SPECIAL_TOKENS.index(S.MASK)
BOS_ID = CLS_ID  # [CLS] begins every causal-LM and biLM example
EOS_ID = SEP_ID  # [SEP] ends every biLM example
N_SPECIAL = len(S.SPECIAL_TOKENS)  # ids below this are never targets nor random replacements

A = TypeVar("A", bound="Architecture")


class Architecture:
    """A model's architecture as a frozen dataclass: checked, and round-tripped as a dict."""

    vocab_size: int
    width: int
    heads: int

    def check_shape(self) -> None:
        if self.vocab_size <= N_SPECIAL:
            raise ValueError(f"vocab_size must exceed the {N_SPECIAL} special tokens")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[A], data: dict[str, Any]) -> A:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            kind = cls.__name__.removesuffix("Config").lower()  # "encoder", "decoder"
            raise ValueError(f"unknown {kind} config key(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class EncoderConfig(Architecture):
    """The architecture of a `MaskedLM`: everything needed to rebuild it from its weights."""

    vocab_size: int
    width: int = 128
    layers: int = 2
    heads: int = 4
    ffn: int = 512
    max_len: int = 128
    dropout: float = 0.1
    tie_output: bool = True
    segments: int = 2
    norm: str = "pre"  # LayerNorm before each sub-layer, plus one after the last layer
    activation: str = "gelu"
    pad_id: int = PAD_ID
    cls_id: int = CLS_ID
    sep_id: int = SEP_ID
    mask_id: int = MASK_ID

    def __post_init__(self) -> None:
        self.check_shape()

    @classmethod
    def from_mlm(cls, config: MLMConfig, vocab_size: int) -> EncoderConfig:
        return cls(
            vocab_size=vocab_size,
            width=config.width,
            layers=config.layers,
            heads=config.heads,
            ffn=config.ffn,
            max_len=config.max_len,
            dropout=config.dropout,
            tie_output=config.tie_output,
        )


@dataclass(frozen=True)
class DecoderConfig(Architecture):
    """The architecture of a `CausalLM`: everything needed to rebuild it from its weights."""

    vocab_size: int
    width: int = 128
    layers: int = 2
    heads: int = 4
    ffn: int = 512
    max_len: int = 128
    dropout: float = 0.1
    tie_output: bool = True
    norm: str = "pre"  # LayerNorm before each sub-layer, plus one after the last layer
    activation: str = "gelu"
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID

    def __post_init__(self) -> None:
        self.check_shape()

    @classmethod
    def from_clm(cls, config: CLMConfig, vocab_size: int) -> DecoderConfig:
        return cls(
            vocab_size=vocab_size,
            width=config.width,
            layers=config.layers,
            heads=config.heads,
            ffn=config.ffn,
            max_len=config.max_len,
            dropout=config.dropout,
            tie_output=config.tie_output,
        )


@dataclass(frozen=True)
class BidirectionalConfig(Architecture):
    """The architecture of a `BiLM`: everything needed to rebuild it from its weights."""

    vocab_size: int
    width: int = 128  # token embedding = each direction's output per layer
    hidden: int = 512  # LSTM cells; projected to width when larger
    layers: int = 2
    max_len: int = 128
    dropout: float = 0.1
    tie_output: bool = True
    residual: bool = True  # layer k > 1 adds its input
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def __post_init__(self) -> None:
        if self.vocab_size <= N_SPECIAL:
            raise ValueError(f"vocab_size must exceed the {N_SPECIAL} special tokens")
        if self.hidden < self.width:
            raise ValueError(f"hidden {self.hidden} must be >= width {self.width}")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")

    @classmethod
    def from_bilm(cls, config: BiLMConfig, vocab_size: int) -> BidirectionalConfig:
        return cls(
            vocab_size=vocab_size,
            width=config.dim,
            hidden=config.hidden,
            layers=config.layers,
            max_len=config.max_len,
            dropout=config.dropout,
            tie_output=config.tie_output,
        )
