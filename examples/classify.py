"""Downstream use of an embedding artefact: classify WordNet glosses by supersense.

A gloss ("a domestic animal kept as stock until fattened") is labelled with its synset's
lexicographer file (noun.animal); eight balanced classes, see examples/data/supersense.tsv and
examples/build_supersense.py. The model is the simplest one that shows what pretrained
vectors are worth: mean-pooled word embeddings and one linear layer, trained three ways:

* random:     embeddings drawn at random (at the pretrained vectors' scale), trained;
* frozen:     the artefact's vectors, fixed; only the linear layer learns;
* fine-tuned: the artefact's vectors as the start, trained with the rest;
* fine-tuned encoder (masked-LM artefacts only): the artefact's whole Transformer encoder
  reads the gloss with its own tokenizer; the mean of its token vectors feeds one linear
  layer, and everything is trained (AdamW, a smaller learning rate).

The classifier's vocabulary comes from its training split; `Embeddings.align` maps it onto the
artefact (words the artefact lacks get random rows of the same scale).

    python examples/classify.py --artefact wordnet-sample --store artefacts
    python examples/classify.py --artefact artefacts/wordnet-sample/v0001
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

import embedpipe
from embedpipe.artefacts import Embeddings
from embedpipe.schemas import PAD, PAD_ID, UNK, UNK_ID
from embedpipe.text.tokenizer import tokenize_line

DATA = Path(__file__).resolve().parent / "data" / "supersense.tsv"
KINDS: tuple[str, ...] = ("random", "frozen", "fine-tuned")
Kind = Literal["random", "frozen", "fine-tuned"]
ENCODER_KIND = "fine-tuned encoder"  # the fourth row, for masked-LM artefacts
MAX_TOKENS = 64


@dataclass
class Split:
    """Tokenised texts and integer labels of one split (and the raw texts, for an encoder
    that tokenises them its own way)."""

    tokens: list[list[str]]
    labels: list[int]
    texts: list[str] = field(default_factory=list)


def read_examples(path: str | Path = DATA) -> tuple[Split, Split, list[str]]:
    """The train and test splits of a TSV with columns split, label and gloss; the class names.

    Only the gloss is read (never the synset's lemmas), tokenised as the pretraining corpus was.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        col = {name: header.index(name) for name in ("split", "label", "gloss")}
        for line in f:
            fields = line.rstrip("\n").split("\t")
            rows.append((fields[col["split"]], fields[col["label"]], fields[col["gloss"]]))
    classes = sorted({label for _, label, _ in rows})
    index = {label: i for i, label in enumerate(classes)}
    splits = {"train": Split([], []), "test": Split([], [])}
    for split, label, gloss in rows:
        splits[split].tokens.append(tokenize_line(gloss)[:MAX_TOKENS])
        splits[split].labels.append(index[label])
        splits[split].texts.append(gloss)
    if not splits["train"].labels or not splits["test"].labels:
        raise ValueError(f"{path} needs rows in both the train and the test split")
    return splits["train"], splits["test"], classes


def build_vocab(texts: Sequence[Sequence[str]], min_count: int = 1) -> list[str]:
    """[PAD], [UNK], then the words of `texts` seen min_count times, most frequent first."""
    counts = Counter(t for text in texts for t in text)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    vocab = [PAD, UNK]  # ids PAD_ID = 0 and UNK_ID = 1, as in the pretraining vocabulary
    return vocab + [w for w in words if w not in vocab]


def encode(texts: Sequence[Sequence[str]], vocab: Sequence[str]) -> torch.Tensor:
    """A (n, longest) tensor of token ids, right-padded with PAD_ID; unknown words -> UNK_ID."""
    ids = {w: i for i, w in enumerate(vocab)}
    width = max(1, max((len(t) for t in texts), default=1))
    out = torch.full((len(texts), width), PAD_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        out[row, : len(text)] = torch.tensor([ids.get(t, UNK_ID) for t in text], dtype=torch.long)
    return out


class MeanPoolClassifier(nn.Module):
    """Mean of the word vectors of a text (padding ignored), then one linear layer."""

    def __init__(self, embedding: nn.Embedding, n_classes: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.linear = nn.Linear(embedding.embedding_dim, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != PAD_ID).unsqueeze(-1).to(self.embedding.weight.dtype)
        pooled = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.linear(pooled)


def initial_weights(kind: Kind, vocab: Sequence[str], emb: Embeddings, seed: int) -> np.ndarray:
    """The (len(vocab), dim) starting embedding matrix of one variant; the PAD row is zero.

    Pretrained variants take `emb.align(vocab)` (unknown words: random rows at the mean norm of
    the known vectors). The random variant draws every row by that same rule, so it differs from
    the pretrained ones in information only, not in scale.
    """
    weights, found = emb.align(vocab, unknown="random", seed=seed)
    if kind == "random":
        words = found & (np.arange(len(vocab)) > UNK_ID)  # skip the PAD and UNK rows
        norm = float(np.linalg.norm(weights[words], axis=1).mean()) if words.any() else 1.0
        rng = np.random.default_rng(seed + 1)
        weights = rng.standard_normal(weights.shape) * (norm / np.sqrt(emb.dim))
        weights = weights.astype(np.float32)
    weights[PAD_ID] = 0.0
    return weights


def build_model(
    kind: Kind, vocab: Sequence[str], emb: Embeddings, n_classes: int, seed: int = 0
) -> MeanPoolClassifier:
    """One classifier variant: random, frozen pretrained or fine-tuned pretrained."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    torch.manual_seed(seed)
    weights = torch.from_numpy(initial_weights(kind, vocab, emb, seed))
    layer = nn.Embedding.from_pretrained(weights, freeze=kind == "frozen", padding_idx=PAD_ID)
    return MeanPoolClassifier(layer, n_classes)


def accuracy(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of texts whose highest-scoring class is the label."""
    model.eval()
    with torch.no_grad():
        return float((model(ids).argmax(1) == labels).float().mean())


def fit(
    model: nn.Module,
    ids: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    lr: float = 5e-3,
    seed: int = 0,
) -> None:
    """Adam on cross-entropy over shuffled mini-batches (only parameters that require grad)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(ids[batch]), labels[batch])
            loss.backward()
            optimiser.step()


def run(
    emb: Embeddings,
    data: str | Path = DATA,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 5e-3,
    seed: int = 0,
    encoder_epochs: int = 5,
    encoder_lr: float = 1e-3,
    encoder_init: str = "pretrained",
) -> dict[str, float]:
    """Train the three variants (and, for a masked-LM artefact, the fine-tuned encoder) on
    `data`; print and return their test accuracies."""
    train, test, classes = read_examples(data)
    vocab = build_vocab(train.tokens)
    _, found = emb.align(vocab)
    train_ids, test_ids = encode(train.tokens, vocab), encode(test.tokens, vocab)
    train_y, test_y = torch.tensor(train.labels), torch.tensor(test.labels)
    words = sum(len(t) for t in train.tokens)
    covered = sum(found[i] for i in train_ids[train_ids > UNK_ID].tolist())
    print(
        f"{len(train.labels)} train / {len(test.labels)} test texts, {len(classes)} classes; "
        f"vocabulary {len(vocab) - 2} words, {found[2:].mean():.1%} of them "
        f"({covered / max(words, 1):.1%} of training tokens) in the artefact ({emb.dim}-d)"
    )
    results = {}
    for kind in KINDS:
        start = time.perf_counter()
        model = build_model(kind, vocab, emb, len(classes), seed)
        fit(model, train_ids, train_y, epochs, batch_size, lr, seed)
        results[kind] = accuracy(model, test_ids, test_y)
        print(f"  trained {kind:<10} in {time.perf_counter() - start:5.1f}s", flush=True)
    if hasattr(emb, "encode"):  # a masked-LM artefact: fine-tune its encoder as well
        start = time.perf_counter()
        torch.manual_seed(seed)
        encoder = emb.to_torch_encoder()
        if encoder_init == "random":  # the baseline: the same architecture, untrained
            encoder.reset_parameters(seed)
        model = EncoderClassifier(encoder, len(classes))
        train_x, test_x = encode_texts(emb, train.texts), encode_texts(emb, test.texts)
        fit_encoder(model, train_x, train_y, encoder_epochs, batch_size, encoder_lr, seed)
        results[ENCODER_KIND] = encoder_accuracy(model, test_x, test_y)
        print(f"  trained {ENCODER_KIND} in {time.perf_counter() - start:5.1f}s", flush=True)
    chance = Counter(test.labels).most_common(1)[0][1] / len(test.labels)
    print(format_results(results, chance))
    return results


class EncoderClassifier(nn.Module):
    """A pretrained masked-LM encoder, the mean of a text's token vectors, one linear layer."""

    def __init__(self, encoder: nn.Module, n_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(encoder.config.width, n_classes)

    def forward(
        self, ids: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder.encode(ids, segments, mask)
        cfg = self.encoder.config
        text = (mask & (ids != cfg.cls_id) & (ids != cfg.sep_id)).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * text).sum(1) / text.sum(1).clamp(min=1.0)
        return self.linear(self.drop(pooled))


def encode_texts(emb: Embeddings, texts: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """(ids, segments, mask) of `[CLS] text [SEP]` rows, tokenised by the artefact itself."""
    from embedpipe.train.mlm import pack, padding_mask

    ids = [np.array(emb.token_ids(t), dtype=np.int64) for t in emb.tokenize(texts)]
    batch, segments, lengths = pack(ids, [None] * len(ids))
    mask = padding_mask(lengths, batch.shape[1])
    return torch.from_numpy(batch), torch.from_numpy(segments), torch.from_numpy(mask)


def _trimmed(inputs: tuple[torch.Tensor, ...], rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rows of (ids, segments, mask), cut to their longest text."""
    ids, segments, mask = (t[rows] for t in inputs)
    width = max(1, int(mask.sum(1).max()))
    return ids[:, :width], segments[:, :width], mask[:, :width]


def fit_encoder(
    model: EncoderClassifier,
    inputs: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> None:
    """AdamW on cross-entropy over shuffled mini-batches; encoder and linear layer train."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(*_trimmed(inputs, batch)), labels[batch])
            loss.backward()
            optimiser.step()


def encoder_accuracy(
    model: EncoderClassifier, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor
) -> float:
    """Share of texts whose highest-scoring class is the label."""
    model.eval()
    with torch.no_grad():
        right = sum(
            int((model(*_trimmed(inputs, rows)).argmax(1) == labels[rows]).sum())
            for rows in torch.arange(len(labels)).split(256)
        )
    return right / len(labels)


def format_results(results: dict[str, float], chance: float | None = None) -> str:
    """The accuracies as a small text table."""
    width = max(12, *(len(kind) for kind in results))
    lines = [f"{'embeddings':<{width}} test accuracy", f"{'-' * 10:<{width}} -------------"]
    lines += [f"{kind:<{width}} {acc:>13.3f}" for kind, acc in results.items()]
    if chance is not None:
        lines.append(f"{'(chance)':<{width}} {chance:>13.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--artefact", required=True, help="an artefact version directory, or a name in --store"
    )
    parser.add_argument("--version", default="latest", help="version or alias (with a name)")
    parser.add_argument("--store", default=None, help="artefact store (default $EMBEDPIPE_STORE)")
    parser.add_argument("--data", type=Path, default=DATA, help="labelled TSV")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder-epochs", type=int, default=5, help="masked-LM artefacts")
    parser.add_argument("--encoder-lr", type=float, default=1e-3, help="masked-LM artefacts")
    parser.add_argument(
        "--encoder-init", choices=["pretrained", "random"], default="pretrained",
        help="masked-LM artefacts: start from the artefact's encoder or a fresh one",
    )  # fmt: skip
    args = parser.parse_args(argv)

    emb = embedpipe.load(args.artefact, version=args.version, store=args.store)
    print(f"artefact: {emb}")
    # Batches of 64 short texts are too small to split across threads: one is fastest.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(
            emb, args.data, args.epochs, args.batch_size, args.lr, args.seed,
            args.encoder_epochs, args.encoder_lr, args.encoder_init,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
