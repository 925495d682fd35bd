"""Dataclass configurations that load from YAML and from the command line.

Every field of a config dataclass carries its help text in ``metadata["help"]``. Precedence is
defaults < ``--config FILE.yaml`` < explicit command-line flags, so a YAML file can hold a whole
experiment and a flag can still override one knob of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, *, help: str, choices: list | None = None, **kwargs: Any) -> Any:
    """A dataclass field with mandatory help text (and optional choices) for the CLI."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _resolved_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, group_title: str | None = None) -> None:
    """Add one ``--name`` flag per field of ``cls``; defaults are ``SUPPRESS`` so unset flags are detectable."""
    group = parser.add_argument_group(group_title or cls.__name__)
    for f, tp in _resolved_fields(cls):
        tp, _ = _unwrap_optional(tp)
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{help_text} (default: {default!r})"}
        flag = f"--{f.name}"
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        origin = get_origin(tp)
        if origin is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif origin in (list, tuple):
            (item_type, *_) = get_args(tp) or (str,)
            kwargs["nargs"] = "+"
            kwargs["type"] = item_type if item_type in (int, float, str) else str
        elif tp in (int, float, str):
            kwargs["type"] = tp
        elif tp is Path:
            kwargs["type"] = Path
        else:
            kwargs["type"] = str
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(flag, **kwargs)


def _coerce(value: Any, tp: Any) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        return None
    if tp is Path:
        return Path(value)
    if get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        # YAML 1.1 reads exponents without a dot (`learning_rate: 1e-4`) as strings.
        return float(value)
    return value


def build_config(cls: type[T], values: dict[str, Any]) -> T:
    """Instantiate ``cls`` from a flat dict, rejecting unknown keys with the list of known ones."""
    known = {f.name: tp for f, tp in _resolved_fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for {cls.__name__}. Known options: {sorted(known)}")
    choices = {f.name: f.metadata.get("choices") for f, _ in _resolved_fields(cls)}
    coerced = {}
    for name, value in values.items():
        try:
            coerced[name] = _coerce(value, known[name])
        except (TypeError, ValueError) as err:
            raise ValueError(f"Option {name} of {cls.__name__}: invalid value {value!r} ({err}).") from None
        if choices[name] is not None and coerced[name] is not None and coerced[name] not in choices[name]:
            raise ValueError(f"Option {name} of {cls.__name__} must be one of {choices[name]}, got {value!r}.")
    return cls(**coerced)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"Config file {path} must hold a mapping of option names to values, got {type(data).__name__}."
        )
    return data


def config_from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    """Merge ``--config`` YAML (if any) with the explicitly given flags of ``namespace``."""
    values: dict[str, Any] = {}
    config_path = getattr(namespace, "config", None)
    if config_path:
        values.update(load_yaml(config_path))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(namespace).items() if k in names})
    return build_config(cls, values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A YAML/JSON-friendly dict of a config (paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
