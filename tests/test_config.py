"""The typed config loader: every value checked against its type, one override path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedpipe.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
)


@pytest.mark.parametrize(
    "override, message",
    [
        ("vocab.min_count=1.5", "vocab.min_count: expected an integer, got 1.5"),
        ("train.epochs=2.7", "train.epochs: expected an integer, got 2.7"),
        ('vocab.min_count="x"', "vocab.min_count: expected an integer, got 'x'"),
        ("vocab.min_count=true", "vocab.min_count: expected an integer, got True"),
        ("tokenize.lowercase=maybe", "tokenize.lowercase: expected a boolean"),
        ("corpus.paths=a.txt", r'corpus.paths: expected a list of str \(write \["a.txt"\]\)'),
        ("corpus.paths=[1]", r"corpus.paths\[0\]: expected a string, got 1"),
        ("corpus.format=xml", "corpus.format: 'xml' is not one of 'text', 'jsonl', 'parquet'"),
        ("vocab.sample=often", "vocab.sample: expected a number, got 'often'"),
        ("name=7", "name: expected a string, got 7"),
        ("spark.conf=[1]", "spark.conf: expected a table"),
        ("vocab=3", "vocab must be a table"),
        ("vocab.min_count.x=1", "vocab.min_count: expected an integer"),
        ("vocab.colour=red", "unknown config key.*vocab.colour"),
        ("bucket.boundaries=[3, 2]", "bucket.boundaries must be strictly increasing"),
    ],
)
def test_a_wrong_value_names_its_key_value_and_type(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    "text, expected", [("False", False), ("false", False), ("TRUE", True), ("true", True)]
)
def test_booleans_parse_from_text(text: str, expected: bool) -> None:
    assert load_config(None, [f"tokenize.lowercase={text}"]).tokenize.lowercase is expected


def test_values_arrive_as_their_declared_types() -> None:
    config = load_config(
        None,
        [
            'corpus.paths=["a.txt", "b.txt"]',
            "vocab.sample=1e-4",  # JSON number
            "cooccur.min_weight=2",  # an int where a float belongs is widened
            "vocab.max_size=null",
            'spark.conf={"spark.executor.instances": 2, "spark.x.enabled": true}',
        ],
    )
    assert config.corpus.paths == ("a.txt", "b.txt")
    assert config.vocab.sample == 1e-4 and config.vocab.max_size is None
    assert isinstance(config.cooccur.min_weight, float) and config.cooccur.min_weight == 2.0
    # Spark properties are strings on the command line: numbers and booleans become text.
    assert config.spark.conf == {"spark.executor.instances": "2", "spark.x.enabled": "true"}


def test_yaml_scientific_notation_reads_as_a_number(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; a float field takes it as the number.
    path = tmp_path / "run.yaml"
    path.write_text("vocab:\n  sample: 1e-4\n  min_count: 2\n")
    config = load_config(path)
    assert config.vocab.sample == 1e-4 and config.vocab.min_count == 2


def test_a_broken_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[vocab\nmin_count = 2\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid toml"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_overrides_apply_to_nested_tables_and_create_them() -> None:
    data = apply_overrides({"vocab": {"min_count": 3}}, ["vocab.sample=0", "tokenize.kind=word"])
    assert data == {"vocab": {"min_count": 3, "sample": 0}, "tokenize": {"kind": "word"}}


def test_a_config_round_trips_through_json() -> None:
    config = load_config(None, ['corpus.paths=["x.txt"]', "vocab.min_count=2"])
    again = from_dict(RunConfig, json.loads(json.dumps(to_dict(config))))
    assert again == config


@pytest.mark.parametrize(
    "key, secret",
    [
        ("spark.hadoop.fs.s3a.secret.key", True),
        ("spark.hadoop.fs.s3a.access.key", True),
        ("fs.azure.account.key.mine.dfs.core.windows.net", True),
        ("spark.hadoop.fs.gs.auth.service.account.private.key", True),
        ("db_password", True),
        ("hf.api.token", True),
        ("spark.hadoop.fs.s3a.session.token", True),
        ("random_token_prob", False),
        ("max_tokens", False),
        ("sp_vocab_size", False),
        ("spark.hadoop.fs.s3a.endpoint", False),
        ("keep_checkpoints", False),
    ],
)
def test_secret_keys_are_recognised_by_their_words(key: str, secret: bool) -> None:
    from embedpipe.config import is_secret_key

    assert is_secret_key(key) is secret


def test_redacted_hides_secret_values_and_keeps_the_rest() -> None:
    from embedpipe.config import REDACTED, redacted

    config = load_config(
        None,
        [
            'spark.conf={"spark.hadoop.fs.s3a.secret.key": "s3cr3t", '
            '"spark.hadoop.fs.s3a.endpoint": "http://minio:9000"}'
        ],
    )
    shown = redacted(config)
    assert shown["spark"]["conf"] == {
        "spark.hadoop.fs.s3a.secret.key": REDACTED,
        "spark.hadoop.fs.s3a.endpoint": "http://minio:9000",
    }
    assert "s3cr3t" not in json.dumps(shown)
    assert shown["vocab"] == to_dict(config)["vocab"]
    assert config.spark.conf["spark.hadoop.fs.s3a.secret.key"] == "s3cr3t"  # config untouched


def test_spark_conf_reads_env_references_only_where_spark_gets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from embedpipe.config import ConfigError

    monkeypatch.setenv("EP_TEST_KEY", "from-the-env")
    overrides = ['spark.conf={"spark.hadoop.fs.s3a.secret.key": "${env:EP_TEST_KEY}", '
                 '"spark.app.tag": "a-${env:EP_TEST_KEY}-b"}']  # fmt: skip
    config = load_config(None, overrides)
    assert config.spark.conf["spark.hadoop.fs.s3a.secret.key"] == "${env:EP_TEST_KEY}"
    props = config.spark.spark_properties()
    assert props["spark.hadoop.fs.s3a.secret.key"] == "from-the-env"
    assert props["spark.app.tag"] == "a-from-the-env-b"
    monkeypatch.delenv("EP_TEST_KEY")
    with pytest.raises(ConfigError, match=r"spark.conf\['spark.hadoop.fs.s3a.secret.key'\]: "
                       "the environment variable EP_TEST_KEY is not set"):  # fmt: skip
        config.spark.spark_properties()


def test_word2vec_final_learning_rates() -> None:
    """skip-gram and CBOW end at 0.0025 (bench/results/min_lr.json); fastText keeps 0.0001,
    measured with its own schedule; an override still wins."""
    from embedpipe.train.registry import get_model

    assert get_model("sgns").section().min_lr == 0.0025
    assert get_model("cbow").section().min_lr == 0.0025
    assert get_model("fasttext").section().min_lr == 0.0001
    config = load_config(None, ["train.model=cbow", "train.cbow.min_lr=0.0001"])
    assert config.train.options.min_lr == 0.0001
