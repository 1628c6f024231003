"""Typed, validated configuration: one dataclass per stage plus the run that joins them.

Configs load from TOML or YAML, take `section.key=value` overrides, and validate in
`__post_init__` so a bad value fails before any Spark or torch work starts. Each stage's
config has a stable fingerprint that goes into its manifest and decides whether a stage
can be skipped on a rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import tomllib
import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class CorpusConfig:
    """Where the raw text is and how to read it."""

    paths: tuple[str, ...] = ("data/sample/wordnet-glosses.txt.gz",)
    format: Literal["text", "jsonl", "parquet"] = "text"
    text_field: str = "text"  # JSON field / Parquet column holding the text
    unit: Literal["line", "sentence"] = "line"  # one sequence per line/record, or per sentence

    def __post_init__(self) -> None:
        _check(len(self.paths) > 0, "corpus.paths: give at least one path")
        _check(self.format in ("text", "jsonl", "parquet"), f"corpus.format: {self.format!r}")
        _check(self.unit in ("line", "sentence"), f"corpus.unit: {self.unit!r}")


@dataclass(frozen=True)
class TokenizeConfig:
    """Word-level tokenizer: NFKC, lower-casing, runs of letters, marks and digits."""

    lowercase: bool = True
    nfkc: bool = True
    cjk_chars: bool = True  # Han, Hiragana and Katakana runs become one token per character
    urls: bool = False  # replace URLs by the token "url"
    digits: bool = False  # replace every decimal digit by "0" ("1984" -> "0000")
    max_line_chars: int = 100_000  # longer lines are split at whitespace (counted)
    kind: Literal["word", "sentencepiece"] = "word"
    # SentencePiece: trained on a sample of lines drawn by Spark, applied in Arrow batches.
    sp_model_type: Literal["unigram", "bpe"] = "unigram"
    sp_vocab_size: int = 8000
    sp_sample_lines: int = 1_000_000
    sp_character_coverage: float = 0.9995
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.max_line_chars >= 16, "tokenize.max_line_chars must be >= 16")
        _check(self.kind in ("word", "sentencepiece"), f"tokenize.kind: {self.kind!r}")
        _check(
            self.sp_model_type in ("unigram", "bpe"),
            f"tokenize.sp_model_type: {self.sp_model_type!r}",
        )
        _check(self.sp_vocab_size >= 16, "tokenize.sp_vocab_size must be >= 16")
        _check(self.sp_sample_lines >= 1, "tokenize.sp_sample_lines must be >= 1")


@dataclass(frozen=True)
class VocabConfig:
    min_count: int = 5
    max_size: int | None = None  # words, not counting the special tokens
    sample: float = 1e-3  # word2vec subsampling threshold for `keep_prob`; 0 keeps every word
    noise_power: float = 0.75  # `noise_prob` is count ** noise_power, normalised

    def __post_init__(self) -> None:
        _check(self.min_count >= 1, "vocab.min_count must be >= 1")
        _check(self.max_size is None or self.max_size >= 1, "vocab.max_size must be >= 1")
        _check(self.sample >= 0, "vocab.sample must be >= 0")
        _check(self.noise_power > 0, "vocab.noise_power must be > 0")


@dataclass(frozen=True)
class EncodeConfig:
    oov: Literal["unk", "drop"] = "unk"  # map unknown tokens to [UNK] or drop them

    def __post_init__(self) -> None:
        _check(self.oov in ("unk", "drop"), f"encode.oov must be 'unk' or 'drop', not {self.oov!r}")


@dataclass(frozen=True)
class BucketConfig:
    boundaries: tuple[int, ...] | None = None  # inclusive upper bounds; derived when None
    num_buckets: int = 8

    def __post_init__(self) -> None:
        if self.boundaries is not None:
            b = list(self.boundaries)
            _check(
                b == sorted(set(b)) and all(x > 0 for x in b),
                "bucket.boundaries must be strictly increasing positive lengths",
            )
        _check(self.num_buckets >= 1, "bucket.num_buckets must be >= 1")


@dataclass(frozen=True)
class CooccurConfig:
    window: int = 10
    min_weight: float = 0.0
    num_shards: int = 4

    def __post_init__(self) -> None:
        _check(self.window >= 1, "cooccur.window must be >= 1")
        _check(self.min_weight >= 0, "cooccur.min_weight must be >= 0")
        _check(self.num_shards >= 1, "cooccur.num_shards must be >= 1")


@dataclass(frozen=True)
class SparkConfig:
    """How the corpus stages get a Spark session: in-process, or spark-submit to a master.

    `master`: `local[*]`, `spark://host:7077` (standalone), `yarn` or `k8s://https://host:443`.
    The resource fields become the usual `spark.*` properties (`spark_properties`); `conf`
    passes any other property through and wins over them. Stage fingerprints never include
    this section: where a stage ran does not change its tables.
    """

    master: str = "local[*]"
    submit: bool = False  # True: run each stage through spark-submit (corpus/spark/job.py)
    deploy_mode: Literal["client", "cluster"] = "client"  # cluster: the driver runs remotely
    driver_memory: str = "2g"
    executor_memory: str | None = None
    executor_cores: int | None = None
    num_executors: int | None = None  # spark.executor.instances (YARN, Kubernetes)
    cores_max: int | None = None  # spark.cores.max: cap on an application's cores (standalone)
    shuffle_partitions: int = 8
    # Ship the package to executors as a zip (--py-files); False when the cluster's image
    # has embedpipe installed (Kubernetes with infra/Dockerfile).
    ship_package: bool = True
    # The job file spark-submit runs, as the driver sees it; None: the installed package's
    # `embedpipe/corpus/spark/job.py`. Cluster mode on an image with embedpipe installed
    # names the image's copy, e.g. `local:///usr/local/lib/python3.11/site-packages/
    # embedpipe/corpus/spark/job.py` (infra/Dockerfile).
    job_file: str | None = None
    conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(
            self.deploy_mode in ("client", "cluster"), f"spark.deploy_mode: {self.deploy_mode!r}"
        )
        _check(self.shuffle_partitions >= 1, "spark.shuffle_partitions must be >= 1")
        for name in ("executor_cores", "num_executors", "cores_max"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"spark.{name} must be >= 1")
        _check(
            not (self.deploy_mode == "cluster" and self.master.startswith(("local", "spark://"))),
            "spark.deploy_mode = 'cluster' needs a YARN or Kubernetes master "
            "(Spark runs Python drivers on standalone masters in client mode only)",
        )

    def spark_properties(self) -> dict[str, str]:
        """The `spark.*` properties these settings mean, then `conf` (which wins)."""
        props = {
            "spark.driver.memory": self.driver_memory,
            "spark.executor.memory": self.executor_memory,
            "spark.executor.cores": self.executor_cores,
            "spark.executor.instances": self.num_executors,
            "spark.cores.max": self.cores_max,
            "spark.sql.shuffle.partitions": self.shuffle_partitions,
        }
        return {k: str(v) for k, v in props.items() if v is not None} | dict(self.conf)


@dataclass(frozen=True)
class LaunchConfig:
    """How torchrun starts training: one node (`--standalone`) or many by c10d rendezvous.

    Not part of the training fingerprint (where processes run does not change the result;
    the world size, `train.nproc` x `nnodes`, is checked again on resume). Every node runs
    the same command with its own `node_rank` (see infra/slurm and infra/k8s).
    """

    nnodes: int = 1
    node_rank: int = 0
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str = ""  # host:port of the rendezvous; empty on one node: --standalone
    rdzv_id: str = "embedpipe"
    max_restarts: int = 0  # worker-group restarts; each resumes from the last checkpoint
    local_addr: str = ""  # address this node is reached at (e.g. 127.0.0.1 on loopback)

    def __post_init__(self) -> None:
        _check(self.nnodes >= 1, "launch.nnodes must be >= 1")
        _check(0 <= self.node_rank < self.nnodes, "launch.node_rank must be in [0, nnodes)")
        _check(self.max_restarts >= 0, "launch.max_restarts must be >= 0")
        _check(
            self.nnodes == 1 or bool(self.rdzv_endpoint),
            "launch.rdzv_endpoint (host:port) is needed when launch.nnodes > 1",
        )


@dataclass(frozen=True)
class TrainConfig:
    """`[train]`: what every model shares; `options` is the chosen model's section.

    In TOML the section is the table `[train.<model>]` (e.g. `[train.sgns]`), whose dataclass
    the model registers with `train.registry`; a section of another model, or a key no model
    shares, is an error naming it. `to_dict` gives that nested shape back, and the training
    fingerprint covers only the chosen model's section.
    """

    model: str = "sgns"  # a registered model: sgns, cbow, glove, mlm, or one of `plugins`
    epochs: int = 1
    seed: int = 1
    # Processes per node and compute threads per process (kernel threads, or torch's
    # intra-op threads); "auto": one process per GPU, or one per CPU node with a thread
    # per core (`train.layout`).
    nproc: int | Literal["auto"] = "auto"
    threads: int | Literal["auto"] = "auto"
    checkpoint_every: int = 0  # steps; 0: only at the end of each epoch
    keep_checkpoints: int = 2
    log_every: int = 50
    plugins: tuple[str, ...] = ()  # modules imported first: models registered outside embedpipe
    options: Any = None  # the model's section; None: its defaults

    def __post_init__(self) -> None:
        from embedpipe.train.registry import get_model, import_plugins

        import_plugins(self.plugins)
        section = get_model(self.model).section
        if self.options is None:
            object.__setattr__(self, "options", section())
        _check(
            type(self.options) is section,
            f"train.options: a {type(self.options).__name__} is not {self.model}'s section "
            f"({section.__name__})",
        )
        for name in ("epochs", "log_every"):
            _check(getattr(self, name) >= 1, f"train.{name} must be >= 1")
        for name in ("nproc", "threads"):
            value = getattr(self, name)
            _check(value == "auto" or value >= 1, f"train.{name} must be >= 1 or 'auto'")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")

    @classmethod
    def from_table(cls, data: Any, where: str = "train.") -> TrainConfig:
        """Parse the `[train]` table: shared keys and the one `[train.<model>]` section."""
        from embedpipe.train.registry import get_model, import_plugins, model_names

        _check(isinstance(data, dict), f"{where.rstrip('.')} must be a table, not {data!r}")
        hints = get_type_hints(cls)
        shared = {f.name for f in dataclasses.fields(cls)} - {"options"}
        values = {k: check_value(hints[k], v, where + k) for k, v in data.items() if k in shared}
        model = values.get("model", cls.model)
        import_plugins(values.get("plugins", ()))  # they register their models
        spec = get_model(model)
        others = sorted(set(data) & (set(model_names()) - {model}))
        _check(not others, f"{where}{', '.join(others)} is set but {where}model is {model!r}")
        unknown = sorted(set(data) - shared - {model})
        _check(not unknown, f"unknown config key(s): {', '.join(where + k for k in unknown)}")
        try:
            options = from_dict(spec.section, data.get(model, {}), f"{where}{model}.")
        except ConfigError as e:  # a section's own checks name the field, not the section
            named = f"{where}{model}" in str(e)
            raise (e if named else ConfigError(f"{where}{model}.{e}")) from None
        try:
            return cls(**values, options=options)
        except TypeError as e:
            raise ConfigError(f"{where.rstrip('.')}: {e}") from e

    def to_table(self) -> dict[str, Any]:
        """The `[train]` table, JSON-ready: shared keys, the model's section under its name."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del shared["options"]
        return to_dict(shared) | {self.model: to_dict(self.options)}


@dataclass(frozen=True)
class RunConfig:
    """Everything one pipeline run needs.

    `store`: the artefact store's root, a path or fsspec URL; None means the default
    (`embedpipe.artefacts.store_root`: $EMBEDPIPE_STORE, else ./artefacts).
    """

    name: str = "sample"
    workdir: str = "work"
    store: str | None = None
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    bucket: BucketConfig = field(default_factory=BucketConfig)
    cooccur: CooccurConfig = field(default_factory=CooccurConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name), "name must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config, in the shape `load_config` reads (tuples become lists).

    A class that lays out its own table (`to_table`, e.g. one with a section per model)
    is asked for it.
    """
    return json.loads(json.dumps(_plain(config)))


def _plain(value: Any) -> Any:
    if hasattr(value, "to_table"):
        return value.to_table()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build a config dataclass from nested dicts, checking every value against its type.

    Unknown keys, values of the wrong type and failed range checks raise `ConfigError`
    naming the key (`where` is the dotted prefix, e.g. "train."). A class that reads its
    own table (`from_table`, e.g. one with a section per model) is handed the table.
    """
    if hasattr(cls, "from_table"):
        return cls.from_table(data, where)  # type: ignore[attr-defined]
    _check(isinstance(data, dict), f"{where.rstrip('.') or 'config'} must be a table, not {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    _check(not unknown, f"unknown config key(s): {', '.join(where + k for k in unknown)}")
    kwargs = {key: check_value(hints[key], value, where + key) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {e}") from e


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def check_value(hint: Any, value: Any, key: str) -> Any:
    """`value` as type `hint` wants it, or a ConfigError naming the key, value and type.

    Strict where a silent conversion would hide a mistake (2.7 for an int, a string for a
    list); lenient where text is the only way in: "true"/"false" for booleans (command-line
    overrides) and numeric strings for floats (YAML 1.1 reads `1e-3` as a string).
    """
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return check_value(option, value, key)
            except ConfigError as e:
                errors.append(e)
        if len(options) == 1:
            raise errors[0]
        _fail(key, value, " or ".join(_type_name(a) for a in args))
    if origin is Literal:
        _check(value in args, f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        return _check_sequence(hint, value, key)
    if origin is dict:
        _check(isinstance(value, dict), f"{key}: expected a table, got {value!r}")
        k_hint, v_hint = args or (str, Any)
        return {
            check_value(k_hint, k, f"{key} key"): check_value(
                v_hint, _scalar_text(v, v_hint), f"{key}.{k}"
            )
            for k, v in value.items()
        }
    return _check_scalar(hint, value, key)


def _check_sequence(hint: Any, value: Any, key: str) -> tuple[Any, ...]:
    args = get_args(hint)
    if not isinstance(value, list | tuple):
        hint_text = f' (write ["{value}"])' if isinstance(value, str) else ""
        _fail(key, value, f"a list of {_type_name(args[0]) if args else 'values'}{hint_text}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(check_value(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if args:
        _check(len(value) == len(args), f"{key}: expected {len(args)} values, got {list(value)!r}")
        return tuple(
            check_value(a, v, f"{key}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    return tuple(value)


def _check_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        _fail(key, value, "a boolean (true or false)")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        _fail(key, value, "an integer")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        _fail(key, value, "a number")
    if hint is str:
        if isinstance(value, str):
            return value
        _fail(key, value, "a string")
    if isinstance(hint, type) and not isinstance(value, hint):
        _fail(key, value, _type_name(hint))
    return value


def _scalar_text(value: Any, hint: Any) -> Any:
    """Numbers and booleans given for a string-valued table (e.g. `spark.conf`) as text."""
    if hint is str and isinstance(value, bool):
        return str(value).lower()
    if hint is str and isinstance(value, int | float):
        return str(value)
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _fail(key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (["train", "epochs"], 3); values are JSON when they parse as JSON."""
    key, sep, raw = text.partition("=")
    _check(bool(sep) and bool(key), f"override {text!r} is not of the form section.key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """`data` with each `a.b=value` override set in place (the one way overrides apply)."""
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for depth, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            _check(
                isinstance(node, dict),
                f"override {item!r}: {'.'.join(keys[: depth + 1])} is not a table",
            )
        node[keys[-1]] = value
    return data


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The nested tables of a TOML, YAML or JSON config file."""
    p = Path(path)
    _check(p.is_file(), f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: not valid {p.suffix.lstrip('.') or 'YAML'}: {e}") from e
    _check(isinstance(data, dict), f"{p}: the top level must be a table of sections")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Load a RunConfig from TOML, YAML or JSON (or defaults) and apply `a.b=value` overrides."""
    data = read_config_file(path) if path is not None else {}
    return from_dict(RunConfig, apply_overrides(data, overrides))


REDACTED = "***"
_SECRET_WORDS = {"secret", "password", "passwd", "pwd", "credential", "credentials", "apikey"}
_KEY_OWNERS = {"access", "secret", "private", "api", "session", "auth", "sas", "account"}


def is_secret_key(key: str) -> bool:
    """True for setting names that hold credentials (`spark.hadoop.fs.s3a.secret.key`,
    `fs.azure.account.key.NAME...`, `db_password`, `hf.api.token`), by their words."""
    words = re.split(r"[._\-]", key.lower())
    if _SECRET_WORDS & set(words):
        return True
    pairs = zip(words, words[1:], strict=False)
    return any(a in _KEY_OWNERS and b in ("key", "token") for a, b in pairs) or (
        len(words) > 1 and words[-1] == "token"
    )


def redacted(data: Any) -> Any:
    """`data` (a config or its dict) with every string under a secret-looking key replaced
    by "***": what manifests, logs, saved run configs and the Prefect UI may show."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = to_dict(data)
    if isinstance(data, dict):
        return {
            k: REDACTED if is_secret_key(str(k)) and isinstance(v, str) else redacted(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redacted(v) for v in data]
    return data


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs as dataclasses are converted)."""
    norm = [to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    blob = json.dumps(norm, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(config: RunConfig, path: str | os.PathLike) -> Path:
    """Write a RunConfig as JSON that `load_config` reads back (for jobs and torchrun)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    return p
