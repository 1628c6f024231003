"""Batches of the Transformer LMs from the `buckets` table: one length bucket per batch.

Each rank takes rows [rank * N / world, (rank + 1) * N / world) of every bucket, in chunks of
`chunk_rows` sequences. An epoch visits the chunks in a seeded shuffled interleaving of the
buckets (`visit_order`; a bucket's own chunks keep their order, so each row group is read
once per epoch). Within a chunk, the held-out sequences (`heldout_mask`) are set aside, the
rest are cut into pieces that fit an example (`piece_length`), shuffled and framed
(`plan_examples`; the masked LM pairs them, `[CLS] a [SEP] b [SEP]` with probability
`pair_prob`), sorted by length and cut into batches of at most `max_tokens` padded slots
(`token_budget_batches`), which are then shuffled. A batch is masked (`mlm.mask_tokens`),
shifted for next-token prediction (`clm.causal_pack`) or framed for both directions
(`bilm.bilm_pack`) by the config's kind.

Everything random about a chunk comes from generators seeded by (seed, epoch, rank, bucket,
chunk), so the cursor (position in the visit order, batch) is a complete data state. Ranks
stay in step as the word2vec trainer's do: they agree per chunk on the steps all of them can
take (`distributed.agree`), so every rank takes the same number of steps in an epoch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from embedpipe.train.bilm import bilm_pack
from embedpipe.train.clm import causal_pack
from embedpipe.train.data import Chunk, ChunkReader, parquet_files, split_chunks
from embedpipe.train.mlm import mask_tokens, pack, padding_mask
from embedpipe.train.registry import BiLMConfig, BucketLMConfig, MLMConfig

_BUCKET = re.compile(r"bucket=(\d+)")
_MIX = np.uint64(0x9E3779B97F4A7C15)
HELDOUT_STREAM = 0x48454C44  # seeds the held-out batches apart from any epoch's


class BucketBatch(NamedTuple):
    """One step's tensors and where the data cursor stands. The tensors end with the labels:
    (ids, segments, mask, labels) for the masked LM, (ids, labels) for the causal LM.

    Duck-types `data.Batch` for the loop and `distributed.agree` (`remaining`, `words`, `cursor`).
    """

    data: tuple[torch.Tensor, ...]
    targets: int  # target positions (labels != IGNORE)
    words: float  # corpus tokens one batch of its chunk stands for (the chunk's mean)
    remaining: int  # batches left in its chunk, this one included
    cursor: tuple[int, int]  # (visit position, batch) after this one
    tokens: int  # real token slots (specials included)
    slots: int  # padded token slots (rows x longest row)
    bucket: int

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.data


@dataclass(frozen=True)
class Examples:
    """Packed-example plan of a chunk: index of the first piece, of the second (-1: none)."""

    first: np.ndarray
    second: np.ndarray
    lengths: np.ndarray  # packed length, specials included


def bucket_files(table_dir: str) -> dict[int, list[str]]:
    """The Parquet files of each bucket of a `buckets/bucket=k/` table, sorted."""
    files: dict[int, list[str]] = {}
    for url in parquet_files(table_dir):
        m = _BUCKET.search(url)
        files.setdefault(int(m.group(1)) if m else 0, []).append(url)
    return dict(sorted(files.items()))


def rank_bucket_chunks(
    table_dir: str, rank: int, world: int, chunk_rows: int
) -> dict[int, list[Chunk]]:
    """Each bucket's chunks of this rank's row range, from Parquet metadata alone."""
    return {
        bucket: split_chunks(files, rank, world, chunk_rows)
        for bucket, files in bucket_files(table_dir).items()
    }


def visit_order(chunk_counts: dict[int, int], seed: int, epoch: int) -> list[tuple[int, int]]:
    """(bucket, chunk index) pairs: a seeded random interleaving of the buckets' chunks.

    Every bucket's chunks appear in their own order, so a reader keeping one row group per
    bucket reads each group once an epoch.
    """
    labels = np.repeat(list(chunk_counts), list(chunk_counts.values()))
    rng = np.random.default_rng([seed, epoch, 0x6B75])
    seen: dict[int, int] = {}
    order = []
    for bucket in rng.permutation(labels).tolist():
        order.append((bucket, seen.get(bucket, 0)))
        seen[bucket] = seen.get(bucket, 0) + 1
    return order


def sequence_hashes(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """A 64-bit hash of every sequence's ids (a polynomial hash, then a splitmix64 mix).

    Depends only on the ids, not on where the sequence is stored, so the held-out split is
    the same for any partitioning and any number of ranks; equal sequences share a side.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        position = np.arange(len(flat), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        longest = int(lengths.max()) if n else 0
        powers = np.cumprod(np.full(max(longest, 1), _MIX, dtype=np.uint64), dtype=np.uint64)
        terms = (flat.astype(np.uint64) + np.uint64(1)) * powers[position]
        h = np.zeros(n, dtype=np.uint64)
        nonempty = lengths > 0
        h[nonempty] = np.add.reduceat(terms, offsets[:-1][nonempty])
        h ^= lengths.astype(np.uint64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def heldout_mask(flat: np.ndarray, offsets: np.ndarray, fraction: float) -> np.ndarray:
    """True for the sequences held out of training (about `fraction` of them)."""
    if fraction <= 0:
        return np.zeros(len(offsets) - 1, dtype=bool)
    unit = (sequence_hashes(flat, offsets) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return unit < fraction


def cut_long(offsets: np.ndarray, keep: np.ndarray, longest: int) -> np.ndarray:
    """(start, stop) rows of the kept sequences, those over `longest` ids cut into pieces."""
    starts, stops = np.asarray(offsets[:-1])[keep], np.asarray(offsets[1:])[keep]
    pieces = np.maximum(1, -(-(stops - starts) // longest))
    if (pieces == 1).all():
        return np.stack([starts, stops], axis=1)
    first = np.repeat(starts, pieces) + longest * (
        np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    )
    return np.stack([first, np.minimum(first + longest, np.repeat(stops, pieces))], axis=1)


def pair_examples(
    lengths: np.ndarray, pair_prob: float, max_len: int, rng: np.random.Generator
) -> Examples:
    """Walk the pieces in a random order, joining a piece with the next one (probability
    `pair_prob`) when `[CLS] a [SEP] b [SEP]` fits in `max_len`."""
    order = rng.permutation(len(lengths))
    joins = rng.random(len(lengths)) < pair_prob
    first, second = [], []
    i = 0
    while i < len(order):
        a = order[i]
        if joins[i] and i + 1 < len(order) and lengths[a] + lengths[order[i + 1]] + 3 <= max_len:
            first.append(a)
            second.append(order[i + 1])
            i += 2
        else:
            first.append(a)
            second.append(-1)
            i += 1
    first_a, second_a = np.array(first, dtype=np.int64), np.array(second, dtype=np.int64)
    packed = lengths[first_a] + 2 + np.where(second_a >= 0, lengths[second_a] + 1, 0)
    return Examples(first_a, second_a, packed.astype(np.int64))


def plan_examples(
    lengths: np.ndarray, config: BucketLMConfig, rng: np.random.Generator
) -> Examples:
    """The examples of a chunk's pieces: the masked LM's pairs (`pair_examples`), or each
    piece alone in a random order (causal LM: `[CLS] a`, as long as the piece; biLM:
    `[CLS] a [SEP]`, two longer)."""
    if isinstance(config, MLMConfig):
        return pair_examples(lengths, config.pair_prob, config.max_len, rng)
    order = rng.permutation(len(lengths))
    framing = 2 if isinstance(config, BiLMConfig) else 0
    return Examples(order, np.full(len(order), -1, dtype=np.int64), lengths[order] + framing)


def piece_length(config: BucketLMConfig) -> int:
    """The longest piece of a sequence one example holds: max_len less [CLS] and [SEP] for
    the masked LM and the biLM; max_len for the causal LM (it reads [CLS] a[:-1] and
    predicts a)."""
    framed = isinstance(config, (MLMConfig, BiLMConfig))
    return config.max_len - 2 if framed else config.max_len


def token_budget_batches(
    lengths: np.ndarray, max_tokens: int, sort: bool = True
) -> list[np.ndarray]:
    """Consecutive runs of examples with rows x longest row <= max_tokens (at least one row).

    `sort`: sort by length first (stable), the bucketed way; otherwise keep the given order,
    which is plain batching under the same budget.
    """
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(lengths))
    batches, start, longest = [], 0, 0
    for i, example in enumerate(order):
        grown = max(longest, int(lengths[example]))
        if i > start and grown * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, grown = i, int(lengths[example])
        longest = grown
    if start < len(order):
        batches.append(order[start:])
    return batches


def make_batch(
    flat: np.ndarray,
    rows: np.ndarray,
    examples: Examples,
    members: np.ndarray,
    vocab_size: int,
    config: BucketLMConfig,
    rng: np.random.Generator,
) -> tuple[tuple[torch.Tensor, ...], int, int, int]:
    """(tensors, targets, real slots, padded slots) of one batch: (ids, segments, mask,
    labels) for the masked LM, (ids, labels) for the causal LM, (ids, lengths, labels) for
    the biLM."""
    first = [flat[rows[p, 0] : rows[p, 1]] for p in examples.first[members]]
    if isinstance(config, BiLMConfig):
        ids, labels, lengths = bilm_pack(first)
        data = (torch.from_numpy(ids), torch.from_numpy(lengths), torch.from_numpy(labels))
        return data, int((labels >= 0).sum()), int(lengths.sum()), int(ids.size)
    if not isinstance(config, MLMConfig):
        ids, labels, lengths = causal_pack(first)
        data = (torch.from_numpy(ids), torch.from_numpy(labels))
        return data, int((labels >= 0).sum()), int(lengths.sum()), int(ids.size)
    second = [None if p < 0 else flat[rows[p, 0] : rows[p, 1]] for p in examples.second[members]]
    ids, segments, lengths = pack(first, second)
    inputs, labels = mask_tokens(
        ids, rng, vocab_size, config.mask_prob, config.mask_token_prob, config.random_token_prob
    )
    mask = padding_mask(lengths, ids.shape[1])
    data = (
        torch.from_numpy(inputs),
        torch.from_numpy(segments),
        torch.from_numpy(mask),
        torch.from_numpy(labels),
    )
    return data, int((labels >= 0).sum()), int(lengths.sum()), int(ids.size)


def chunk_batches(
    flat: np.ndarray,
    offsets: np.ndarray,
    config: BucketLMConfig,
    vocab_size: int,
    seeds: list[int],
    heldout: bool = False,
    shuffle: bool = True,
) -> Iterator[tuple[tuple[torch.Tensor, ...], int, int, int, float]]:
    """The batches of one chunk: (tensors, targets, real slots, padded slots, corpus tokens).

    `heldout` picks the held-out sequences instead of the training ones. `seeds` seed the
    chunk's plan; batch b is masked by its own generator (seeds + [b]), so any batch can be
    rebuilt alone.
    """
    out = heldout_mask(flat, offsets, config.heldout)
    rows = cut_long(offsets, out if heldout else ~out, piece_length(config))
    if not isinstance(config, MLMConfig):  # an empty sequence gives nothing to predict
        rows = rows[rows[:, 1] > rows[:, 0]]
    if len(rows) == 0:
        return
    lengths = rows[:, 1] - rows[:, 0]
    rng = np.random.default_rng(seeds)
    examples = plan_examples(lengths, config, rng)
    batches = token_budget_batches(examples.lengths, config.max_tokens)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    words = float(lengths.sum()) / len(batches)
    for b, members in enumerate(batches):
        batch_rng = np.random.default_rng([*seeds, b])
        yield (*make_batch(flat, rows, examples, members, vocab_size, config, batch_rng), words)


def chunk_seeds(seed: int, epoch: int, rank: int, bucket: int, chunk: int) -> list[int]:
    return [seed, epoch, rank, bucket, chunk]


def iter_bucket_batches(
    config: BucketLMConfig,
    chunks: dict[int, list[Chunk]],
    vocab_size: int,
    seed: int,
    epoch: int,
    rank: int,
    first: tuple[int, int] = (0, 0),
) -> Iterator[list[BucketBatch]]:
    """A rank's training batches of one epoch from cursor `first` on, as one list per chunk."""
    order = visit_order({b: len(c) for b, c in chunks.items()}, seed, epoch)
    readers: dict[int, ChunkReader] = {}
    for position in range(first[0], len(order)):
        bucket, index = order[position]
        flat, offsets = readers.setdefault(bucket, ChunkReader())(chunks[bucket][index])
        seeds = chunk_seeds(seed, epoch, rank, bucket, index)
        made = list(chunk_batches(flat, offsets, config, vocab_size, seeds))
        start = first[1] if position == first[0] else 0
        batches = [
            BucketBatch(
                data,
                targets,
                words,
                len(made) - b,
                (position, b + 1) if b + 1 < len(made) else (position + 1, 0),
                tokens,
                slots,
                bucket,
            )  # fmt: skip
            for b, (data, targets, tokens, slots, words) in enumerate(made)
            if b >= start
        ]
        if batches:
            yield batches


def iter_heldout_batches(
    config: BucketLMConfig, chunks: dict[int, list[Chunk]], vocab_size: int, seed: int
) -> Iterator[BucketBatch]:
    """A rank's held-out batches: the same every time (fixed framing and masks)."""
    for bucket, bucket_chunks in chunks.items():
        reader = ChunkReader()
        for index, chunk in enumerate(bucket_chunks):
            flat, offsets = reader(chunk)
            seeds = [seed, HELDOUT_STREAM, bucket, chunk.row_group, chunk.start]
            for data, targets, tokens, slots, words in chunk_batches(
                flat, offsets, config, vocab_size, seeds, heldout=True, shuffle=False
            ):
                yield BucketBatch(data, targets, words, 1, (index, 0), tokens, slots, bucket)
