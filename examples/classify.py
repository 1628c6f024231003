"""Downstream use of an embedding artefact: classify WordNet glosses by supersense.

A gloss ("a domestic animal kept as stock until fattened") is labelled with its synset's
lexicographer file (noun.animal); eight balanced classes, see examples/data/supersense.tsv and
examples/build_supersense.py. The model is the simplest one that shows what pretrained
vectors are worth: mean-pooled word embeddings and one linear layer, trained three ways:

* random:     embeddings drawn at random (at the pretrained vectors' scale), trained;
* frozen:     the artefact's vectors, fixed; only the linear layer learns;
* fine-tuned: the artefact's vectors as the start, trained with the rest.

A language-model artefact (mlm, clm or bilm) adds two rows in which its whole model reads the
gloss with the artefact's own tokenizer and the mean of its token vectors (the last layer of
a Transformer; the average of a biLM's layers) feeds one linear layer:

* frozen encoder:     the model's weights fixed; only the linear layer learns (as in frozen);
* fine-tuned encoder: everything trains (AdamW, a smaller learning rate).

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
from embedpipe.artefacts.contextual import LanguageModelEmbeddings
from embedpipe.schemas import PAD, PAD_ID, UNK, UNK_ID
from embedpipe.text.tokenizer import tokenize_line
from embedpipe.train.architecture import CLS_ID, SEP_ID

DATA = Path(__file__).resolve().parent / "data" / "supersense.tsv"
KINDS: tuple[str, ...] = ("random", "frozen", "fine-tuned")
Kind = Literal["random", "frozen", "fine-tuned"]
ENCODER_KINDS: tuple[str, ...] = ("frozen encoder", "fine-tuned encoder")  # language models
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
    """Train the three word-vector variants (and, for a language-model artefact, the frozen
    and the fine-tuned encoder) on `data`; print and return their test accuracies."""
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
    if isinstance(emb, LanguageModelEmbeddings):  # mlm, clm or bilm: its encoder as well
        settings = EncoderSettings(
            epochs, lr, encoder_epochs, encoder_lr, batch_size, seed, encoder_init
        )
        results |= encoder_rows(emb, train, test, len(classes), settings)
    chance = Counter(test.labels).most_common(1)[0][1] / len(test.labels)
    print(format_results(results, chance))
    return results


@dataclass(frozen=True)
class EncoderSettings:
    """How the encoder rows train. The frozen encoder's linear layer learns as the
    word-vector rows' does (`epochs`, `lr`); the fine-tuned encoder takes its own
    (`encoder_epochs`, `encoder_lr`, AdamW). `init` "random": the same architecture,
    untrained (the baseline that shows what pretraining adds)."""

    epochs: int = 15
    lr: float = 5e-3
    encoder_epochs: int = 5
    encoder_lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    init: str = "pretrained"


def encoder_rows(
    emb: LanguageModelEmbeddings, train: Split, test: Split, n_classes: int, s: EncoderSettings
) -> dict[str, float]:
    """Test accuracies of the frozen and the fine-tuned encoder of a language-model artefact;
    every text is read with the artefact's own tokenizer."""
    train_x, test_x = emb.encoder_inputs(train.texts), emb.encoder_inputs(test.texts)
    train_y, test_y = torch.tensor(train.labels), torch.tensor(test.labels)
    results = {}
    for kind in ENCODER_KINDS:
        start = time.perf_counter()
        model = build_encoder_classifier(emb, n_classes, s.seed, s.init)
        train_encoder_row(kind, model, train_x, train_y, s)
        results[kind] = encoder_accuracy(model, test_x, test_y)
        print(f"  trained {kind} in {time.perf_counter() - start:5.1f}s", flush=True)
    return results


class EncoderClassifier(nn.Module):
    """A language model's encoder, the mean of a text's token vectors, one linear layer.

    The encoder is any `to_torch_encoder()` module (masked LM, causal LM or biLM): it maps
    `encoder_inputs` rows (ids, lengths) to per-token vectors with `token_vectors`.
    """

    def __init__(self, encoder: nn.Module, n_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(encoder.vector_width, n_classes)

    def pooled(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, width): the mean of each text's own token vectors ([CLS], [SEP] and padding
        left out)."""
        hidden = self.encoder.token_vectors(ids, lengths)
        text = (ids != PAD_ID) & (ids != CLS_ID) & (ids != SEP_ID)
        text = text.unsqueeze(-1).to(hidden.dtype)
        return (hidden * text).sum(1) / text.sum(1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.pooled(ids, lengths)))


def build_encoder_classifier(
    emb: LanguageModelEmbeddings, n_classes: int, seed: int = 0, init: str = "pretrained"
) -> EncoderClassifier:
    """The artefact's encoder (its weights, or fresh ones drawn by `seed` for init "random")
    under a new linear layer."""
    torch.manual_seed(seed)
    encoder = emb.to_torch_encoder()
    if init == "random":
        encoder.reset_parameters(seed)
    return EncoderClassifier(encoder, n_classes)


def train_encoder_row(
    kind: str,
    model: EncoderClassifier,
    inputs: tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor,
    s: EncoderSettings,
) -> None:
    """Train one encoder row. "frozen encoder": the encoder's pooled vectors are computed
    once (eval mode, weights fixed) and only the linear layer learns on them, as in the
    frozen word-vector row; "fine-tuned encoder": everything trains."""
    if kind == "frozen encoder":
        model.encoder.requires_grad_(False)
        features = encoder_outputs(model, inputs, pooled=True)
        fit(model.linear, features, labels, s.epochs, s.batch_size, s.lr, s.seed)
    elif kind == "fine-tuned encoder":
        fit_encoder(model, inputs, labels, s.encoder_epochs, s.batch_size, s.encoder_lr, s.seed)
    else:
        raise ValueError(f"kind must be one of {ENCODER_KINDS}, got {kind!r}")


def _trimmed(
    inputs: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of (ids, lengths), the ids cut to their longest row."""
    ids, lengths = inputs[0][rows], inputs[1][rows]
    return ids[:, : max(1, int(lengths.max()))], lengths


def fit_encoder(
    model: EncoderClassifier,
    inputs: tuple[torch.Tensor, torch.Tensor],
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


def encoder_outputs(
    model: EncoderClassifier,
    inputs: tuple[torch.Tensor, torch.Tensor],
    pooled: bool = False,
    batch_size: int = 256,
) -> torch.Tensor:
    """The class scores (`pooled`: the pooled text vectors) of every row of (ids, lengths):
    eval mode, no gradients, in batches cut to their longest row."""
    model.eval()
    function = model.pooled if pooled else model
    batches = torch.arange(len(inputs[1])).split(batch_size)
    with torch.no_grad():
        return torch.cat([function(*_trimmed(inputs, rows)) for rows in batches])


def encoder_accuracy(
    model: EncoderClassifier, inputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor
) -> float:
    """Share of texts whose highest-scoring class is the label."""
    return float((encoder_outputs(model, inputs).argmax(1) == labels).float().mean())


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
    parser.add_argument("--encoder-epochs", type=int, default=5, help="fine-tuned encoder")
    parser.add_argument("--encoder-lr", type=float, default=1e-3, help="fine-tuned encoder")
    parser.add_argument(
        "--encoder-init", choices=["pretrained", "random"], default="pretrained",
        help="both encoder rows: start from the artefact's model or a fresh one",
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
