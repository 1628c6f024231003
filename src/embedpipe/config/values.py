"""Config values checked against their declared types, and configs as plain tables.

`from_dict` builds a config dataclass from nested dicts (TOML, YAML, JSON, Prefect
parameters), checking every value with `check_value`; `to_dict` gives the same shape back.
A class that lays out its own table (`from_table` / `to_table`: train's per-model
sections) is handed the table.
"""

from __future__ import annotations

import dataclasses
import json
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
    check(isinstance(data, dict), f"{where.rstrip('.') or 'config'} must be a table, not {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    check(not unknown, f"unknown config key(s): {', '.join(where + k for k in unknown)}")
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
        check(value in args, f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        return _check_sequence(hint, value, key)
    if origin is dict:
        check(isinstance(value, dict), f"{key}: expected a table, got {value!r}")
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
        check(len(value) == len(args), f"{key}: expected {len(args)} values, got {list(value)!r}")
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
