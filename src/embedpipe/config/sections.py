"""The config sections: one frozen dataclass per stage, Spark, launch and training, and the
run that joins them. Each validates its values in `__post_init__`, so a bad value fails
before any Spark or torch work starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

from embedpipe.config.values import ConfigError, check, check_value, from_dict, to_dict


@dataclass(frozen=True)
class CorpusConfig:
    """Where the raw text is and how to read it."""

    paths: tuple[str, ...] = ("data/sample/wordnet-glosses.txt.gz",)
    format: Literal["text", "jsonl", "parquet"] = "text"
    text_field: str = "text"  # JSON field / Parquet column holding the text
    unit: Literal["line", "sentence"] = "line"  # one sequence per line/record, or per sentence
    # Files that cannot be read as they are (binary, UTF-16, damaged archives) are set aside
    # and named in tokens.rejects/; the stage fails when they hold more than this share of
    # the input bytes (bytes, not files: one large file can be most of the text). 0: fail on
    # any such file.
    max_reject_share: float = 0.01

    def __post_init__(self) -> None:
        check(len(self.paths) > 0, "corpus.paths: give at least one path")
        check(self.format in ("text", "jsonl", "parquet"), f"corpus.format: {self.format!r}")
        check(self.unit in ("line", "sentence"), f"corpus.unit: {self.unit!r}")
        check(
            0.0 <= self.max_reject_share <= 1.0,
            f"corpus.max_reject_share must be in [0, 1], got {self.max_reject_share!r}",
        )


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
        check(self.max_line_chars >= 16, "tokenize.max_line_chars must be >= 16")
        check(self.kind in ("word", "sentencepiece"), f"tokenize.kind: {self.kind!r}")
        check(
            self.sp_model_type in ("unigram", "bpe"),
            f"tokenize.sp_model_type: {self.sp_model_type!r}",
        )
        check(self.sp_vocab_size >= 16, "tokenize.sp_vocab_size must be >= 16")
        check(self.sp_sample_lines >= 1, "tokenize.sp_sample_lines must be >= 1")


@dataclass(frozen=True)
class VocabConfig:
    min_count: int = 5
    max_size: int | None = None  # words, not counting the special tokens
    sample: float = 1e-3  # word2vec subsampling threshold for `keep_prob`; 0 keeps every word
    noise_power: float = 0.75  # `noise_prob` is count ** noise_power, normalised

    def __post_init__(self) -> None:
        check(self.min_count >= 1, f"vocab.min_count must be >= 1, got {self.min_count!r}")
        check(self.max_size is None or self.max_size >= 1, "vocab.max_size must be >= 1")
        check(self.sample >= 0, "vocab.sample must be >= 0")
        check(self.noise_power > 0, "vocab.noise_power must be > 0")


@dataclass(frozen=True)
class EncodeConfig:
    oov: Literal["unk", "drop"] = "unk"  # map unknown tokens to [UNK] or drop them

    def __post_init__(self) -> None:
        check(self.oov in ("unk", "drop"), f"encode.oov must be 'unk' or 'drop', not {self.oov!r}")


@dataclass(frozen=True)
class BucketConfig:
    boundaries: tuple[int, ...] | None = None  # inclusive upper bounds; derived when None
    num_buckets: int = 8

    def __post_init__(self) -> None:
        if self.boundaries is not None:
            b = list(self.boundaries)
            check(
                b == sorted(set(b)) and all(x > 0 for x in b),
                "bucket.boundaries must be strictly increasing positive lengths",
            )
        check(self.num_buckets >= 1, "bucket.num_buckets must be >= 1")


@dataclass(frozen=True)
class CooccurConfig:
    window: int = 10
    min_weight: float = 0.0
    num_shards: int = 4

    def __post_init__(self) -> None:
        check(self.window >= 1, "cooccur.window must be >= 1")
        check(self.min_weight >= 0, "cooccur.min_weight must be >= 0")
        check(self.num_shards >= 1, "cooccur.num_shards must be >= 1")


@dataclass(frozen=True)
class SparkConfig:
    """How the corpus stages get a Spark session: in-process, or spark-submit to a master.

    `master`: `local[*]`, `spark://host:7077` (standalone), `yarn` or `k8s://https://host:443`.
    The resource fields become the usual `spark.*` properties (`spark_properties`); `conf`
    passes any other property through and wins over them. A `conf` value may reference the
    environment as `${env:NAME}` (Spark's own syntax), resolved only where the property is
    handed to Spark: the way to give credentials to deployed runs without writing them down. Stage fingerprints never include
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
        check(self.deploy_mode in ("client", "cluster"), f"spark.deploy_mode: {self.deploy_mode!r}")
        check(self.shuffle_partitions >= 1, "spark.shuffle_partitions must be >= 1")
        for name in ("executor_cores", "num_executors", "cores_max"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"spark.{name} must be >= 1")
        check(
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
        conf = {k: resolve_env_references(f"spark.conf[{k!r}]", v) for k, v in self.conf.items()}
        return {k: str(v) for k, v in props.items() if v is not None} | conf


ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_env_references(where: str, value: str) -> str:
    """`value` with each `${env:NAME}` replaced by that environment variable (which must be set)."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{where}: the environment variable {name} is not set")
        return os.environ[name]

    return ENV_REFERENCE.sub(lookup, value)


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
        check(self.nnodes >= 1, "launch.nnodes must be >= 1")
        check(0 <= self.node_rank < self.nnodes, "launch.node_rank must be in [0, nnodes)")
        check(self.max_restarts >= 0, "launch.max_restarts must be >= 0")
        check(
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

    model: str = (
        "sgns"  # a registered model: sgns, cbow, fasttext, glove, mlm, clm, bilm, or a plugin
    )
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
    # Continued training: start from a published artefact's weights (`train.init`):
    # "NAME@VERSION" (a version, number or alias of NAME in the run's store), "NAME" (its
    # latest version), or a version directory given as a path or URL (anything holding a
    # "/" or starting with "." or "~"). None: a fresh start.
    init_from: str | None = None
    options: Any = None  # the model's section; None: its defaults

    def __post_init__(self) -> None:
        from embedpipe.train.registry import get_model, import_plugins

        import_plugins(self.plugins)
        section = get_model(self.model).section
        if self.options is None:
            object.__setattr__(self, "options", section())
        check(
            type(self.options) is section,
            f"train.options: a {type(self.options).__name__} is not {self.model}'s section "
            f"({section.__name__})",
        )
        for name in ("epochs", "log_every"):
            value = getattr(self, name)
            check(value >= 1, f"train.{name} must be >= 1, got {value!r}")
        for name in ("nproc", "threads"):
            value = getattr(self, name)
            check(value == "auto" or value >= 1, f"train.{name} must be >= 1 or 'auto'")
        check(self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0")
        check(self.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
        if self.init_from is not None:
            parse_init_from(self.init_from)

    @classmethod
    def from_table(cls, data: Any, where: str = "train.") -> TrainConfig:
        """Parse the `[train]` table: shared keys and the one `[train.<model>]` section."""
        from embedpipe.train.registry import get_model, import_plugins, model_names

        check(isinstance(data, dict), f"{where.rstrip('.')} must be a table, not {data!r}")
        hints = get_type_hints(cls)
        shared = {f.name for f in dataclasses.fields(cls)} - {"options"}
        values = {k: check_value(hints[k], v, where + k) for k, v in data.items() if k in shared}
        model = values.get("model", cls.model)
        import_plugins(values.get("plugins", ()))  # they register their models
        spec = get_model(model)
        others = sorted(set(data) & (set(model_names()) - {model}))
        check(not others, f"{where}{', '.join(others)} is set but {where}model is {model!r}")
        unknown = sorted(set(data) - shared - {model})
        check(not unknown, f"unknown config key(s): {', '.join(where + k for k in unknown)}")
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


def parse_init_from(value: str) -> tuple[str, str] | None:
    """`train.init_from` read: (name, version) for "NAME@VERSION" or "NAME" (version
    "latest"); None for a version directory (a path or URL). ConfigError when malformed."""
    check(
        isinstance(value, str) and value.strip() == value and bool(value),
        f"train.init_from must be NAME@VERSION, NAME or a version directory, not {value!r}",
    )
    if "/" in value or "\\" in value or value.startswith((".", "~")):
        return None
    name, _, version = value.rpartition("@") if "@" in value else (value, "", "latest")
    check(
        bool(name) and bool(version) and not any(c.isspace() for c in value),
        f"train.init_from: {value!r} is not NAME@VERSION (e.g. 'sample@v0003' or 'sample')",
    )
    return name, version


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
        check(bool(self.name), "name must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
