"""What the Prefect flow needs besides the steps: its parameter model and its cache keys.

`PretrainParameters` is generated from `config.RunConfig`, field by field, so the config
dataclasses stay the one definition of every setting: a deployment's parameters are
validated by the same `__post_init__` checks (and unknown keys refused) before any run
starts, and the Prefect UI shows a form with every section.

Cache keys: a stage task's key is made of what its output depends on, the config sections
it reads (as `corpus.registry` names them, the same its own fingerprint holds), the
fingerprints of its upstream tables (or of the input files), the code and the workdir,
never of where Spark ran. A rerun with the same inputs hits the cache; a changed
section reruns that stage and, through the upstream fingerprints, only what reads its
table. A cache hit is trusted only while its output is still on disk with the same
fingerprint (`stage_output_matches`, `training_output_matches`): the flow reruns the task
with a refreshed cache otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, get_type_hints

import pydantic

from embedpipe.config import (
    REDACTED,
    ConfigError,
    RunConfig,
    apply_overrides,
    fingerprint,
    from_dict,
    is_secret_key,
    load_config,
    redacted,
    to_dict,
)
from embedpipe.corpus.registry import STAGES, get_stage
from embedpipe.version import source_hash
from embedpipe.workdir import CHECKPOINTS, SUMMARY, Workdir

REVEAL = "reveal_credentials"  # serialization context key: keep credentials in a dump


def _parameter_fields() -> dict[str, Any]:
    """One pydantic field per RunConfig field, typed as the config declares it; a section
    that reads its own table (`from_table`, e.g. train's per-model sections) is a plain table."""
    hints = get_type_hints(RunConfig)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        own_table = hasattr(hints[f.name], "from_table")
        hint = dict[str, Any] if own_table else hints[f.name]
        if f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            if own_table:
                factory = lambda make=factory: to_dict(make())  # noqa: E731
            fields[f.name] = (hint, pydantic.Field(default_factory=factory))
        else:
            fields[f.name] = (hint, f.default)
    return fields


class _ParametersBase(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _check_as_config(cls, data: Any) -> Any:
        """Every value goes through the config's own loader first (types, ranges, unknown
        keys), so a deployment's parameters fail exactly as the same config file would."""
        if isinstance(data, dict):
            from_dict(RunConfig, json.loads(json.dumps(data, default=_jsonable)))
        return data

    @pydantic.model_serializer(mode="wrap")
    def _mask_credentials(
        self, dump: pydantic.SerializerFunctionWrapHandler, info: pydantic.SerializationInfo
    ) -> dict[str, Any]:
        """As JSON (what Prefect stores as the flow run's parameters and shows in its UI)
        credentials are masked; `plain_dict` (what the run itself reads) keeps them."""
        data = dump(self)
        reveal = info.mode != "json" or (info.context or {}).get(REVEAL, False)
        return data if reveal else redacted(data)

    def plain_dict(self) -> dict[str, Any]:
        """The parameters as JSON-able data, credentials included (for this process only)."""
        return self.model_dump(mode="json", context={REVEAL: True})

    def to_run_config(self) -> RunConfig:
        """The RunConfig these parameters describe."""
        return from_dict(RunConfig, self.plain_dict())

    @classmethod
    def from_run_config(cls, config: RunConfig) -> PretrainParameters:
        return cls.model_validate(to_dict(config))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    raise TypeError(f"not a config value: {value!r}")


PretrainParameters = pydantic.create_model(
    "PretrainParameters",
    __base__=_ParametersBase,
    __doc__="The pipeline's parameters: name, workdir, store and one section per stage "
    "(corpus, tokenize, vocab, encode, bucket, cooccur), Spark, the model (train), launch.",
    **_parameter_fields(),
)


def resolve_config(
    params: PretrainParameters | dict[str, Any] | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """The run's config from parameters or a config file (not both), then `a.b=v` overrides."""
    if params is not None and config_path is not None:
        raise ValueError("give either parameters or a config file, not both")
    if params is None:
        return refuse_masked_credentials(load_config(config_path, overrides or []))
    if isinstance(params, dict):
        params = PretrainParameters.model_validate(params)
    data = apply_overrides(params.plain_dict(), overrides or [])
    return refuse_masked_credentials(from_dict(RunConfig, data))


def refuse_masked_credentials(config: RunConfig) -> RunConfig:
    """`config`, unless a credential in it is the mask: parameters that went through the
    Prefect API (a deployment's run) arrive masked, and Spark would get "***" as the key."""
    masked = sorted(k for k, v in config.spark.conf.items() if is_secret_key(k) and v == REDACTED)
    if masked:
        raise ConfigError(
            f"spark.conf {', '.join(masked)}: the value arrived masked ({REDACTED!r}); Prefect "
            "stores flow parameters with credentials masked. Give them to deployed runs as "
            'references resolved on the worker, e.g. "${env:AWS_SECRET_ACCESS_KEY}", '
            "or in a config file on the worker (config_path)"
        )
    return config


def upstream_fingerprints(stage: str, manifests: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{table: fingerprint} of the tables `stage` reads, from the manifests of earlier stages."""
    by_table = {STAGES[name].table: m["fingerprint"] for name, m in manifests.items()}
    return {table: by_table[table] for table in get_stage(stage).upstream}


def corpus_fingerprint(config: RunConfig) -> str:
    """The input files by name, size and modification time (what the tokenize stage records)."""
    from embedpipe.corpus.sources import fingerprint_files, list_input_files

    return fingerprint_files(list_input_files(config.corpus.paths))


def stage_cache_key(stage: str, config: RunConfig, upstream: dict[str, str]) -> str:
    """Key of one stage's task: its sections, its upstream fingerprints, the code, the workdir.

    `upstream` maps each upstream table to its manifest's fingerprint (from the tasks that
    wrote them); the tokenize stage's input is the corpus files' fingerprint instead.
    """
    spec = get_stage(stage)
    missing = set(spec.upstream) - set(upstream)
    if missing:
        raise KeyError(f"{stage} needs the fingerprints of {sorted(missing)}")
    inputs = {t: upstream[t] for t in spec.upstream} or {"files": corpus_fingerprint(config)}
    sections = spec.config_of(config)
    return "stage-" + fingerprint(stage, config.workdir, sections, inputs, source_hash())


def stage_output_matches(config: RunConfig, stage: str, manifest: dict[str, Any]) -> bool:
    """True when the stage's table is on disk, complete, with this manifest's fingerprint."""
    from embedpipe.corpus.spark.commit import table_damage

    workdir, table = Workdir(config.workdir), get_stage(stage).table
    on_disk = workdir.read_manifest(table)
    if on_disk is None or on_disk.get("fingerprint") != manifest.get("fingerprint"):
        return False
    return table_damage(workdir, table, on_disk) is None


def training_cache_key(config: RunConfig) -> str:
    """Key of the training task: the trainer's fingerprint (its config and input tables),
    the world size and the output directory."""
    from embedpipe.train.layout import resolve_layout
    from embedpipe.train.loop import training_fingerprint

    config = resolve_layout(config)
    world = config.train.nproc * config.launch.nnodes
    expected = training_fingerprint(config.train, Workdir(config.workdir), config.store)
    return "train-" + fingerprint(expected, world, config.workdir, source_hash())


def training_output_matches(config: RunConfig, summary: dict[str, Any]) -> bool:
    """True when `<workdir>/train` still holds this training summary and its checkpoint."""
    from embedpipe.train.checkpoint import MARKER

    out = Workdir(config.workdir).train_dir
    path = out / SUMMARY
    if not path.is_file():
        return False
    on_disk = json.loads(path.read_text())
    checkpoint = on_disk.get("checkpoint")
    return (
        on_disk.get("fingerprint") == summary.get("fingerprint")
        and checkpoint is not None
        and (out / CHECKPOINTS / checkpoint / MARKER).is_file()
    )
