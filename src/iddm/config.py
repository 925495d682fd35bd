"""Dataclass configurations that load from YAML and from the command line, validated before any work.

Every field of a config dataclass carries its help text in ``metadata["help"]`` and, where it has
one, its valid range (``ge``/``gt``/``le``/``lt``), its ``choices``, whether it is ``required`` and
flag ``aliases``. Precedence is defaults < ``--config FILE.yaml`` < explicit command-line flags, so a
YAML file can hold a whole experiment and a flag can still override one knob of it.

A field whose type is itself a config dataclass is *composed* (e.g. the privacy settings inside the
personalization config): its fields stay flat on the command line (``--epsilon``) and may be given
flat or nested in YAML (``epsilon: 0.03`` or ``privacy_config: {epsilon: 0.03}``).

:func:`build_config` checks every value against its type and range, and the dataclass's own
``problems()`` for cross-field rules, and raises one :class:`ConfigError` listing every problem.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid options; the message lists every problem, one clause each, on one line."""


def field(
    default: Any = None,
    *,
    help: str,
    choices: list | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    required: bool = False,
    aliases: tuple[str, ...] = (),
    **kwargs: Any,
) -> Any:
    """A dataclass field with mandatory help text and optional validation rules for the CLI and YAML.

    Args:
        default: the default value; lists, dicts and nested config dataclasses are copied per instance.
        ge, gt, le, lt: inclusive / exclusive bounds of a number (each item of a list of numbers).
        required: ``None`` is not accepted once the config is built (the field is typed ``X | None`` only
            because it has no meaningful default).
        aliases: further flag names (``--rank`` for ``lora_rank``), as diffusers' scripts spell them.
    """
    metadata: dict[str, Any] = {"help": help, "required": required, "aliases": tuple(aliases)}
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    metadata["bounds"] = {k: v for k, v in bounds.items() if v is not None}
    if choices is not None:
        metadata["choices"] = choices
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=metadata, **kwargs)
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


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def flat_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any, type]]:
    """Option name -> ``(field, type, owning dataclass)``, nested config dataclasses flattened."""
    out: dict[str, tuple[dataclasses.Field, Any, type]] = {}
    for f, tp in _resolved_fields(cls):
        if _is_config(tp):
            out.update(flat_fields(tp))
        else:
            out[f.name] = (f, tp, cls)
    return out


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors that name the closest known flag, and no abbreviated flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _all_flags(self) -> set[str]:
        """The long flags of this parser and of its sub-commands (unknown flags are reported by the top parser)."""
        flags = {a for a in self._option_string_actions if a.startswith("--")}
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    flags |= sub._all_flags() if isinstance(sub, ArgumentParser) else set()
        return flags

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but a sub-command's unknown flags are reported by that sub-command (``iddm personalize:
        error: ...``), with the closest of its own flags, instead of by the top-level parser."""
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions if extras else ():
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(namespace, action.dest, None) or "")
                if isinstance(sub, ArgumentParser):
                    sub.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments:"):
            flags = sorted(self._all_flags())
            hints = []
            for unknown in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(unknown.split("=")[0], flags, n=1, cutoff=0.6)
                if unknown.startswith("-") and close:
                    hints.append(f"{unknown} (did you mean {close[0]}?)")
            if hints:
                message = f"{message}; {'; '.join(hints)}"
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, group_title: str | None = None) -> None:
    """Add one ``--name`` flag per field of ``cls`` (nested configs flattened into their own groups).

    Defaults are ``SUPPRESS`` so that unset flags are detectable and a YAML file can fill them.
    """
    group = parser.add_argument_group(group_title or cls.__name__)
    for f, tp in _resolved_fields(cls):
        if _is_config(tp):
            add_dataclass_arguments(parser, tp, f.metadata.get("help"))
            continue
        tp, _ = _unwrap_optional(tp)
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{help_text} (default: {_default_of(f)!r})"}
        flags = [f"--{f.name}", *f.metadata.get("aliases", ())]
        kwargs["dest"] = f.name
        if tp is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        origin = get_origin(tp)
        if origin is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif origin in (list, tuple):
            (item_type, *_) = get_args(tp) or (str,)
            kwargs["nargs"] = "+"
            if get_origin(item_type) is Literal:
                kwargs["choices"] = list(get_args(item_type))
                item_type = str
            kwargs["type"] = item_type if item_type in (int, float, str) else str
        elif tp in (int, float, str, Path):
            kwargs["type"] = tp
        else:
            kwargs["type"] = str
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(*flags, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Values: coercion, type and range checks
# ----------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    tp, optional = _unwrap_optional(tp)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}
    if get_origin(tp) is Literal:
        name = f"one of {list(get_args(tp))}"
    elif get_origin(tp) in (list, tuple):
        name = "a list"
    else:
        name = names.get(tp, getattr(tp, "__name__", str(tp)))
    return name + (" or null" if optional else "")


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` (from YAML or argparse) as type ``tp``; ``ValueError`` with the expected type otherwise."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"must be {_type_name(tp)}, got null")
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        (item_type, *_) = get_args(tp) or (str,)
        coerced = [_coerce(item, item_type) for item in items]
        return tuple(coerced) if origin is tuple else coerced
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"must be a number, got {value!r}")
        try:
            number = float(value)  # YAML 1.1 reads exponents without a dot (`learning_rate: 1e-4`) as strings
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"must be a string, got {value!r}")
        return str(value)
    if tp is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ValueError(f"must be a path, got {value!r}")
        return Path(value)
    return value


def _bound_problems(value: Any, bounds: dict[str, float]) -> list[str]:
    checks = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"), "le": (lambda v, b: v <= b, "<=")}
    checks["lt"] = (lambda v, b: v < b, "<")
    values = value if isinstance(value, (list, tuple)) else [value]
    problems = []
    for item in values:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        for key, bound in bounds.items():
            ok, symbol = checks[key]
            if not ok(item, bound):
                problems.append(f"must be {symbol} {bound:g}, got {item!r}")
    return problems


def _split_values(cls: type, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Flatten nested mappings of composed configs into option names; returns ``(flat, unknown)``."""
    known = flat_fields(cls)
    nested = {f.name: tp for f, tp in _resolved_fields(cls) if _is_config(tp)}
    flat: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in values.items():
        if name in nested and isinstance(value, dict):
            inner, inner_unknown = _split_values(nested[name], value)
            flat.update(inner)
            unknown += inner_unknown
        elif name in known:
            flat[name] = value
        else:
            unknown.append(name)
    return flat, unknown


def _unknown_message(cls: type, unknown: list[str]) -> str:
    known = sorted(flat_fields(cls))
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown option(s) {', '.join(hints)} for {cls.__name__}; known options: {known}"


def _construct(cls: type[T], flat: dict[str, Any]) -> T:
    kwargs = {}
    for f, tp in _resolved_fields(cls):
        if _is_config(tp):
            kwargs[f.name] = _construct(tp, flat)
        elif f.name in flat:
            kwargs[f.name] = flat[f.name]
    return cls(**kwargs)


def _collect_problems(config: Any) -> list[str]:
    problems: list[str] = []
    for f, tp in _resolved_fields(type(config)):
        value = getattr(config, f.name)
        if _is_config(tp):
            problems += _collect_problems(value)
        elif value is None and f.metadata.get("required"):
            problems.append(f"--{f.name} is required")
    check = getattr(config, "problems", None)
    if callable(check):
        problems += list(check())
    return problems


def build_config(cls: type[T], values: dict[str, Any]) -> T:
    """Instantiate ``cls`` from option values (flat, or nested for composed configs), validating everything.

    Raises:
        ConfigError: one message listing every unknown option, wrongly typed or out-of-range value,
            missing required option and broken cross-field rule (the config's ``problems()``).
    """
    flat, unknown = _split_values(cls, values)
    if unknown:
        raise ConfigError(_unknown_message(cls, unknown))
    fields = flat_fields(cls)
    problems: list[str] = []
    coerced: dict[str, Any] = {}
    invalid: set[str] = set()
    for name, value in flat.items():
        f, tp, _ = fields[name]
        try:
            coerced[name] = _coerce(value, tp)
        except ValueError as err:
            problems.append(f"--{name} {err}")
            invalid.add(name)
            continue
        choices = f.metadata.get("choices")
        items = coerced[name] if isinstance(coerced[name], (list, tuple)) else [coerced[name]]
        own = []
        if choices is not None and any(item is not None and item not in choices for item in items):
            own.append(f"--{name} must be one of {choices}, got {value!r}")
        own += [f"--{name} {p}" for p in _bound_problems(coerced[name], f.metadata.get("bounds", {}))]
        problems += own
        invalid |= {name} if own else set()
    # Cross-field rules see the valid values only (invalid ones fall back to their defaults), so that one
    # error lists every problem; a rule about an option already reported as invalid is not repeated.
    config = _construct(cls, {k: v for k, v in coerced.items() if k not in invalid})
    reported = tuple(f"--{name} " for name in invalid)
    problems += [p for p in _collect_problems(config) if not p.startswith(reported)]
    if problems:
        raise ConfigError("invalid options: " + "; ".join(problems))
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file of options as a dict (``yaml.safe_load``: tags such as ``!!python/object`` are refused)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        reason = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"Config file {path} is not valid YAML{line}: {reason}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not a UTF-8 text file.") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path} must hold a mapping of option names to values, got {type(data).__name__}."
        )
    return data


def config_from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    """Merge ``--config`` YAML (if any) with the explicitly given flags of ``namespace``, then validate."""
    values: dict[str, Any] = {}
    config_path = getattr(namespace, "config", None)
    if config_path:
        values.update(load_yaml(config_path))
    names = set(flat_fields(cls))
    flags = {k: v for k, v in vars(namespace).items() if k in names}
    flat, unknown = _split_values(cls, values)
    if unknown:
        raise ConfigError(f"{config_path}: " + _unknown_message(cls, unknown))
    return build_config(cls, {**flat, **flags})


def config_to_dict(config: Any) -> dict[str, Any]:
    """A flat YAML/JSON-friendly dict of a config (paths as strings, tuples as lists, composed configs inlined)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    out: dict[str, Any] = {}
    for f, tp in _resolved_fields(type(config)):
        value = getattr(config, f.name)
        out.update(config_to_dict(value) if _is_config(tp) else {f.name: plain(value)})
    return out


def print_error(command: str, err: BaseException | str) -> None:
    """The one line a user sees: ``iddm COMMAND: error: MESSAGE``.

    A multi-line message is joined with '; ' (with a space after a line that ends in ':', which introduces a list).
    """
    text = ""
    for line in (line.strip() for line in str(err).strip().splitlines()):
        if line:
            text += (" " if not text or text.endswith(":") else "; ") + line
    print(f"iddm {command}: error:{text}", file=sys.stderr)
