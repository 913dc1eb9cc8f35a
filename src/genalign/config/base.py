"""Strict config dataclasses: `from_dict` rejects unknown keys and names the valid ones.

Every stage and method config is a frozen dataclass deriving from `Config`. Fields carry
`metadata={"help": ...}`; cross-field checks live in `__post_init__`. This module imports
no torch, so configs load in a pipeline compiler or a component's thin body.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config that does not match its dataclass; the message names the field."""


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with required help text (shown by `genalign stage <name> --help`)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
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
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return tp.from_dict(value, where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        # KFP passes dict parameters as protobuf Structs, whose numbers are all doubles
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every config dataclass."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, *, where: str | None = None) -> C:
        where = where or cls.__name__
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        missing = [
            name
            for name, f in fields.items()
            if name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{where}: missing required key(s) {missing}")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{where}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_args(self) -> dict[str, Any]:
        """`to_dict` without the fields that are None by default.

        KFP pipeline parameters cannot hold null, and `from_dict` restores those
        defaults, so this is the form passed to a pipeline.
        """
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Config):
                out[f.name] = value.to_args()
            elif value is None and f.default is None:
                continue
            elif isinstance(value, (list, tuple)):
                out[f.name] = [v.to_args() if isinstance(v, Config) else v for v in value]
            else:
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; used for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_range(
    name: str,
    value: float,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> None:
    """ValueError naming `name` and the expected range unless `value` is a finite number
    within the bounds (`ge` <= value, `gt` < value, value <= `le`, value < `lt`).

    For `__post_init__` checks: `from_dict` turns the ValueError into a ConfigError that
    names the field's full path. inf and nan are always refused.
    """
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )
    if ok:
        return
    integer = isinstance(value, int) and not isinstance(value, bool)
    kind = "an integer" if integer else "a finite number"
    low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if low and high:
        bounds = f" in {low}, {high}"
    elif low:
        bounds = f" >= {ge}" if ge is not None else f" > {gt}"
    elif high:
        bounds = f" <= {le}" if le is not None else f" < {lt}"
    else:
        bounds = ""
    raise ValueError(f"{name}: expected {kind}{bounds}, got {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping at the top level of the YAML file `path` ({} for an empty file).

    A syntax error or a top level that is not a mapping is a ConfigError that names the
    file and the line: "<file>:<line>: ...".
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the file as text ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = e.problem or "syntax error"
        if mark:
            problem += f" at column {mark.column + 1}"
        if e.context:
            started = f" on line {e.context_mark.line + 1}" if e.context_mark else ""
            problem += f" ({e.context}{started})"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        line = yaml.compose(text).start_mark.line + 1
        raise ConfigError(
            f"{path}:{line}: expected a mapping (key: value) at the top level, "
            f"got {type(data).__name__}"
        )
    return data
