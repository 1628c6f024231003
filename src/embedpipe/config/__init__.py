"""Typed, validated configuration: one dataclass per stage plus the run that joins them.

Configs load from TOML, YAML or JSON, take `section.key=value` overrides (`apply_overrides`,
the one way they apply), and are checked value by value against their declared types
(`values`) and then by each section's `__post_init__` (`sections`), so a bad value fails,
naming its key, before any Spark or torch work starts. Each stage's config has a stable
fingerprint that goes into its manifest and decides whether a stage can be skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from embedpipe.config.sections import (
    BucketConfig,
    CooccurConfig,
    CorpusConfig,
    EncodeConfig,
    LaunchConfig,
    RunConfig,
    SparkConfig,
    TokenizeConfig,
    TrainConfig,
    VocabConfig,
)
from embedpipe.config.values import ConfigError, check, check_value, from_dict, to_dict

__all__ = [
    "REDACTED", "BucketConfig", "ConfigError", "CooccurConfig", "CorpusConfig", "EncodeConfig",
    "LaunchConfig", "RunConfig", "SparkConfig", "TokenizeConfig", "TrainConfig", "VocabConfig",
    "apply_overrides", "check_value", "fingerprint", "from_dict", "is_secret_key",
    "load_config", "parse_override", "read_config_file", "redacted", "save_config", "to_dict",
    "write_private",
]  # fmt: skip


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (["train", "epochs"], 3); values are JSON when they parse as JSON."""
    key, sep, raw = text.partition("=")
    check(bool(sep) and bool(key), f"override {text!r} is not of the form section.key=value")
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
            check(
                isinstance(node, dict),
                f"override {item!r}: {'.'.join(keys[: depth + 1])} is not a table",
            )
        node[keys[-1]] = value
    return data


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The nested tables of a TOML, YAML or JSON config file."""
    p = Path(path)
    check(p.is_file(), f"config file {p} does not exist")
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
    check(isinstance(data, dict), f"{p}: the top level must be a table of sections")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Load a RunConfig from TOML, YAML or JSON (or defaults) and apply `a.b=value` overrides.

    With a file, an error in a value also names where the value came from: the override
    that set its key (`override 'vocab.min_count=x': ...`), else the file
    (`run.toml: vocab.min_count: ...`).
    """
    overrides = list(overrides)
    if path is None:
        return from_dict(RunConfig, apply_overrides({}, overrides))
    data = apply_overrides(read_config_file(path), overrides)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as e:
        message = str(e)
        item = next((o for o in overrides if _names_key(message, o.partition("=")[0])), None)
        where = f"override {item!r}" if item is not None else str(path)
        raise ConfigError(f"{where}: {message}") from e


def _names_key(message: str, key: str) -> bool:
    """Whether an error message names the config key `key` (or a key inside it)."""
    key = key.strip()
    return bool(key) and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


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


def save_config(config: RunConfig, path: str | os.PathLike, redact: bool = False) -> Path:
    """Write a RunConfig as JSON that `load_config` reads back (for jobs and torchrun),
    readable by its owner only (mode 0600: it may hold credentials); `redact` masks them
    where the reader does not need them."""
    data = redacted(config) if redact else config.to_dict()
    return write_private(Path(path), json.dumps(data, indent=2, sort_keys=True))


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` with mode 0600, whatever the umask or an older file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path
