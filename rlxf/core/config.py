"""Configs are dataclasses: loaded from TOML, overridden with ``--set section.key=value``.

Unknown keys are errors that name the key and the file, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says where and why."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to floats, lists to tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of settings, got {value!r}")
        return _build(tp, value, where)
    return value


def _build(cls: type[T], table: dict, source: str, base: T | None = None, prefix: str = "") -> T:
    """Apply ``table`` onto ``base`` (or ``cls()``); errors name ``source`` and the dotted key."""
    types_ = _field_types(cls)
    current = base if base is not None else cls()
    changes = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in types_:
            known = ", ".join(sorted(types_))
            raise ConfigError(f"{source}: unknown key '{dotted}' (known keys{' in [' + prefix[:-1] + ']' if prefix else ''}: {known})")
        tp = types_[key]
        if _is_dataclass_type(tp) and isinstance(value, dict):
            changes[key] = _build(tp, value, source, getattr(current, key), f"{dotted}.")
        else:
            changes[key] = _coerce(value, tp, f"{source}: {dotted}")
    return dataclasses.replace(current, **changes)


def apply_table(base: T, table: dict, source: str) -> T:
    """``base`` (a config dataclass) with ``table``'s keys applied, nested tables merged into their
    sections; an unknown key or a wrong type is a :class:`ConfigError` naming ``source`` and the key."""
    return _build(type(base), table, source, base)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=3`` -> (["a", "b"], 3). Values are read as TOML, falling back to a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = (),
                flags: dict | None = None, flags_source: str = "the command line") -> T:
    """Build ``cls`` from its defaults, then the TOML file at ``path``, then ``flags`` (a nested
    table, e.g. from a command's options), then ``overrides``."""
    cfg = cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        cfg = _build(cls, table, str(path), cfg)
    if flags:
        cfg = _build(cls, flags, flags_source, cfg)
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        cfg = _build(cls, nested, f"--set {text}", cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # a table inside a list (e.g. [[critics]]): an inline table
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise ConfigError(f"cannot write {v!r} to TOML")


def to_toml(table: dict, prefix: str = "") -> str:
    """Write a nested dict of plain values as TOML (``None`` values are left out)."""
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict) and v is not None]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars]
    out = "\n".join(lines)
    for k, v in tables:
        name = f"{prefix}.{k}" if prefix else k
        body = to_toml(v, name)
        out += f"\n\n[{name}]\n{body}" if body.strip() else f"\n\n[{name}]"
    return out.strip() + "\n"
