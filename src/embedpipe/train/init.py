"""Continued training (`train.init_from`): a run starts from a published artefact's weights.

Like a resume of the weights only: the optimizer, the schedule and the data cursor start
fresh. The one rule, for every table with a row per token: rows are matched by token
string (`map_rows`): a token the parent knows copies its parent row, a new one keeps the
spec's fresh initialisation, and parent tokens missing from the new vocabulary are
dropped. What each model takes from the artefact (only what it publishes):

* sgns, cbow: the input table from the vectors; the output table is not published, so it
  starts fresh (zero, as word2vec's);
* glove: the artefact holds W + C, so W and C both start at half the parent's vector (their
  sum, the published vector, equals the parent's); biases and AdaGrad sums start fresh;
* fasttext: the n-gram table is copied whole (same `bucket`, `minn`, `maxn` required) and a
  known word's own row is set so that its subword mean equals the parent's vector;
* mlm, clm, bilm: every weight of the model (the architecture must match, `vocab_size`
  and `dropout` aside), and the token embedding, output bias (and untied output matrix)
  by token.

The parent is found by `resolve_parent` (manifest only: cheap, for the run's fingerprint,
which includes its content hash) and loaded, verified, by `start_from`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from embedpipe import schemas as S
from embedpipe.artefacts.files import ArtefactError, Location, as_location
from embedpipe.artefacts.integrity import read_manifest
from embedpipe.artefacts.keyed import Embeddings
from embedpipe.artefacts.loader import read_embeddings
from embedpipe.artefacts.store import open_store
from embedpipe.config import ConfigError, TrainConfig
from embedpipe.config.sections import parse_init_from
from embedpipe.workdir import Workdir

FIELD = "train.init_from"


@dataclass(frozen=True)
class ParentRef:
    """The published version a run starts from: its identity and where it is."""

    name: str
    version: str
    sha256: str  # `Manifest.content_sha256`
    location: Location

    def identity(self) -> dict[str, str]:
        """What the summary and the child's manifest record of the parent."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def resolve_parent(init_from: str, store: str | os.PathLike[str] | None = None) -> ParentRef:
    """The version `init_from` names ("NAME@VERSION", "NAME" or a version directory) in
    `store` (None: `artefacts.store_root`); reads its manifest only. ConfigError naming
    `train.init_from` when there is no such artefact or version."""
    reference = parse_init_from(init_from)
    try:
        if reference is None:
            location = as_location(os.path.expanduser(init_from))
        else:
            location = open_store(store).resolve(*reference)
        manifest = read_manifest(location)
    except ArtefactError as e:
        raise ConfigError(f"{FIELD} = {init_from!r}: {e}") from None
    return ParentRef(manifest.name, manifest.version, manifest.content_sha256(), location)


@dataclass(frozen=True)
class RowMap:
    """Rows of the new vocabulary matched by token to rows of the parent's."""

    rows: np.ndarray  # int64: rows of the new vocabulary the parent knows
    parent_rows: np.ndarray  # int64: their rows in the parent
    kept: int  # words (special tokens aside) in both
    new: int  # words only in the new vocabulary
    dropped: int  # words only in the parent's

    def counts(self) -> dict[str, int]:
        return {"kept": self.kept, "new": self.new, "dropped": self.dropped}


def map_rows(parent_tokens: Sequence[str], tokens: Sequence[str]) -> RowMap:
    """Match `tokens` (the new vocabulary, by id) to `parent_tokens` by string."""
    index = {token: i for i, token in enumerate(parent_tokens)}
    pairs = [(i, index[t]) for i, t in enumerate(tokens) if t in index]
    rows = np.array([p[0] for p in pairs], dtype=np.int64)
    parent_rows = np.array([p[1] for p in pairs], dtype=np.int64)
    specials = set(S.SPECIAL_TOKENS)
    words, parent_words = set(tokens) - specials, set(parent_tokens) - specials
    kept = len(words & parent_words)
    return RowMap(rows, parent_rows, kept, len(words) - kept, len(parent_words) - kept)


class Parent:
    """A loaded parent artefact mapped onto the new vocabulary: what a spec starts from."""

    def __init__(self, ref: ParentRef, emb: Embeddings, tokens: Sequence[str]) -> None:
        self.ref, self.emb = ref, emb
        self.map = map_rows(emb.vocab, tokens)

    def __repr__(self) -> str:
        return f"Parent({self.ref.name} {self.ref.version}: {self.map.counts()})"

    def check_dim(self, dim: int, field: str) -> None:
        """ConfigError naming both dimensions when the parent's differs from `dim`."""
        if self.emb.dim != dim:
            raise ConfigError(
                f"{FIELD}: {self.ref.name} {self.ref.version} has dimension {self.emb.dim}, "
                f"{field} is {dim}"
            )

    def copy_rows(self, table: torch.Tensor, source: np.ndarray, scale: float = 1.0) -> None:
        """Set the rows of `table` (new vocabulary) the parent knows to `scale` times their
        rows of `source` (parent vocabulary); the other rows keep their values."""
        rows = torch.from_numpy(self.map.rows).to(table.device)
        values = torch.from_numpy(np.ascontiguousarray(source[self.map.parent_rows]))
        with torch.no_grad():
            table[rows] = (values * scale).to(table.device, table.dtype)

    def summary(self) -> dict[str, Any]:
        """The summary's record of the start: the parent and the word counts."""
        return {"parent": self.ref.identity(), "init": self.map.counts()}


def start_from(
    config: TrainConfig, workdir: Workdir, store: str | os.PathLike[str] | None = None
) -> Parent | None:
    """The parent of `config.init_from` (verified), mapped onto the workdir's vocabulary;
    None for a fresh start."""
    if config.init_from is None:
        return None
    ref = resolve_parent(config.init_from, store)
    try:
        emb = read_embeddings(ref.location)
    except ArtefactError as e:
        raise ConfigError(f"{FIELD} = {config.init_from!r}: {e}") from None
    vocab = pq.read_table(workdir.table_path("vocab"), columns=[S.ID, S.TOKEN]).sort_by(S.ID)
    return Parent(ref, emb, vocab.column(S.TOKEN).to_pylist())


def init_subwords(
    parent: Parent, table: torch.Tensor, index: Any, settings: dict[str, int]
) -> None:
    """fasttext: copy the parent's n-gram table into `table` (V word rows, then `bucket`
    n-gram rows) and set each known word's own row so its subword mean (`index`: the
    `SubwordIndex`) equals the parent's vector. `settings`: this run's minn, maxn, bucket."""
    from embedpipe.artefacts.subwords import SubwordEmbeddings
    from embedpipe.train.subwords import compose

    emb = parent.emb
    if not isinstance(emb, SubwordEmbeddings):
        raise ConfigError(f"{FIELD}: {parent.ref.name} {parent.ref.version} has no n-gram table")
    theirs = {"minn": emb.minn, "maxn": emb.maxn, "bucket": emb.bucket}
    for key, value in settings.items():
        if theirs[key] != value:
            raise ConfigError(
                f"{FIELD}: {parent.ref.name} {parent.ref.version} has {key} {theirs[key]}, "
                f"train.fasttext.{key} is {value}"
            )
    vocab = len(index.offsets) - 1
    rows = parent.map.rows
    with torch.no_grad():
        table[vocab:] = torch.from_numpy(emb.ngrams)
        table[rows] = 0.0
        partial = compose(table.detach().numpy(), index.offsets, index.rows)[rows]  # n-gram sum / k
    k = (index.offsets[rows + 1] - index.offsets[rows]).astype(np.float32)[:, None]
    own = k * (emb.vectors[parent.map.parent_rows] - partial)
    with torch.no_grad():
        table[rows] = torch.from_numpy(own)


# Encoder fields that are not part of the weights' architecture.
NOT_ARCHITECTURE = ("vocab_size", "dropout")
VOCAB_WEIGHTS = ("token.weight", "output_bias", "output.weight")  # one row per token


def init_language_model(
    parent: Parent, model: torch.nn.Module, architecture: Any, state_key: str
) -> None:
    """mlm, clm, bilm: the parent's model weights into `model` (of `architecture`, which
    artefacts keep under `state_key`: "encoder", "decoder", "bilm"), the token-indexed ones
    by token. ConfigError when the parent is another kind of model, or naming the first
    field of the architecture that differs."""
    from embedpipe.artefacts.contextual import LanguageModelEmbeddings

    emb, where = parent.emb, f"{parent.ref.name} {parent.ref.version}"
    if not isinstance(emb, LanguageModelEmbeddings) or emb.state_key != state_key:
        kind = emb.state_key if isinstance(emb, LanguageModelEmbeddings) else "no model"
        raise ConfigError(f"{FIELD}: {where} has {kind}, not the {state_key} this run trains")
    ours = architecture.to_dict()
    for key, value in emb.encoder_config.items():
        if key not in NOT_ARCHITECTURE and ours.get(key) != value:
            raise ConfigError(
                f"{FIELD}: {where} has {key} {value!r}, this run's {state_key} has "
                f"{ours.get(key)!r}"
            )
    weights = {**emb.encoder_weights, "token.weight": emb.vectors}
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ConfigError(f"{FIELD}: {where} lacks the {state_key} weights {', '.join(missing)}")
    for name, p in params.items():
        source = weights[name]
        if name in VOCAB_WEIGHTS:
            parent.copy_rows(p, source)
        else:
            with torch.no_grad():
                p.copy_(torch.from_numpy(np.ascontiguousarray(source)))
