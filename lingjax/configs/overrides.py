"""Typed overrides of nested config dataclasses, and JSON round trips.

`apply(cfg, {"model.num_layers": "4"})` parses strings (CLI) by the field's declared type;
`apply(cfg, {"model.num_layers": 4})` checks Python values. An unknown key or a value of the
wrong type raises `ConfigError` naming the key and the closest valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from lingjax.configs.base import Config, ConfigError, CorpusSpec, DataConfig


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def leaf_paths(cls: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, type) for every non-dataclass field below `cls`."""
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from leaf_paths(tp, path + ".")
        else:
            yield path, tp


def _closest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    if not close:  # fall back to keys sharing the last component
        last = key.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == last][:3]
    return f" Closest valid keys: {', '.join(close)}." if close else ""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(key: str, tp: Any, value: Any) -> Any:
    """`value` (a CLI string or a Python value) as an instance of `tp`, or ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        for a in non_none:
            try:
                return _convert(key, a, value)
            except ConfigError:
                pass
        raise ConfigError(
            f"bad value {value!r} for {key}: expected {' or '.join(map(_type_name, args))}"
        )
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"bad value {value!r} for {key}: expected {_type_name(tp)}")
    bad = ConfigError(f"bad value {value!r} for {key}: expected {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is tuple and args and args[0] is CorpusSpec:
        return _mixture(key, value)
    if origin is tuple and args == (str, Ellipsis):  # a CLI comma list, or a JSON list
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"bad value {value!r} for {key}: expected a comma-separated list")
    raise ConfigError(f"{key} has a type ({tp}) that cannot be overridden")


_MIXTURE_FORM = "name=DIR:WEIGHT,... e.g. code=corpora/code:0.3,web=corpora/web:0.7"


def parse_mixture(key: str, text: str) -> tuple[CorpusSpec, ...]:
    """The command-line form of a mixture, `name=DIR[:WEIGHT],...` (weight 1 if omitted)."""
    out = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, rest = entry.partition("=")
        path, weight = rest, 1.0
        head, colon, tail = rest.rpartition(":")
        if colon:
            try:
                path, weight = head, float(tail)
            except ValueError:  # a ':' inside the path (gs://...): no weight given
                path, weight = rest, 1.0
        if not (sep and name.strip() and path.strip()):
            raise ConfigError(f"bad entry {entry!r} for {key}: expected {_MIXTURE_FORM}")
        out.append(CorpusSpec(name.strip(), path.strip(), weight))
    return tuple(out)


def _mixture(key: str, value: Any) -> tuple[CorpusSpec, ...]:
    """A mixture from its CLI string, or from CorpusSpecs / (name, path, weight) tuples /
    {"name", "path", "weight"} mappings (config.json)."""
    if isinstance(value, str):
        return parse_mixture(key, value)
    if not isinstance(value, list | tuple):
        raise ConfigError(f"bad value {value!r} for {key}: expected {_MIXTURE_FORM}")
    out = []
    for item in value:
        if isinstance(item, CorpusSpec):
            out.append(item)
            continue
        try:
            c = CorpusSpec(**item) if isinstance(item, Mapping) else CorpusSpec(*item)
            out.append(CorpusSpec(str(c.name), str(c.path), float(c.weight)))
        except (TypeError, ValueError):
            raise ConfigError(
                f"bad entry {item!r} for {key}: expected CorpusSpec(name, path, weight)"
            ) from None
    return tuple(out)


def _upgrade(cls: type, data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Config files written by older lingjax versions, in today's keys."""
    if cls is Config and isinstance(data.get("data"), Mapping):
        # Before EvalConfig: data.eval_every / data.eval_batches.
        moved = {"eval_every": "every", "eval_batches": "batches"}
        if any(k in data["data"] for k in moved):
            data = dict(data)
            data["data"] = dict(data["data"])
            data["eval"] = dict(data.get("eval") or {})
            for old, new in moved.items():
                if old in data["data"]:
                    data["eval"].setdefault(new, data["data"].pop(old))
    if cls is DataConfig and isinstance(data.get("mixture"), str):
        # Before the mixture was typed: corpora="name=DIR,..." and mixture="name:weight,...".
        data = dict(data)
        dirs = dict(e.split("=", 1) for e in data.pop("corpora", "").split(",") if "=" in e)
        weights = dict(e.rsplit(":", 1) for e in data["mixture"].split(",") if ":" in e)
        data["mixture"] = [
            {"name": n.strip(), "path": p.strip(), "weight": float(weights.get(n, 0.0))}
            for n, p in dirs.items()
        ]
    return data


def _set(cfg: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return dataclasses.replace(cfg, **{parts[0]: value})
    child = getattr(cfg, parts[0])
    return dataclasses.replace(cfg, **{parts[0]: _set(child, parts[1:], value)})


_MOVED = {"data.eval_every": "eval.every", "data.eval_batches": "eval.batches"}


def resolve_key(key: str, cls: type = Config) -> str:
    """The full dotted path for `key`: a dotted path, `a__b` for `a.b`, or a field name that
    is unique across the config tree (`num_layers` -> `model.num_layers`)."""
    key = key.replace("__", ".")
    if key in _MOVED:
        raise ConfigError(f"{key} is now {_MOVED[key]}: pass --config.{_MOVED[key]}=...")
    paths = [p for p, _ in leaf_paths(cls)]
    if key in paths:
        return key
    suffix = [p for p in paths if p.endswith("." + key)]
    if len(suffix) == 1:
        return suffix[0]
    if len(suffix) > 1:
        raise ConfigError(f"ambiguous config key {key!r}: say one of {', '.join(suffix)}")
    raise ConfigError(f"unknown config key {key!r}.{_closest(key, paths)}")


def apply(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of `cfg` with the overrides applied and validated."""
    types_by_path = dict(leaf_paths(type(cfg)))
    for key, value in overrides.items():
        path = resolve_key(key, type(cfg))
        cfg = _set(cfg, path.split("."), _convert(path, types_by_path[path], value))
    return cfg.validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(data: Mapping[str, Any], cls: type = Config, prefix: str = "") -> Any:
    """Rebuild a config from `to_dict` output, checking every key and type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in _upgrade(cls, data).items():
        path = prefix + name
        if name not in fields:
            raise ConfigError(f"unknown config key {path!r}.{_closest(name, list(fields))}")
        tp = _hints(cls)[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path} must be a mapping, got {value!r}")
            kwargs[name] = from_dict(value, tp, path + ".")
        else:
            kwargs[name] = _convert(path, tp, value)
    return cls(**kwargs)
