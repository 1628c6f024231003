"""What changed between two artefact manifests: configuration, corpus stages, scores, sizes.

Answers "why is v0007 better than v0006?" from the manifests alone, with no vectors loaded:
the hyper-parameters and run configuration that differ, the corpus stages whose fingerprint
or counts moved, the evaluation scores with their deltas, the sizes of files and runs, and
the parent a continued run started from. `diff_vectors` adds what moved, from the loaded
vectors: the words added and removed, and the cosine of each shared word's two vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from embedpipe.artefacts.manifest import Manifest, StageRecord
from embedpipe.evaluate.benchmarks import BENCHMARKS

TRAINING = ("steps", "seconds", "words_per_sec", "corpus_words", "world_size", "device")
STAGE_COUNTS_SKIPPED = ("buckets", "shards", "boundaries")  # bulky per-bucket/shard lists
_MISSING = object()
SHOWN_WORDS = 10  # words listed per kind in `diff_vectors`

if TYPE_CHECKING:
    from embedpipe.artefacts.keyed import Embeddings


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}; lists and scalars are leaves."""
    if not isinstance(value, Mapping):
        return {prefix: value} if prefix else {}
    out: dict[str, Any] = {}
    for key in sorted(value, key=str):
        out.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
    return out


def _number(x: Any) -> float | None:
    """x as a finite float, None for anything else (missing, NaN, bools, strings)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _same(x: Any, y: Any) -> bool:
    """Equality that treats two NaNs as equal (a NaN score did not change)."""
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y


def _pair(a: Any, b: Any) -> dict[str, Any]:
    """{"a", "b"} plus "delta" = b - a when both are finite numbers."""
    entry: dict[str, Any] = {"a": a, "b": b}
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        delta = y - x
        entry["delta"] = int(delta) if isinstance(a, int) and isinstance(b, int) else delta
    return entry


def _changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The flattened keys whose values differ between a and b (missing on one side: None)."""
    fa, fb = _flatten(a), _flatten(b)
    return {
        key: _pair(fa.get(key), fb.get(key))
        for key in sorted(fa.keys() | fb.keys())
        if not _same(fa.get(key, _MISSING), fb.get(key, _MISSING))
    }


def _hyperparameters(manifest: Manifest) -> dict[str, Any]:
    """The model kind and its hyper-parameters (run_config.train when the model lacks them)."""
    model = manifest.model
    params = model.hyperparameters if model is not None else None
    if params is None:
        params = (manifest.lineage.run_config or {}).get("train") or {}
    return {"kind": model.kind if model is not None else None, **params}


def _stage_diff(a: StageRecord | None, b: StageRecord | None) -> dict[str, Any] | None:
    """How one corpus stage differs: fingerprint, scalar counts; None when identical."""
    if a is None or b is None:
        return {"status": "added" if a is None else "removed"}
    entry: dict[str, Any] = {}
    if a.fingerprint != b.fingerprint:
        entry["fingerprint"] = {"a": a.fingerprint, "b": b.fingerprint}

    def counts(stage: StageRecord) -> dict[str, Any]:
        return {k: v for k, v in (stage.counts or {}).items() if k not in STAGE_COUNTS_SKIPPED}

    changed_counts = _changes(counts(a), counts(b))
    if changed_counts:
        entry["counts"] = changed_counts
    changed_config = _changes(a.config or {}, b.config or {})
    if changed_config:
        entry["config"] = changed_config
    return entry or None


def _sizes(manifest: Manifest) -> dict[str, Any]:
    """Bytes per file and in total, vocabulary size and dimension."""
    sizes: dict[str, Any] = {
        f"bytes.{name}": entry.bytes for name, entry in sorted(manifest.files.items())
    }
    sizes["bytes.total"] = sum(sizes.values()) or None
    vocab = (manifest.lineage.stages or {}).get("vocab")
    sizes["vocab_size"] = (vocab.counts or {}).get("vocab_size") if vocab else None
    sizes["dim"] = _hyperparameters(manifest).get("dim")
    return sizes


def _identity(manifest: Manifest) -> dict[str, Any]:
    return {"name": manifest.name, "version": manifest.version, "created": manifest.created}


def _stages(a: Manifest, b: Manifest) -> tuple[dict[str, Any], list[str]]:
    """The corpus stages that differ, and the names of those that do not."""
    stages_a, stages_b = a.lineage.stages or {}, b.lineage.stages or {}
    stages: dict[str, Any] = {}
    unchanged: list[str] = []
    for table in sorted(stages_a.keys() | stages_b.keys()):
        entry = _stage_diff(stages_a.get(table), stages_b.get(table))
        if entry is None:
            unchanged.append(table)
        else:
            stages[table] = entry
    return stages, unchanged


def _metrics(a: Manifest, b: Manifest) -> dict[str, Any]:
    """Every declared benchmark's diffed fields present on either side."""
    metrics: dict[str, Any] = {}
    for bench in BENCHMARKS:
        for field in bench.fields:
            x, y = bench.read(a.metrics, field), bench.read(b.metrics, field)
            if x is not None or y is not None:
                metrics[f"{bench.name}.{field}"] = _pair(x, y)
    return metrics


def _both(x: Mapping[str, Any], y: Mapping[str, Any], keys: Any) -> dict[str, Any]:
    """{key: pair} for the keys given a value on either side."""
    return {
        key: _pair(x.get(key), y.get(key))
        for key in keys
        if x.get(key) is not None or y.get(key) is not None
    }


def diff_vectors(a: Embeddings, b: Embeddings, shown: int = SHOWN_WORDS) -> dict[str, Any]:
    """What moved from embeddings `a` to `b`, word by word (special tokens aside).

    Returns "added", "removed", "shared" (word counts), "added_words" and "removed_words"
    (the first `shown`, most frequent first), and "cosine": for the shared words, the
    median, 5th percentile, mean and minimum of the cosine between a word's vector in `a`
    and in `b`, with "moved_most" (the `shown` lowest, [word, cosine]); None when the
    dimensions differ.
    """
    words_a, words_b = (set(e.vocab[i] for i in e.word_ids()) for e in (a, b))
    shared = [a.vocab[i] for i in a.word_ids() if a.vocab[i] in words_b]
    result: dict[str, Any] = {
        "added": len(words_b - words_a),
        "removed": len(words_a - words_b),
        "shared": len(shared),
        "added_words": [w for w in b.vocab if w in words_b - words_a][:shown],
        "removed_words": [w for w in a.vocab if w in words_a - words_b][:shown],
        "cosine": None,
    }
    if a.dim != b.dim or not shared:
        return result
    x = a.vectors[[a.key_to_index[w] for w in shared]].astype(np.float64)
    y = b.vectors[[b.key_to_index[w] for w in shared]].astype(np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    cos = (x * y).sum(axis=1) / np.maximum(norms, 1e-12)
    lowest = np.argsort(cos, kind="stable")[:shown]
    result["cosine"] = {
        "median": float(np.median(cos)),
        "p5": float(np.percentile(cos, 5)),
        "mean": float(cos.mean()),
        "min": float(cos.min()),
        "moved_most": [[shared[i], round(float(cos[i]), 4)] for i in lowest],
    }
    return result


def diff_manifests(
    a: Manifest, b: Manifest, vectors: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What changed from manifest `a` (older) to manifest `b` (newer).

    Returns a JSON-ready dict:

    * "a", "b": name, version and created of each side;
    * "hyperparameters": {key: {"a", "b", "delta"?}} for the model kind and training
      hyper-parameters that differ;
    * "config": the same for the rest of the run configuration (corpus, tokenize, vocab, ...);
    * "stages": {table: {"fingerprint"?, "counts"?, "config"?} or {"status": added|removed}}
      for the corpus stages that differ; "stages_unchanged": the others;
    * "metrics": {"<benchmark>.<field>": {"a", "b", "delta"?}, ...} for the fields of every
      declared benchmark (`Benchmark.fields`) present on either side (delta only when both
      are finite);
    * "sizes": bytes per file and in total, vocab size and dimension, with deltas;
    * "training": steps, seconds, words/s, corpus words, world size and device;
    * "code", "libraries": versions that differ;
    * "parent": {"a", "b"}, the artefact each side continued from, when either did;
    * "vectors": `vectors` as given (`diff_vectors` of the two sides), when given.
    """
    run_a = dict(a.lineage.run_config or {})
    run_b = dict(b.lineage.run_config or {})
    run_a.pop("train", None)
    run_b.pop("train", None)
    stages, unchanged = _stages(a, b)
    sizes_a, sizes_b = _sizes(a), _sizes(b)
    training_a, training_b = a.lineage.training or {}, b.lineage.training or {}
    out = {
        "a": _identity(a),
        "b": _identity(b),
        "hyperparameters": _changes(_hyperparameters(a), _hyperparameters(b)),
        "config": _changes(run_a, run_b),
        "stages": stages,
        "stages_unchanged": unchanged,
        "metrics": _metrics(a, b),
        "sizes": _both(sizes_a, sizes_b, sorted(sizes_a.keys() | sizes_b.keys())),
        "training": _both(training_a, training_b, TRAINING),
        "code": _changes(a.lineage.code_version or {}, b.lineage.code_version or {}),
        "libraries": _changes(a.lineage.libraries or {}, b.lineage.libraries or {}),
    }
    if a.lineage.parent is not None or b.lineage.parent is not None:
        out["parent"] = {"a": _copy(a.lineage.parent), "b": _copy(b.lineage.parent)}
    if vectors is not None:
        out["vectors"] = dict(vectors)
    return out


def _copy(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


def _show(value: Any) -> str:
    """A compact terminal rendering of one value."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256 fingerprint
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _show_delta(entry: Mapping[str, Any], signed_percent: bool = False) -> str:
    if "delta" not in entry:
        return ""
    delta = entry["delta"]
    text = f"{delta:+d}" if isinstance(delta, int) else f"{delta:+.4f}"
    a = _number(entry["a"])
    if signed_percent and a:
        text += f" ({100 * delta / abs(a):+.1f}%)"
    return text


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Left-aligned columns: key, a, b, delta."""
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def _stage_lines(d: Mapping[str, Any]) -> list[str]:
    """The corpus-stage part of `format_diff`: fingerprints, changed config and counts."""
    lines = [""]
    if d["stages"]:
        lines.append("corpus stages:")
    for table, entry in d["stages"].items():
        if "status" in entry:
            lines.append(f"  {table}: {entry['status']}")
            continue
        fp = entry.get("fingerprint")
        what = f"fingerprint {_show(fp['a'])} -> {_show(fp['b'])}" if fp else "same fingerprint"
        lines.append(f"  {table}: {what}")
        changed = {**entry.get("config", {}), **entry.get("counts", {})}
        rows = [
            ("  " + k, _show(e["a"]), _show(e["b"]), _show_delta(e, True))
            for k, e in changed.items()
        ]
        lines.extend(_table(rows) if rows else [])
    if d["stages_unchanged"]:
        lines.append(f"corpus stages unchanged: {', '.join(d['stages_unchanged'])}")
    if not d["stages"] and not d["stages_unchanged"]:
        lines.append("corpus stages: none recorded")
    return lines


def format_diff(d: Mapping[str, Any]) -> str:
    """A plain-text rendering of a `diff_manifests` result for a terminal."""

    def label(side: Mapping[str, Any]) -> str:
        return f"{side.get('name') or '?'} {side.get('version') or '?'}"

    a, b = label(d["a"]), label(d["b"])
    lines = [f"{a} -> {b}"]
    if d["a"].get("name") == d["b"].get("name"):  # columns by version alone
        a, b = str(d["a"].get("version") or "?"), str(d["b"].get("version") or "?")
    header = ("", a, b, "delta")

    def section(title: str, entries: Mapping[str, Any], percent: bool = False) -> None:
        lines.append("")
        if not entries:
            lines.append(f"{title}: unchanged")
            return
        lines.append(f"{title}:")
        rows = [header] + [
            (key, _show(e["a"]), _show(e["b"]), _show_delta(e, percent))
            for key, e in entries.items()
        ]
        lines.extend(_table(rows))

    lines += _parent_lines(d)
    section("metrics", d["metrics"])
    section("hyper-parameters", d["hyperparameters"])
    section("run config", d["config"])

    lines += _stage_lines(d)
    section("sizes", d["sizes"], percent=True)
    section("training", d["training"], percent=True)
    if d["code"] or d["libraries"]:
        section(
            "code and libraries",
            {**{f"code.{k}": v for k, v in d["code"].items()}, **d["libraries"]},
        )
    lines += _vector_lines(d.get("vectors"))
    return "\n".join(lines) + "\n"


def _parent_lines(d: Mapping[str, Any]) -> list[str]:
    """Which artefact each side continued from (continued training), if any did."""
    lines = []
    for side in ("a", "b"):
        parent = (d.get("parent") or {}).get(side)
        if parent:
            label = f"{d[side].get('name') or '?'} {d[side].get('version') or '?'}"
            lines.append(
                f"{label} continued from {parent.get('name')} {parent.get('version')} "
                f"({_show(parent.get('sha256'))})"
            )
    return lines


def _vector_lines(v: Mapping[str, Any] | None) -> list[str]:
    """The `diff_vectors` part of `format_diff`: words added and removed, cosines."""
    if v is None:
        return []
    lines = ["", "vectors:"]
    rows = [("added words", str(v["added"]), ", ".join(v["added_words"])),
            ("removed words", str(v["removed"]), ", ".join(v["removed_words"])),
            ("shared words", str(v["shared"]), "")]  # fmt: skip
    cos = v.get("cosine")
    if cos is None:
        rows.append(("cosine", "-", "dimensions differ or no shared word"))
    else:
        moved = ", ".join(f"{w} {c:.3f}" for w, c in cos["moved_most"])
        rows += [("median cosine", f"{cos['median']:.4f}", ""),
                 ("5th percentile", f"{cos['p5']:.4f}", ""),
                 ("moved most", f"{cos['min']:.4f}", moved)]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for name, value, more in rows:
        lines.append(f"  {name.ljust(widths[0])}  {value.ljust(widths[1])}  {more}".rstrip())
    return lines


__all__ = ["diff_manifests", "diff_vectors", "format_diff"]
