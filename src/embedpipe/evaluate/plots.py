"""The report's pictures of one training run and one set of vectors, as PNG files.

The training curve (loss, held-out loss, learning rate, words/s by step) marks each logged
step when there are few, so a short run still shows its points. The word map is a PCA of
the most frequent words whose labels go to informative words spread over the plane: the
most frequent words (function words, punctuation) and tokens without a letter are never
labelled, and a word is labelled only at a distance from every label placed before it.
Figures are drawn with matplotlib's Agg canvas directly (no pyplot): headless, and the
global backend is left alone. matplotlib comes with the pipeline extra and is imported when
the first figure is made, so loading and evaluating artefacts never imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedpipe.artefacts import Embeddings
from embedpipe.extras import require
from embedpipe.schemas import SPECIAL_TOKENS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LOSS_PLOT = "loss.png"
PROJECTION_PLOT = "projection.png"
DPI = 120
MARKED_POINTS = 60  # a curve with at most this many points marks each one
PROJECTED_WORDS = 300  # drawn on the word map: the most frequent ordinary words
SKIPPED_FREQUENT = 100  # never labelled: the most frequent (at most a third of those drawn)
LABELLED_WORDS = 40  # at most
LABEL_SPACING = 0.08  # labels at least this share of the map's diagonal apart
SENTENCEPIECE_SPACE = "\u2581"


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure (MissingExtraError naming the extra where matplotlib is absent)."""
    return require("matplotlib.figure", "the report's plots").Figure(**kwargs)


def save_png(fig: Figure, path: Path, dpi: int = DPI) -> None:
    """Render a figure to PNG through the Agg canvas."""
    require("matplotlib.backends.backend_agg", "the report's plots").FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have a finite `key`."""
    points = [(int(r["step"]), float(r[key])) for r in records if r.get(key) is not None]
    kept = [(s, v) for s, v in points if math.isfinite(v)]
    return [s for s, _ in kept], [v for _, v in kept]


def _curve(ax: Axes, records: Sequence[Mapping[str, Any]], key: str, **style: Any) -> None:
    """One series as a line, each point marked when there are few."""
    steps, values = series(records, key)
    if steps:
        marker = "o" if len(steps) <= MARKED_POINTS else None
        ax.plot(steps, values, marker=marker, markersize=4, **style)


def plot_training(records: Sequence[Mapping[str, Any]], path: Path) -> Figure:
    """Loss (and held-out loss) with the learning rate on a second axis, and words/s, against
    the step; written to `path` and returned (for a look at what it drew)."""
    fig = new_figure(figsize=(8, 5.5), layout="constrained")
    ax_loss, ax_speed = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    _curve(ax_loss, records, "loss", color="tab:blue", label="loss")
    _curve(ax_loss, records, "heldout_loss", color="tab:red", label="held-out loss")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"Training ({len(records)} logged steps)")
    ax_loss.grid(alpha=0.3)
    ax_lr = ax_loss.twinx()
    _curve(ax_lr, records, "lr", color="tab:orange", linestyle="--", label="learning rate")
    ax_lr.set_ylabel("learning rate")
    handles = ax_loss.get_legend_handles_labels()[0] + ax_lr.get_legend_handles_labels()[0]
    if handles:
        ax_loss.legend(handles=handles, loc="upper right")
    _curve(ax_speed, records, "words_per_sec", color="tab:green")
    ax_speed.set_ylabel("words / s")
    ax_speed.set_xlabel("step")
    ax_speed.grid(alpha=0.3)
    save_png(fig, path)
    return fig


def frequent_words(emb: Embeddings, n: int = PROJECTED_WORDS) -> np.ndarray:
    """Ids of the n most frequent ordinary words (special tokens skipped), most frequent first.

    Ties (and vocabularies without counts) keep id order, which is frequency order.
    """
    ordinary = np.array([i for i, t in enumerate(emb.vocab) if t not in SPECIAL_TOKENS], int)
    order = np.argsort(-emb.counts[ordinary], kind="stable")
    return ordinary[order][:n]


def project(vectors: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """PCA by SVD: the (n, k) coordinates of the centred rows and each axis' variance share.

    Axis signs are fixed (largest loading positive) so the same vectors give the same picture.
    """
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:k]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    variance = s**2
    share = variance[:k] / variance.sum() if variance.sum() > 0 else np.zeros(len(axes))
    return x @ axes.T, share


def is_word(token: str) -> bool:
    """A token worth a label: two characters or more (a SentencePiece word marker aside),
    one of them a letter."""
    text = token.lstrip(SENTENCEPIECE_SPACE)
    return len(text) >= 2 and any(c.isalpha() for c in text)


def choose_labels(tokens: Sequence[str], coords: np.ndarray) -> list[int]:
    """Rows of `coords` (points in frequency order, most frequent first) to label.

    The most frequent SKIPPED_FREQUENT points (a third at most) and non-words are passed
    over; the others are taken in frequency order, each only when it lies LABEL_SPACING of
    the map's diagonal or more from every label taken, until LABELLED_WORDS are taken.
    """
    if len(coords) == 0:
        return []
    diagonal = float(np.linalg.norm(coords.max(axis=0) - coords.min(axis=0)))
    spacing = LABEL_SPACING * diagonal
    chosen: list[int] = []
    for row in range(min(SKIPPED_FREQUENT, len(coords) // 3), len(coords)):
        if len(chosen) == LABELLED_WORDS:
            break
        if not is_word(tokens[row]):
            continue
        if chosen and np.linalg.norm(coords[chosen] - coords[row], axis=1).min() < spacing:
            continue
        chosen.append(row)
    return chosen


def plot_projection(emb: Embeddings, path: Path) -> tuple[int, list[str]]:
    """PCA map of the most frequent words' unit vectors, labelled by `choose_labels`.

    Returns the number of words drawn and the labelled words.
    """
    ids = frequent_words(emb)
    coords, share = project(emb.normed[ids])
    tokens = [emb.vocab[i] for i in ids]
    labelled = choose_labels(tokens, coords)
    fig = new_figure(figsize=(9, 8), layout="constrained")
    ax = fig.subplots()
    ax.scatter(coords[:, 0], coords[:, 1], s=8, color="tab:blue", alpha=0.4)
    ax.scatter(coords[labelled, 0], coords[labelled, 1], s=12, color="tab:red")
    for row in labelled:
        ax.annotate(tokens[row], coords[row], fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"PC1 ({100 * share[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * share[1]:.1f}% of variance)")
    ax.set_title(f"{len(ids)} most frequent words (unit vectors), {len(labelled)} labelled")
    ax.grid(alpha=0.3)
    save_png(fig, path)
    return len(ids), [tokens[row] for row in labelled]
