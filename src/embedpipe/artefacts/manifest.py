"""The typed manifest of a published version: identity, files, model, metrics and lineage.

`manifest.json` is a flat JSON object; `Manifest.from_json` reads it into frozen dataclasses
(checking every field it knows, errors naming the file and the field) and `to_json` writes the
same keys back, so a manifest round-trips unchanged. Only name, version, created and files are
required: the store also holds artefacts that other tools publish with fewer sections. Keys the
schema does not know stay in `Manifest.extra`, written back as they came.

The layout, as `publish_training` writes it::

    name, version, created        set by the store at publish
    files                         {relative name: {"sha256", "bytes"}}
    model                         {"kind", "hyperparameters"}
    tokenizer                     the tokenize settings and "model_file"
    metrics                       {benchmark: {field: number}, "neighbours": {...},
                                  "mlm" / "clm" / "bilm": {...}}
    run_config, stages, training,
    code_version, python,
    libraries, hardware           the lineage: what went in, what ran, where
    parent                        continued training: the artefact the run started from
                                  {"name", "version", "sha256"} (`Manifest.content_sha256`)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from embedpipe.artefacts.files import ArtefactError, relative_name

MANIFEST = "manifest.json"
IDENTITY = ("name", "version", "created", "files")
LINEAGE = (
    "run_config", "stages", "training", "code_version", "python", "libraries", "hardware",
    "parent",
)  # fmt: skip
STAGE_FIELDS = ("fingerprint", "config", "counts", "inputs", "seconds")
NEIGHBOURS = "neighbours"
MLM = "mlm"
CLM = "clm"
BILM = "bilm"


class ManifestError(ArtefactError):
    """A manifest lacks a field or holds one of the wrong type."""


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


def _fail(where: str, key: str, wanted: str, value: Any) -> NoReturn:
    raise ManifestError(f"{where}: field {key!r} must be {wanted}, not {_json_type(value)}")


def _object(value: Any, where: str, key: str, optional: bool = False) -> dict[str, Any] | None:
    if value is None and optional:
        return None
    if not isinstance(value, Mapping):
        _fail(where, key, "an object" + (" or null" if optional else ""), value)
    return dict(value)


def _string(value: Any, where: str, key: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        _fail(where, key, "a string" + (" or null" if optional else ""), value)
    return value


def _number(value: Any, where: str, key: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(where, key, "a number" + (" or null" if optional else ""), value)
    return value


def _known(data: Mapping[str, Any], allowed: tuple[str, ...], where: str, prefix: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ManifestError(
            f"{where}: unknown field '{prefix}{unknown[0]}' (known: {', '.join(allowed)})"
        )


def _copy(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


@dataclass(frozen=True)
class FileEntry:
    """The sha256 and size of one published file."""

    sha256: str
    bytes: int

    @classmethod
    def from_json(cls, data: Any, where: str, key: str) -> FileEntry:
        entry = _object(data, where, key) or {}
        if "sha256" not in entry:
            raise ManifestError(f"{where}: field '{key}.sha256' is missing")
        digest = _string(entry["sha256"], where, f"{key}.sha256")
        size = entry.get("bytes")
        if isinstance(size, bool) or not isinstance(size, int):
            _fail(where, f"{key}.bytes", "an integer", size)
        return cls(sha256=str(digest), bytes=size)

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class Model:
    """The model kind ("sgns", "glove", "mlm", ...) and its hyper-parameters."""

    kind: str
    hyperparameters: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Any, where: str) -> Model:
        model = _object(data, where, "model") or {}
        _known(model, ("kind", "hyperparameters"), where, "model.")
        return cls(
            kind=str(_string(model.get("kind"), where, "model.kind")),
            hyperparameters=_object(
                model.get("hyperparameters"), where, "model.hyperparameters", optional=True
            ),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.hyperparameters is not None:
            out["hyperparameters"] = dict(self.hyperparameters)
        return out


@dataclass(frozen=True)
class StageRecord:
    """One corpus stage as the artefact was made from it: fingerprint, config, counts,
    input fingerprints and the seconds it ran."""

    fingerprint: str | None = None
    config: Mapping[str, Any] | None = None
    counts: Mapping[str, Any] | None = None
    inputs: Mapping[str, Any] | None = None
    seconds: float | None = None

    @classmethod
    def from_json(cls, data: Any, where: str, key: str) -> StageRecord:
        stage = _object(data, where, key) or {}
        _known(stage, STAGE_FIELDS, where, f"{key}.")
        objects = {
            k: _object(stage.get(k), where, f"{key}.{k}", optional=True)
            for k in ("config", "counts", "inputs")
        }
        return cls(
            fingerprint=_string(stage.get("fingerprint"), where, f"{key}.fingerprint", True),
            seconds=_number(stage.get("seconds"), where, f"{key}.seconds", True),
            **objects,
        )

    def to_json(self) -> dict[str, Any]:
        """Every field, null where unknown (the layout `publish_training` writes)."""
        return {
            "fingerprint": self.fingerprint,
            "config": _copy(self.config),
            "counts": _copy(self.counts),
            "inputs": _copy(self.inputs),
            "seconds": self.seconds,
        }


Neighbours = Mapping[str, tuple[tuple[str, float], ...]]


@dataclass(frozen=True)
class Metrics:
    """Evaluation at publish: `scores` holds one {field: number} table per benchmark (keyed
    by the benchmark's name, see `embedpipe.evaluate.benchmarks`); `neighbours` the probe
    words' nearest neighbours; `mlm` a masked LM's held-out loss and perplexity, `clm` a
    causal LM's and `bilm` a biLM's (with the unigram model's perplexity on the same
    tokens)."""

    scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    neighbours: Neighbours | None = None
    mlm: Mapping[str, Any] | None = None
    clm: Mapping[str, Any] | None = None
    bilm: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Any, where: str) -> Metrics:
        metrics = _object(data, where, "metrics") or {}
        scores: dict[str, dict[str, float]] = {}
        for bench, table in metrics.items():
            if bench in (NEIGHBOURS, MLM, CLM, BILM):
                continue
            values = _object(table, where, f"metrics.{bench}") or {}
            for key, value in values.items():
                _number(value, where, f"metrics.{bench}.{key}")
            scores[bench] = values
        return cls(
            scores=scores,
            neighbours=_neighbours(metrics.get(NEIGHBOURS), where),
            mlm=_object(metrics.get(MLM), where, f"metrics.{MLM}", optional=True),
            clm=_object(metrics.get(CLM), where, f"metrics.{CLM}", optional=True),
            bilm=_object(metrics.get(BILM), where, f"metrics.{BILM}", optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {bench: dict(table) for bench, table in self.scores.items()}
        if self.neighbours is not None:
            out[NEIGHBOURS] = {
                word: [[token, score] for token, score in items]
                for word, items in self.neighbours.items()
            }
        for key, value in ((MLM, self.mlm), (CLM, self.clm), (BILM, self.bilm)):
            if value is not None:
                out[key] = dict(value)
        return out


def _neighbours(data: Any, where: str) -> Neighbours | None:
    """{word: [[token, cosine], ...]} as {word: ((token, cosine), ...)}."""
    table = _object(data, where, f"metrics.{NEIGHBOURS}", optional=True)
    if table is None:
        return None
    out: dict[str, tuple[tuple[str, float], ...]] = {}
    for word, items in table.items():
        key = f"metrics.{NEIGHBOURS}.{word}"
        if not isinstance(items, list):
            _fail(where, key, "an array", items)
        pairs = []
        for i, item in enumerate(items):
            if not (isinstance(item, list) and len(item) == 2):
                _fail(where, f"{key}[{i}]", "a [token, cosine] pair", item)
            token = _string(item[0], where, f"{key}[{i}][0]")
            pairs.append((str(token), float(_number(item[1], where, f"{key}[{i}][1]") or 0.0)))
        out[word] = tuple(pairs)
    return out


@dataclass(frozen=True)
class Lineage:
    """How the artefact was made: the run config, every corpus stage, the training summary,
    code and library versions, the publishing host's hardware and, for continued training,
    the parent artefact ({"name", "version", "sha256"})."""

    run_config: Mapping[str, Any] | None = None
    stages: Mapping[str, StageRecord] | None = None
    training: Mapping[str, Any] | None = None
    code_version: Mapping[str, Any] | None = None
    python: str | None = None
    libraries: Mapping[str, str | None] | None = None
    hardware: Mapping[str, Any] | None = None
    parent: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Lineage:
        """The lineage fields of a whole manifest (they sit at its top level)."""
        stages = _object(data.get("stages"), where, "stages", optional=True)
        libraries = _object(data.get("libraries"), where, "libraries", optional=True)
        for lib, version in (libraries or {}).items():
            _string(version, where, f"libraries.{lib}", optional=True)
        objects = {
            key: _object(data.get(key), where, key, optional=True)
            for key in ("run_config", "training", "code_version", "hardware", "parent")
        }
        return cls(
            stages=None
            if stages is None
            else {t: StageRecord.from_json(s, where, f"stages.{t}") for t, s in stages.items()},
            python=_string(data.get("python"), where, "python", optional=True),
            libraries=libraries,
            **objects,
        )

    def to_json(self) -> dict[str, Any]:
        """The lineage fields present, for the top level of a manifest."""
        out: dict[str, Any] = {
            "run_config": _copy(self.run_config),
            "stages": None
            if self.stages is None
            else {table: stage.to_json() for table, stage in self.stages.items()},
            "training": _copy(self.training),
            "code_version": _copy(self.code_version),
            "python": self.python,
            "libraries": _copy(self.libraries),
            "hardware": _copy(self.hardware),
            "parent": _copy(self.parent),
        }
        return {key: value for key, value in out.items() if value is not None}


def manifest_details(
    model: Model | None = None,
    tokenizer: Mapping[str, Any] | None = None,
    metrics: Metrics | None = None,
    lineage: Lineage | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON of a manifest's content, everything but what the store sets at publish
    (name, version, created, files): what `ArtefactStore.publish` takes."""
    out: dict[str, Any] = dict(extra or {})
    if model is not None:
        out["model"] = model.to_json()
    if tokenizer is not None:
        out["tokenizer"] = dict(tokenizer)
    if metrics is not None:
        out["metrics"] = metrics.to_json()
    out.update((lineage or Lineage()).to_json())
    return out


def parse_details(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The typed content fields of manifest JSON `data`, as keyword arguments of Manifest."""
    known = {"model", "tokenizer", "metrics", *LINEAGE, *IDENTITY}
    return {
        "model": None if data.get("model") is None else Model.from_json(data["model"], where),
        "tokenizer": _object(data.get("tokenizer"), where, "tokenizer", optional=True),
        "metrics": None if data.get("metrics") is None else Metrics.from_json(data["metrics"], where),
        "lineage": Lineage.from_json(data, where),
        "extra": {key: value for key, value in data.items() if key not in known},
    }  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    """A published version's manifest.json, typed (see the module for the layout)."""

    name: str
    version: str
    created: str
    files: Mapping[str, FileEntry]
    model: Model | None = None
    tokenizer: Mapping[str, Any] | None = None
    metrics: Metrics | None = None
    lineage: Lineage = field(default_factory=Lineage)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Check and type manifest JSON; ManifestError names `where` (the file) and the field."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where} does not hold a JSON object")
        for key in IDENTITY:
            if key not in data:
                raise ManifestError(f"{where}: field {key!r} is missing")
        files = _object(data["files"], where, "files") or {}
        for relname in files:
            try:
                relative_name(relname, where)
            except ArtefactError as e:
                raise ManifestError(f"{where}: field 'files' lists {relname!r}: {e}") from None
        return cls(
            name=str(_string(data["name"], where, "name")),
            version=str(_string(data["version"], where, "version")),
            created=str(_string(data["created"], where, "created")),
            files={k: FileEntry.from_json(v, where, f"files.{k}") for k, v in files.items()},
            **parse_details(data, where),
        )

    def content_sha256(self) -> str:
        """One hash of the version's content: sha256 of its {file: sha256} table as sorted
        JSON (what a continued run records of its parent)."""
        table = {name: entry.sha256 for name, entry in self.files.items()}
        return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The manifest.json object: the keys it was read from, or publish wrote."""
        details = manifest_details(
            self.model, self.tokenizer, self.metrics, self.lineage, self.extra
        )
        return {
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "files": {name: entry.to_json() for name, entry in self.files.items()},
            **details,
        }
