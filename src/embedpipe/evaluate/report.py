"""A Markdown report of one published embedding artefact, with PNG plots.

For reviewing a version before pointing an alias at it: what was trained and on what, how
training went (loss, learning rate and words/s from metrics.jsonl), how its scores compare
with the other versions of the same name, what changed since the previous one, and a 2-D
PCA map of the most frequent words. Plots are drawn with matplotlib's Agg canvas directly
(no pyplot), so the report works headless and leaves the global backend alone; matplotlib is
imported when the first plot is drawn (it comes with the pipeline extra).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np

from embedpipe.artefacts.diff import diff_manifests, format_diff
from embedpipe.artefacts.files import as_location, filesystem, join
from embedpipe.artefacts.loader import Embeddings, read_embeddings
from embedpipe.artefacts.manifest import Manifest
from embedpipe.evaluate.benchmarks import BENCHMARKS, Benchmark
from embedpipe.extras import require
from embedpipe.schemas import SPECIAL_TOKENS
from embedpipe.workdir import METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.md"
METRICS_FILE = METRICS  # the training metrics an artefact carries
LOSS_PLOT = "loss.png"
SCORES_PLOT = "scores.png"
PROJECTION_PLOT = "projection.png"
PROJECTED_WORDS = 300
LABELLED_WORDS = 60
DPI = 120
METRIC_SIGNS = {"spearman": "ρ", "accuracy": "acc."}
_VERSION_RE = re.compile(r"v([0-9]+)")


def read_training_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (path or URL), one per logged step, sorted by step.

    A resumed run appends the steps after its last checkpoint again; the later record of a
    step wins, as it belongs to the run that produced the published vectors.
    """
    by_step: dict[int, dict[str, Any]] = {}
    with fsspec.open(os.fspath(path), "r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{number}: not a JSON record: {e}") from e
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(f"{path}:{number}: a record needs a 'step' field")
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def _figure(**kwargs: Any) -> Figure:
    """A new figure on an Agg canvas of its own (matplotlib comes with the pipeline extra:
    imported here, so that loading and evaluating artefacts never imports it)."""
    fig = require("matplotlib.figure", "the report's plots").Figure(**kwargs)
    require("matplotlib.backends.backend_agg", "the report's plots").FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    """Render a figure to PNG."""
    fig.savefig(path, dpi=DPI, format="png")


def plot_training(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Loss (with the learning rate on a second axis) and words/s against the step."""
    steps = [r["step"] for r in records]

    def column(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) is not None else math.nan for r in records]

    fig = _figure(figsize=(8, 5.5), layout="constrained")
    ax_loss, ax_speed = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    ax_loss.plot(steps, column("loss"), color="tab:blue", label="loss")
    ax_loss.set_ylabel("loss (mean per pair)")
    ax_loss.set_title("Training")
    ax_loss.grid(alpha=0.3)
    ax_lr = ax_loss.twinx()
    ax_lr.plot(steps, column("lr"), color="tab:orange", linestyle="--", label="learning rate")
    ax_lr.set_ylabel("learning rate")
    handles = ax_loss.get_legend_handles_labels()[0] + ax_lr.get_legend_handles_labels()[0]
    ax_loss.legend(handles=handles, loc="upper right")
    ax_speed.plot(steps, column("words_per_sec"), color="tab:green")
    ax_speed.set_ylabel("words / s")
    ax_speed.set_xlabel("step")
    ax_speed.grid(alpha=0.3)
    _save(fig, path)


def _version_key(manifest: Manifest) -> tuple[int, str]:
    m = _VERSION_RE.fullmatch(manifest.version)
    return (int(m.group(1)) if m else -1, manifest.version)


def _finite(value: float | None) -> float | None:
    """A score to show: None for a missing or NaN one."""
    return None if value is None or math.isnan(value) else value


def score_title(bench: Benchmark) -> str:
    """The column title of a benchmark's score: "WordSim-353 ρ"."""
    return f"{bench.title} {METRIC_SIGNS.get(bench.metric, bench.metric)}"


def plot_scores(manifests: Sequence[Manifest], current: str, path: Path) -> None:
    """Each benchmark's score across versions, the reported version marked."""
    labels = [m.version for m in manifests]
    fig = _figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(manifests))
    for bench in BENCHMARKS:
        values = [_finite(bench.read(m.metrics)) for m in manifests]
        ax.plot(
            x, [math.nan if v is None else v for v in values], marker="o", label=score_title(bench)
        )
    if current in labels:
        ax.axvline(labels.index(current), color="grey", linestyle=":", label=current)
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 8 else 0)
    ax.set_ylabel("score")
    ax.set_title("Evaluation across versions")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


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


def plot_projection(emb: Embeddings, path: Path) -> int:
    """PCA map of the most frequent words' unit vectors, the top LABELLED_WORDS labelled.

    Returns the number of words drawn.
    """
    ids = frequent_words(emb)
    coords, share = project(emb.normed[ids])
    fig = _figure(figsize=(9, 8), layout="constrained")
    ax = fig.subplots()
    ax.scatter(coords[:, 0], coords[:, 1], s=8, color="tab:blue", alpha=0.5)
    for rank, (i, (px, py)) in enumerate(zip(ids, coords, strict=True)):
        if rank >= LABELLED_WORDS:
            break
        ax.annotate(emb.vocab[i], (px, py), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"PC1 ({100 * share[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * share[1]:.1f}% of variance)")
    ax.set_title(f"{len(ids)} most frequent words (unit vectors), top {LABELLED_WORDS} labelled")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return len(ids)


def _cell(value: Any) -> str:
    """A Markdown table cell: numbers to 4 places, '-' for missing, pipes escaped."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def evaluation_table(manifests: Sequence[Manifest], current: str) -> list[str]:
    """Markdown rows: one per version, every benchmark's score and coverage, and sizes; the
    current version in bold."""
    titles = ["version", "created", *(score_title(b) for b in BENCHMARKS)]
    titles += [f"{b.title} coverage" for b in BENCHMARKS] + ["vocab", "dim"]
    lines = [_row(titles), "|" + "---|" * len(titles)]
    for m in manifests:
        params = (m.model.hyperparameters if m.model else None) or {}
        vocab = (m.lineage.stages or {}).get("vocab")
        cells: list[Any] = [
            f"**{m.version}** (this)" if m.version == current else m.version,
            m.created[:10] or None,
            *(_finite(b.read(m.metrics)) for b in BENCHMARKS),
            *(b.covered(m.metrics) for b in BENCHMARKS),
            ((vocab.counts or {}) if vocab else {}).get("vocab_size"),
            params.get("dim"),
        ]
        lines.append(_row(cells))
    return lines


def _summary(manifest: Manifest, emb: Embeddings) -> list[str]:
    """Bullet points: model, training run, corpus, code."""
    model = manifest.model
    params = (model.hyperparameters if model else None) or {}
    training = manifest.lineage.training or {}
    code = manifest.lineage.code_version or {}
    shown = ", ".join(f"{k}={params[k]}" for k in sorted(params)) or "-"
    lines = [
        f"- **model**: {model.kind if model else '-'} — {len(emb):,} tokens × {emb.dim} dimensions",
        f"- **hyper-parameters**: {shown}",
    ]
    if training:
        run = [
            f"{k}={training[k]}"
            for k in ("steps", "seconds", "words_per_sec", "corpus_words", "world_size", "device")
            if k in training
        ]
        lines.append(f"- **training**: {', '.join(run)}")
    for table, stage in (manifest.lineage.stages or {}).items():
        counts = stage.counts or {}
        scalars = [f"{k}={v}" for k, v in counts.items() if isinstance(v, (int, float, str))]
        fingerprint = (stage.fingerprint or "-")[:12]
        lines.append(f"- **{table}** ({fingerprint}): {', '.join(scalars) or '-'}")
    if code:
        lines.append("- **code**: " + ", ".join(f"{k}={v}" for k, v in code.items()))
    return lines


def _neighbours(manifest: Manifest) -> list[str]:
    """A Markdown table of the probe words' nearest neighbours recorded at publish."""
    table = (manifest.metrics.neighbours if manifest.metrics else None) or {}
    if not table:
        return []
    lines = ["", "## Nearest neighbours", "", _row(["word", "neighbours (cosine)"]), "|---|---|"]
    for word, items in table.items():
        shown = ", ".join(f"{t} ({s:.2f})" for t, s in items)
        lines.append(_row([word, shown]))
    return lines


def _training_section(directory: str | Path, out: Path) -> list[str]:
    """The loss curve from the artefact's metrics.jsonl, when it has one."""
    lines = ["", "## Training", ""]
    metrics_path = join(directory, METRICS_FILE)
    fs, path = filesystem(metrics_path)
    records = read_training_metrics(metrics_path) if fs.isfile(path) else []
    if not records:
        return [*lines, f"No {METRICS_FILE} in the artefact: no training curve."]
    plot_training(records, out / LOSS_PLOT)
    last = records[-1]
    return lines + [
        f"{len(records)} logged steps; final loss {_cell(last.get('loss'))} "
        f"at step {last['step']}.",
        "",
        f"![loss, learning rate and words/s by step]({LOSS_PLOT})",
    ]


def _evaluation_section(manifests: Sequence[Manifest], manifest: Manifest, out: Path) -> list[str]:
    """The scores of every version, their plot, and the diff from the previous version."""
    lines = ["", "## Evaluation", "", *evaluation_table(manifests, manifest.version)]
    if len(manifests) > 1:
        plot_scores(manifests, manifest.version, out / SCORES_PLOT)
        lines += ["", f"![scores across versions]({SCORES_PLOT})"]
    earlier = [m for m in manifests if _version_key(m) < _version_key(manifest)]
    if earlier:
        previous = earlier[-1]
        lines += ["", f"## Changes since {previous.version}", "", "```"]
        lines += [format_diff(diff_manifests(previous, manifest)).rstrip(), "```"]
    return lines


def _map_section(emb: Embeddings, out: Path) -> list[str]:
    """The PCA map of the most frequent words, when there are enough words and dimensions."""
    lines = ["", "## Word map", ""]
    if len(frequent_words(emb)) < 3 or emb.dim < 2:
        return [*lines, "Too few words or dimensions for a projection."]
    drawn = plot_projection(emb, out / PROJECTION_PLOT)
    return lines + [
        f"PCA of the unit vectors of the {drawn} most frequent words (special tokens "
        f"skipped); the {min(LABELLED_WORDS, drawn)} most frequent are labelled.",
        "",
        f"![PCA projection of frequent words]({PROJECTION_PLOT})",
    ]


def write_report(
    artefact_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    history: Sequence[Manifest] | None = None,
) -> Path:
    """Write `out_dir/report.md` and its PNG plots for the artefact in `artefact_dir`.

    The artefact (a path or an fsspec URL) is verified first; `out_dir` is a local directory.
    `history` is the manifests of the other versions of the same name
    (`ArtefactStore.manifests(name)`), compared in the evaluation table and the scores plot; a
    manifest of this very version in it is ignored. Returns the report's path.
    """
    directory = as_location(artefact_dir)
    emb = read_embeddings(directory)
    manifest = emb.manifest
    if manifest is None:  # read_embeddings always sets it
        raise ValueError(f"{directory} has no manifest")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    others = {m.version: m for m in history or [] if m.version != manifest.version}
    manifests = sorted([*others.values(), manifest], key=_version_key)

    lines = [f"# Embedding report: {manifest.name} {manifest.version}", ""]
    lines += [f"Created {manifest.created}.", "", *_summary(manifest, emb)]
    lines += _training_section(directory, out)
    lines += _evaluation_section(manifests, manifest, out)
    lines += _neighbours(manifest)
    lines += _map_section(emb, out)

    report = out / REPORT_FILE
    tmp = out / f".tmp-{uuid.uuid4().hex}-{REPORT_FILE}"
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, report)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return report


__all__ = ["read_training_metrics", "write_report", "project", "frequent_words", "score_title"]
