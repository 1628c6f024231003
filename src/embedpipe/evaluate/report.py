"""A Markdown report of one published embedding artefact, with PNG plots.

For reviewing a version before pointing an alias at it: what was trained and on what, how
training went (loss, learning rate and words/s from metrics.jsonl), how its scores compare
with the other versions of the same name, what changed since the previous one, and a 2-D
PCA map of the most frequent words (`plots`). `inline_report` gives the same Markdown with
its pictures inside it, for a place that cannot reach the report's directory (the Prefect
UI of a remote server).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from embedpipe.artefacts.diff import diff_manifests, format_diff
from embedpipe.artefacts.files import as_location, filesystem, join
from embedpipe.artefacts.loader import Embeddings, read_embeddings
from embedpipe.artefacts.manifest import Manifest
from embedpipe.evaluate.benchmarks import BENCHMARKS, Benchmark
from embedpipe.evaluate.plots import (
    LOSS_PLOT,
    PROJECTION_PLOT,
    SKIPPED_FREQUENT,
    frequent_words,
    new_figure,
    plot_projection,
    plot_training,
    save_png,
)
from embedpipe.workdir import METRICS

REPORT_FILE = "report.md"
METRICS_FILE = METRICS  # the training metrics an artefact carries
SCORES_PLOT = "scores.png"
METRIC_SIGNS = {"spearman": "ρ", "accuracy": "acc."}
_VERSION_RE = re.compile(r"v([0-9]+)")
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s:]+\.png)\)")  # ![alt](name.png), local
INLINE_WIDTH = 640  # pixels: a picture inside the Markdown is downscaled to this width
INLINE_COLOURS = 64  # and drawn with a palette of this many colours (plots have few)
INLINE_BUDGET = 1_000_000  # bytes of Markdown at most; pictures past it are left out


def read_training_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (path or URL), one per logged step, sorted by step.

    A resumed run appends the steps after its last checkpoint again; the later record of a
    step wins, as it belongs to the run that produced the published vectors. Records of one
    step are merged, a later value replacing an earlier one unless it is null (an evaluation
    logged apart from the step's loss).
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
            known = by_step.setdefault(int(record["step"]), {})
            known.update({k: v for k, v in record.items() if v is not None or k not in known})
    return [by_step[s] for s in sorted(by_step)]


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
    fig = new_figure(figsize=(8, 4), layout="constrained")
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
    save_png(fig, path)


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
    drawn, labels = plot_projection(emb, out / PROJECTION_PLOT)
    return lines + [
        f"PCA of the unit vectors of the {drawn} most frequent words (special tokens "
        f"skipped). {len(labels)} labelled, spread over the map, none of the "
        f"{min(SKIPPED_FREQUENT, drawn // 3)} most frequent: {', '.join(labels)}.",
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


def png_data_uri(path: Path) -> str:
    """A `data:image/png;base64,` URI of the PNG at `path`, downscaled to INLINE_WIDTH and
    reduced to INLINE_COLOURS colours: a plot in a few tens of kilobytes."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as image:
        picture = image.convert("RGB")
    if picture.width > INLINE_WIDTH:
        height = round(picture.height * INLINE_WIDTH / picture.width)
        picture = picture.resize((INLINE_WIDTH, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    palette = picture.quantize(INLINE_COLOURS, method=Image.Quantize.FASTOCTREE)
    palette.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def inline_report(report: str | os.PathLike[str], budget: int = INLINE_BUDGET) -> str:
    """The Markdown of `report` (report.md) with each local PNG it shows inside it as a data
    URI, for a viewer that cannot read the report's directory (a remote Prefect UI renders
    `data:image/` pictures in a markdown artifact).

    Pictures that would take the text past `budget` bytes are replaced by a line naming
    their file. Raises FileNotFoundError naming a picture the report shows but lacks.
    """
    path = Path(report)
    text = path.read_text(encoding="utf-8")
    size = len(text.encode())

    def embed(match: re.Match[str]) -> str:
        nonlocal size
        alt, name = match.groups()
        picture = path.parent / name
        if not picture.is_file():
            raise FileNotFoundError(f"{path} shows {name}, which is not in {path.parent}")
        uri = png_data_uri(picture)
        if size + len(uri) > budget:
            return f"*({alt}: left out here, over {budget:,} bytes; see {name} by the report)*"
        size += len(uri)
        return f"![{alt}]({uri})"

    return _IMAGE_LINK.sub(embed, text)


__all__ = ["inline_report", "read_training_metrics", "score_title", "write_report"]
