"""The flow's parameter model (generated from RunConfig) and its cache keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pydantic
import pytest

from embedpipe.config import RunConfig, TrainConfig, load_config, to_dict
from embedpipe.corpus.registry import STAGES
from embedpipe.orchestration import (
    PretrainParameters,
    resolve_config,
    stage_cache_key,
    stage_output_matches,
    training_output_matches,
    upstream_fingerprints,
)
from embedpipe.train.loop import SUMMARY
from embedpipe.train.registry import GloVeConfig


def test_parameters_have_every_section_of_the_run_config() -> None:
    assert list(PretrainParameters.model_fields) == [f.name for f in dataclasses.fields(RunConfig)]
    params = PretrainParameters.model_validate(
        {"name": "news", "corpus": {"paths": ["a.txt", "b.txt"]}, "train": {"sgns": {"dim": 32}}}
    )
    config = params.to_run_config()
    assert isinstance(config, RunConfig)
    assert config.corpus.paths == ("a.txt", "b.txt") and config.train.options.dim == 32
    assert config.vocab == RunConfig().vocab
    # [train] stays the table given (here only sgns' dim); both describe the same run.
    assert PretrainParameters.from_run_config(config).to_run_config() == config


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"vocab": {"min_count": 0}}, "vocab.min_count must be >= 1"),
        ({"vocab": {"min_cont": 2}}, "min_cont"),
        ({"train": {"model": "bert"}}, "model"),
        ({"colour": "red"}, "colour"),
        ({"launch": {"nnodes": 2}}, "rdzv_endpoint"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(bad: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        PretrainParameters.model_validate(bad)


def test_the_json_schema_is_what_a_deployment_form_shows() -> None:
    schema = PretrainParameters.model_json_schema()
    assert schema["properties"]["train"]["type"] == "object"
    # [train] is its own table: the shared keys and the chosen model's section.
    train = PretrainParameters().train
    assert train == to_dict(TrainConfig()) and train["sgns"]["lr"] == 0.025
    glove = PretrainParameters.model_validate({"train": {"model": "glove"}}).to_run_config()
    assert glove.train.options == GloVeConfig() and GloVeConfig().lr == 0.05
    with pytest.raises(pydantic.ValidationError, match="train.sgns is set but train.model"):
        PretrainParameters.model_validate({"train": {"model": "glove", "sgns": {"dim": 8}}})
    assert schema["$defs"]["CorpusConfig"]["additionalProperties"] is False
    # JSON parameters (as a deployment stores them) round-trip.
    data = json.loads(PretrainParameters().model_dump_json())
    assert PretrainParameters.model_validate(data).to_run_config() == RunConfig()


def test_resolve_config_from_parameters_or_a_file(tmp_path: Path) -> None:
    params = PretrainParameters.model_validate({"name": "a", "vocab": {"min_count": 3}})
    config = resolve_config(params, overrides=["vocab.min_count=5", "train.epochs=2"])
    assert (config.name, config.vocab.min_count, config.train.epochs) == ("a", 5, 2)
    assert resolve_config({"name": "b"}).name == "b"
    path = tmp_path / "run.toml"
    path.write_text('name = "c"\n[train.sgns]\ndim = 8\n')
    overridden = resolve_config(config_path=str(path), overrides=["train.sgns.dim=9"])
    assert overridden.train.options.dim == 9
    with pytest.raises(ValueError, match="not both"):
        resolve_config(params, config_path=str(path))


def test_parameters_show_credentials_masked_and_keep_them_for_the_run() -> None:
    """Prefect stores (and its UI shows) the parameters' JSON; the run reads the real value.
    Parameters that went through the API come back masked and are refused, naming the key."""
    from prefect.flows import Flow

    from embedpipe.config import ConfigError

    conf = {"spark.hadoop.fs.s3a.secret.key": "s3cr3t", "spark.master.ui": "x"}
    params = PretrainParameters.model_validate({"name": "a", "spark": {"conf": conf}})
    stored = Flow(lambda params: None).serialize_parameters({"params": params})
    assert stored["params"]["spark"]["conf"] == {**conf, "spark.hadoop.fs.s3a.secret.key": "***"}
    assert "s3cr3t" not in json.dumps(stored)
    assert resolve_config(params).spark.conf == conf
    assert params.to_run_config().spark.conf == conf
    with pytest.raises(ConfigError, match=r"spark.conf spark.hadoop.fs.s3a.secret.key: .*masked"):
        resolve_config(stored["params"])


def key(config: RunConfig, stage: str) -> str:
    upstream = {"tokens": "t1", "vocab": "v1", "sequences": "s1"}
    return stage_cache_key(stage, config, upstream)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("a b c\n")
    return path


def test_a_changed_section_changes_only_the_keys_of_the_stages_reading_it(corpus: Path) -> None:
    base = load_config(None, [f'corpus.paths=["{corpus}"]'])
    changes = {
        "vocab.min_count=2": {"build_vocab"},
        "cooccur.window=3": {"cooccur"},
        "bucket.num_buckets=3": {"bucket"},
        "encode.oov=drop": {"encode"},
        "tokenize.digits=true": {"tokenize"},
        "train.epochs=4": set(),
        "spark.master=spark://h:7077": set(),  # where Spark runs does not change a table
        "spark.shuffle_partitions=64": set(),
        "workdir=elsewhere": set(STAGES),
    }
    for override, expected in changes.items():
        changed = load_config(None, [f'corpus.paths=["{corpus}"]', override])
        differ = {s for s in STAGES if key(base, s) != key(changed, s)}
        assert differ == expected, override


def test_upstream_fingerprints_and_input_files_are_in_the_key(corpus: Path) -> None:
    config = load_config(None, [f'corpus.paths=["{corpus}"]'])
    other = {"tokens": "t2", "vocab": "v1", "sequences": "s1"}
    assert stage_cache_key("encode", config, other) != key(config, "encode")
    assert stage_cache_key("bucket", config, other) == key(config, "bucket")
    before = key(config, "tokenize")
    corpus.write_text("a b c d\n")  # another size: another file fingerprint
    assert key(config, "tokenize") != before
    with pytest.raises(KeyError, match="vocab"):
        stage_cache_key("cooccur", config, {"sequences": "s1"})


@pytest.mark.spark
def test_the_stage_graph_matches_what_the_stages_record(spark, tmp_path: Path) -> None:
    """STAGES names the tables and sections of each stage: the manifests say the same."""
    from embedpipe.corpus.stages import prepare

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"w{i % 5} w{i % 3} w{i % 7}" for i in range(50)))
    config = load_config(
        None, [f"workdir={tmp_path / 'w'}", f'corpus.paths=["{corpus}"]', "vocab.min_count=1"]
    )
    manifests = prepare(spark, config)
    for stage, spec in STAGES.items():
        assert (manifests[stage]["stage"], manifests[stage]["table"]) == (stage, spec.table)
        recorded = set(manifests[stage]["inputs"])
        assert recorded == (set(spec.upstream) or {"files", "fingerprint"}), stage
        # The stage's own fingerprint held the sections its cache key holds.
        assert manifests[stage]["config"] == spec.config_of(config), stage
        assert stage_output_matches(config, stage, manifests[stage])
    assert not stage_output_matches(config, "build_vocab", {"fingerprint": "another"})


def test_training_output_must_still_hold_the_summary_and_checkpoint(tmp_path: Path) -> None:
    config = load_config(None, [f"workdir={tmp_path}"])
    summary = {"fingerprint": "abc", "checkpoint": "step-7"}
    assert not training_output_matches(config, summary)
    out = tmp_path / "train"
    (out / "checkpoints" / "step-7").mkdir(parents=True)
    (out / SUMMARY).write_text(json.dumps(summary))
    assert not training_output_matches(config, summary)  # no COMPLETE marker
    (out / "checkpoints" / "step-7" / "COMPLETE").write_text("")
    assert training_output_matches(config, summary)
    assert not training_output_matches(config, {**summary, "fingerprint": "other"})


def test_upstream_fingerprints_pick_the_tables_a_stage_reads() -> None:
    manifests = {
        "tokenize": {"fingerprint": "t"},
        "build_vocab": {"fingerprint": "v"},
        "encode": {"fingerprint": "s"},
    }
    assert upstream_fingerprints("tokenize", {}) == {}
    assert upstream_fingerprints("encode", manifests) == {"tokens": "t", "vocab": "v"}
    assert upstream_fingerprints("cooccur", manifests) == {"sequences": "s", "vocab": "v"}
    with pytest.raises(KeyError):
        upstream_fingerprints("bucket", {"tokenize": {"fingerprint": "t"}})
