"""The models training can run, registered by name, with their `[train.<name>]` sections.

A model is a `ModelSpec`: its config section (a frozen dataclass), the table it trains on,
the spec that trains it (`loop.ModelRun`, built when training starts) and what publishing
needs from it. `register_model` adds one; `get_model` finds one by `train.model`. Specs
outside the package register themselves when their module is imported: list the module in
`train.plugins`, which the config loader imports before it looks the model up (so a
torchrun worker, which only reads the run's config, finds it too).

This module does not import torch: parsing a config must stay cheap. Spec, evaluation and
file hooks are given as "module:name" strings (or callables) and imported when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from embedpipe.config import ConfigError
from embedpipe.corpus.registry import stages_for


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelSpec:
    """One trainable model as the loop, the config loader and publishing see it."""

    name: str
    section: type  # its [train.<name>] dataclass; every field has a default
    table: str  # the Workdir table it trains on (besides `vocab`)
    trainer: (
        str | Callable[..., Any]
    )  # builds its `loop.ModelRun`: (config, workdir, cluster, resumed)
    vectors: str = "input"  # checkpoint tensor published as the artefact's vectors
    # (summary, vectors, tokens, RunConfig) -> metrics; None: the word-vector benchmarks
    evaluate: str | Callable[..., Any] | None = None
    # (train_dir, summary, folder) -> {file name: path}: files published beside the vectors
    files: str | Callable[..., Any] | None = None

    @property
    def input_tables(self) -> tuple[str, str]:
        """The Workdir tables its training reads: its own and the vocabulary."""
        return (self.table, "vocab")


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """The callable a "module:name" reference names (a callable is returned as it is)."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Make `spec` available as `train.model = spec.name`; re-registering a name replaces it."""
    _MODELS[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    """The registered model `name`, or a ConfigError listing the known ones."""
    if name not in _MODELS:
        raise ConfigError(
            f"train.model: {name!r} is not a registered model (known: {', '.join(model_names())};"
            " a model of your own registers itself in a module listed in train.plugins)"
        )
    return _MODELS[name]


def corpus_stages(model: str) -> list[str]:
    """The corpus stages `model`'s training needs, in pipeline order: those writing its
    tables and every table they read (`embedpipe prepare` and the flow run these)."""
    return stages_for(get_model(model).input_tables)


def model_names() -> list[str]:
    return sorted(_MODELS)


def import_plugins(modules: tuple[str, ...] | list[str]) -> None:
    """Import the modules of `train.plugins` (each registers its models when imported)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"train.plugins: cannot import {module!r}: {e}") from e


@dataclass(frozen=True)
class Word2VecConfig:
    """`[train.sgns]` (and, with their own defaults, `[train.cbow]` and `[train.fasttext]`):
    window batches of centre words, plain SGD; each context predicts the centre word. The
    learning rate decays linearly from `lr` to `min_lr` over the run's words.
    """

    dim: int = 100
    window: int = 5
    negatives: int = 5
    # Negatives are drawn from count ** noise_power; None: the vocabulary's `noise_prob`
    # (vocab.noise_power, word2vec's and gensim's 0.75).
    noise_power: float | None = None
    lr: float = 0.025
    # word2vec.c decays to 0.0001. Ending at 0.0025 scored higher on every benchmark, for
    # skip-gram and CBOW on both bench corpora (bench/results/min_lr.json); it is about where
    # gensim's corpus_file mode ends with 2 workers (each decays by its share of an epoch).
    min_lr: float = 0.0025
    batch_size: int = 16384  # centre words per step and rank
    # Across ranks (`sync.RowSync`): corpus words a rank trains between exchanges of the
    # changed rows of the `sync_hot_rows` most frequent words (0: of every word); the rows of
    # the other words go at every `sync_rare_every`-th exchange; the share of the next
    # interval an exchange runs beside before it is applied; the number format. Chosen by
    # bench/scaleout.py: staleness, not traffic, cost the 2-rank scores (module `sync`).
    sync_every: int = 65_536
    sync_hot_rows: int = 4000
    sync_rare_every: int = 16
    sync_overlap: float = 0.5
    sync_payload: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        _check(self.sync_hot_rows >= 0, "sync_hot_rows must be >= 0")
        _check(0 < self.sync_overlap <= 1, "sync_overlap must be in (0, 1]")
        for name in ("dim", "window", "negatives", "batch_size", "sync_every", "sync_rare_every"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        _check(0 < self.min_lr <= self.lr, "min_lr must be in (0, lr]")
        _check(self.noise_power is None or self.noise_power > 0, "noise_power must be > 0")


@dataclass(frozen=True)
class CBOWConfig(Word2VecConfig):
    """`[train.cbow]`: the mean of the contexts predicts the centre word (gensim's
    cbow_mean=1), with every `[train.sgns]` knob and gensim's lr 0.025 (word2vec.c's is 0.05).

    Ranks exchange every 131,072 words, twice skip-gram's interval: a CBOW word trains in
    under half a skip-gram word's time, so at the same interval the exchange's fixed costs
    weigh twice as much, and the 2-rank scores stay within noise of one process at this
    staleness (bench/results/scaleout.json).
    """

    sync_every: int = 131_072


@dataclass(frozen=True)
class FastTextConfig(Word2VecConfig):
    """`[train.fasttext]`: skip-gram over subwords (Bojanowski et al. 2017), with every
    `[train.sgns]` knob, and fastText's learning rate (0.05) and noise distribution (count
    ** 0.5) as the defaults (0.5 against 0.75: the README's fastText bench).

    A word is the mean of its own vector and those of its character n-grams of `minn` to
    `maxn` characters (of `<word>`), hashed into `bucket` rows (`text.subwords`).

    `bucket` defaults to 500,000, not fastText's 2,000,000: only the n-grams of vocabulary
    words are ever trained (a few hundred thousand distinct ones for a vocabulary of about
    100k words), the other rows stay random, and every row costs `dim` floats in each
    table copy a rank holds (tables, exchange base), each checkpoint and the published
    artefact: 200 MB rather than 800 MB at dim 100. bench/results/fasttext.json lists
    the share of the n-grams that share a row at each size.
    """

    lr: float = 0.05
    min_lr: float = 0.0001  # measured with fastText's schedule (it decays to 0), not 0.0025
    noise_power: float | None = 0.5
    minn: int = 3
    maxn: int = 6
    bucket: int = 500_000

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(1 <= self.minn <= self.maxn, "minn and maxn must satisfy 1 <= minn <= maxn")
        _check(1 <= self.bucket < 2**31, "bucket must be in [1, 2**31)")


@dataclass(frozen=True)
class GloVeConfig:
    """`[train.glove]`: AdaGrad on the `cooccur` table (its window is `cooccur.window`).

    Weighting f(x) = min(1, (x / x_max) ** alpha); constant learning rate `lr` (0.05, as the
    Stanford tool).
    """

    dim: int = 100
    # Co-occurrence entries per step and rank; None: `CPU_BATCH` or `CUDA_BATCH` (`batch_for`).
    batch_size: int | None = None
    lr: float = 0.05
    x_max: float = 100.0
    alpha: float = 0.75
    # Across ranks: entries a rank trains between exchanges of the changed rows and AdaGrad
    # sums (`sync.RowSync`), the share of the next interval an exchange runs beside before
    # it is applied, and the exchange's number format.
    sync_every: int = 4_194_304
    sync_overlap: float = 1.0
    sync_payload: Literal["float32", "bfloat16"] = "float32"

    # Chosen by measurement (bench/defaults.py). On CPUs the kernel trains entry by entry, so
    # a large batch only pays per-step costs less often; on GPUs a batch is one AdaGrad step
    # on summed gradients, so it stays small enough that few of its entries share a row.
    CPU_BATCH: ClassVar[int] = 1_048_576
    CUDA_BATCH: ClassVar[int] = 65_536

    def batch_for(self, device_type: str) -> int:
        """Entries per step on a device of this type ("cpu", "cuda")."""
        if self.batch_size is not None:
            return self.batch_size
        return self.CUDA_BATCH if device_type == "cuda" else self.CPU_BATCH

    def __post_init__(self) -> None:
        for name in ("dim", "sync_every"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        _check(0 < self.sync_overlap <= 1, "sync_overlap must be in (0, 1]")
        _check(self.batch_size is None or self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.lr > 0, "lr must be > 0")
        _check(self.x_max > 0, "x_max must be > 0")
        _check(0 < self.alpha <= 1, "alpha must be in (0, 1]")


@dataclass(frozen=True)
class BucketLMConfig:
    """What the language models on the `buckets` table share (`[train.mlm]`, `[train.clm]`,
    `[train.bilm]`): batching, AdamW, the schedule and the held-out split.

    Each batch holds examples of one length bucket, at most `max_tokens` padded token slots
    per rank. AdamW at peak `lr` after `warmup_steps` of linear warm-up, then linear decay
    to 0 over the run's tokens. `heldout` of the sequences (chosen by a hash of their ids)
    are never trained on: their loss is measured before training and after every epoch.
    """

    max_len: int = 128  # longest example, special tokens included; longer sequences are cut
    max_tokens: int = 4096  # padded token slots per batch and rank (rows x longest row)
    dropout: float = 0.1
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 200
    weight_decay: float = 0.01  # AdamW's; never on biases and LayerNorm weights
    adam_betas: tuple[float, float] = (0.9, 0.98)
    clip_norm: float = 1.0  # gradient norm clipping; 0 disables
    tie_output: bool = True  # the output layer shares the input embedding matrix
    heldout: float = 0.02
    chunk_rows: int = 1024  # sequences read at once (a chunk's batches come from one bucket)
    amp: bool = True  # bf16/fp16 autocast, on CUDA only

    def __post_init__(self) -> None:
        for name in ("max_tokens", "chunk_rows"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        _check(self.max_len >= 4, "max_len must be >= 4")
        _check(
            self.max_tokens >= self.max_len,
            "max_tokens must be >= max_len (one longest example per batch)",
        )
        _check(0 <= self.dropout < 1, "dropout must be in [0, 1)")
        _check(0 <= self.heldout < 1, "heldout must be in [0, 1)")
        _check(self.lr > 0, "lr must be > 0")
        _check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(self.clip_norm >= 0, "clip_norm must be >= 0")
        _check(
            len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
            "adam_betas must be two numbers in [0, 1)",
        )


@dataclass(frozen=True)
class TransformerConfig(BucketLMConfig):
    """What `[train.mlm]` and `[train.clm]` share: a small Transformer (`BucketLMConfig`
    plus its shape)."""

    layers: int = 2
    heads: int = 4
    width: int = 128  # hidden size = the published input embedding's dimension
    ffn: int = 512  # feed-forward inner size

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("layers", "heads", "width", "ffn"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        _check(self.width % self.heads == 0, "width must be a multiple of heads")


@dataclass(frozen=True)
class MLMConfig(TransformerConfig):
    """`[train.mlm]`: a small BERT-style masked language model (`TransformerConfig` plus the
    masking). Examples are `[CLS] a [SEP]` or, with probability `pair_prob`,
    `[CLS] a [SEP] b [SEP]` (two sequences of the same bucket)."""

    mask_prob: float = 0.15  # share of ordinary tokens chosen as targets
    mask_token_prob: float = 0.8  # of the targets: replaced by [MASK]
    random_token_prob: float = 0.1  # ... by a random word; the rest are kept
    pair_prob: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.mask_prob < 1, "mask_prob must be in (0, 1)")
        _check(
            self.mask_token_prob >= 0
            and self.random_token_prob >= 0
            and self.mask_token_prob + self.random_token_prob <= 1,
            "mask_token_prob + random_token_prob must be in [0, 1]",
        )
        _check(0 <= self.pair_prob < 1, "pair_prob must be in [0, 1)")


@dataclass(frozen=True)
class CLMConfig(TransformerConfig):
    """`[train.clm]`: a small GPT-style causal language model (`TransformerConfig` as it is).

    Examples are `[CLS] a` ([CLS] begins every sequence); each position predicts the next
    token (cross-entropy over the ordinary tokens). No masking, no pairs.
    """


@dataclass(frozen=True)
class BiLMConfig(BucketLMConfig):
    """`[train.bilm]`: an ELMo-style bidirectional LSTM language model (`BucketLMConfig` plus
    its shape), over the vocabulary's tokens (words or SentencePiece pieces; no character
    CNN).

    Examples are `[CLS] a [SEP]`; a forward LSTM stack predicts each token of `a` from the
    ones before it, a separate backward stack from the ones after it (`train.bilm`). Each
    LSTM has `hidden` cells and, when `hidden > dim`, a projection of its output to `dim`
    (ELMo's LSTMP), so every layer gives `dim` per direction. `tie_output`: the softmax is
    the input embedding matrix (it is shared by the two directions either way).
    """

    dim: int = 128  # token embedding size = each direction's layer output size
    hidden: int = 512  # LSTM cells per direction and layer (>= dim)
    layers: int = 2  # LSTM layers per direction, as ELMo

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("dim", "hidden", "layers"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        _check(self.hidden >= self.dim, "hidden must be >= dim (the LSTM output is projected)")


_WORD2VEC = "embedpipe.train.specs.word2vec"
_LM_METRICS = "embedpipe.train.specs.transformer:publish_metrics"
register_model(ModelSpec("sgns", Word2VecConfig, "sequences", f"{_WORD2VEC}:SkipGramRun"))
register_model(ModelSpec("cbow", CBOWConfig, "sequences", f"{_WORD2VEC}:CBOWRun"))
register_model(
    ModelSpec(
        "fasttext",
        FastTextConfig,
        "sequences",
        "embedpipe.train.specs.fasttext:FastTextRun",
        vectors="vectors",
        files="embedpipe.train.specs.fasttext:write_subword_files",
    )
)
register_model(ModelSpec("glove", GloVeConfig, "cooccur", "embedpipe.train.specs.glove:GloVeRun"))
register_model(
    ModelSpec(
        "mlm",
        MLMConfig,
        "buckets",
        "embedpipe.train.specs.mlm:MaskedLMRun",
        evaluate=_LM_METRICS,
        files="embedpipe.artefacts.encoder:write_encoder_files",
    )
)
register_model(
    ModelSpec(
        "clm",
        CLMConfig,
        "buckets",
        "embedpipe.train.specs.clm:CausalLMRun",
        evaluate=_LM_METRICS,
        files="embedpipe.artefacts.decoder:write_decoder_files",
    )
)
register_model(
    ModelSpec(
        "bilm",
        BiLMConfig,
        "buckets",
        "embedpipe.train.specs.bilm:BiLMRun",
        evaluate=_LM_METRICS,
        files="embedpipe.artefacts.bilm:write_bilm_files",
    )
)
