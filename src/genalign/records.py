"""Row schemas of the artifacts (condition, sample, scored sample, pair) and their JSONL I/O.

Every artifact's rows are JSONL: one JSON object a line. Each row type is a frozen
dataclass whose fields are checked against an explicit table (field -> expected type) when
it is built, so a row made in code and a row read from disk obey the same rules.
`read_jsonl` validates every line and reports the first problem as

    <path>:<line>: <field>: <what was expected>

(without `<field>: ` when the line as a whole is wrong: blank, not JSON, not an object)
before any expensive work starts. `write_jsonl` replaces the file atomically and refuses
NaN/inf, so everything it writes can be read back.

    rows = read_jsonl(art / "samples.jsonl", Sample)
    write_jsonl(out / "pairs.jsonl", pairs)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from genalign.storage import atomic_write_text

STATUSES = ("ok", "failed")


class RecordError(ValueError):
    """A row that does not match its schema; the message names the file, line and field."""


# ---------------------------------------------------------------- per-field checks
# Each check returns None when the value is acceptable, else what was expected (used
# verbatim in the error message).


def _is_nonempty_str(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return f"expected a non-empty string, got {_show(v)}"
    return None


def _is_opt_str(v: Any) -> str | None:
    return None if v is None or isinstance(v, str) else f"expected a string or null, got {_show(v)}"


def _is_int(v: Any) -> str | None:
    # bool is a subclass of int; `true` is not an iteration number.
    if isinstance(v, bool) or not isinstance(v, int):
        return f"expected an integer, got {_show(v)}"
    return None


def _is_nonneg_int(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return f"expected an integer >= 0, got {_show(v)}"
    return None


def _is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {_show(v)}"


def _is_finite(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return f"expected a finite number, got {_show(v)}"
    return None


def _is_opt_finite(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return f"expected a finite number or null, got {_show(v)}"
    return None


def _is_nonneg_finite(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return f"expected a finite number >= 0, got {_show(v)}"
    return None


def _is_status(v: Any) -> str | None:
    if isinstance(v, str) and v in STATUSES:
        return None
    return f"expected one of {list(STATUSES)}, got {_show(v)}"


def _is_json_object(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"expected a JSON object, got {_show(v)}"
    return _nonfinite_inside(v)


def _is_str_map(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"expected a JSON object of strings, got {_show(v)}"
    for k, item in v.items():
        if not isinstance(item, str):
            return f"expected a JSON object of strings, got {_show(item)} at key {k!r}"
    return None


def _is_output(v: Any) -> str | None:
    # A 3D generator's output is a small dict ({"num_parts": 3}); a text policy's is the text.
    if isinstance(v, str):
        return None
    if isinstance(v, dict):
        return _nonfinite_inside(v)
    return f"expected a JSON object or a string, got {_show(v)}"


def _nonfinite_inside(obj: Any, where: str = "") -> str | None:
    """Free-form JSON must still be writable with allow_nan=False: no NaN/inf anywhere."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"expected finite numbers only, got {obj!r} at {where or 'top level'}"
    if isinstance(obj, dict):
        items: Iterable[tuple[Any, Any]] = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, item in items:
        found = _nonfinite_inside(item, f"{where}[{k!r}]")
        if found:
            return found
    return None


def _show(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (str, bool)) or v is None else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- row base


@dataclasses.dataclass(frozen=True)
class _FieldSpec:
    attr: str  # the dataclass attribute
    key: str  # the JSON key (differs only where the key is a Python keyword: class)
    check: Callable[[Any], str | None]
    required: bool


class _Row:
    """Shared behaviour of the row dataclasses: the field table, to_dict/from_dict."""

    # Filled by each row class: (attribute, JSON key, check); required = no dataclass default.
    _checks: ClassVar[tuple[tuple[str, str, Callable[[Any], str | None]], ...]]
    # The attribute that must be unique within one file.
    id_field: ClassVar[str]

    @classmethod
    def specs(cls) -> tuple[_FieldSpec, ...]:
        return _specs_of(cls)

    def __post_init__(self) -> None:
        for spec in self.specs():
            problem = spec.check(getattr(self, spec.attr))
            if problem:
                raise RecordError(f"{spec.key}: {problem}")

    @property
    def row_id(self) -> str:
        return getattr(self, self.id_field)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this row, keys in schema order."""
        return {spec.key: _plain(getattr(self, spec.attr)) for spec in self.specs()}

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        """Build a row from a parsed JSON object; unknown, missing or mistyped fields raise."""
        if not isinstance(data, dict):
            raise RecordError(f"expected a JSON object, got {_show(data)}")
        specs = cls.specs()
        keys = {s.key for s in specs}
        unknown = sorted(set(data) - keys)
        if unknown:
            raise RecordError(
                f"{unknown[0]}: unknown field for {cls.__name__}; valid fields are "
                f"{[s.key for s in specs]}"
            )
        for spec in specs:
            if spec.required and spec.key not in data:
                raise RecordError(f"{spec.key}: required field of {cls.__name__} is missing")
        kwargs = {s.attr: data[s.key] for s in specs if s.key in data}
        return cls(**kwargs)


@functools.cache
def _specs_of(cls: type[_Row]) -> tuple[_FieldSpec, ...]:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if set(fields) != {attr for attr, _, _ in cls._checks}:
        raise TypeError(f"{cls.__name__}: its field table does not list exactly its fields")
    out = []
    for attr, key, check in cls._checks:
        f = fields[attr]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append(_FieldSpec(attr, key, check, required))
    return tuple(out)


def _plain(v: Any) -> Any:
    # Dict fields are copied so the returned object can be edited without touching the row.
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


# ---------------------------------------------------------------- row types


@dataclasses.dataclass(frozen=True)
class Condition(_Row):
    """One conditioning input: an image, a prompt, a class, or several of these.

    `class_` is written as the JSON key `class`. `meta` is free-form (for part-dpo:
    num_parts and the ground-truth file); `files` maps a role to a path relative to the
    artifact directory.
    """

    id: str
    prompt: str | None = None
    image: str | None = None
    class_: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    _checks = (
        ("id", "id", _is_nonempty_str),
        ("prompt", "prompt", _is_opt_str),
        ("image", "image", _is_opt_str),
        ("class_", "class", _is_opt_str),
        ("meta", "meta", _is_json_object),
        ("files", "files", _is_str_map),
    )
    id_field = "id"


@dataclasses.dataclass(frozen=True)
class Sample(_Row):
    """One candidate generated by the policy for one condition.

    `output` is what the policy produced in JSON form: a small dict for a 3D generator
    ({"num_parts": 3}; the latent and meshes are files), the text for a text policy.
    `status` "failed" means no usable output exists (`error` says why). `meta` is free-form
    context a later stage needs (a planner's prompt and the executions of its instructions).
    """

    sample_id: str
    cond_id: str
    seed: int
    iteration: int
    output: Any
    status: str
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    _checks = (
        ("sample_id", "sample_id", _is_nonempty_str),
        ("cond_id", "cond_id", _is_nonempty_str),
        ("seed", "seed", _is_int),
        ("iteration", "iteration", _is_nonneg_int),
        ("output", "output", _is_output),
        ("files", "files", _is_str_map),
        ("status", "status", _is_status),
        ("error", "error", _is_opt_str),
        ("meta", "meta", _is_json_object),
    )
    id_field = "sample_id"


@dataclasses.dataclass(frozen=True)
class ScoredSample(_Row):
    """A sample with its feedback. `score` None means "no valid score" (nothing to rank).

    What a failure scores is the scorer's choice, not the schema's: the penetration scorer
    leaves a failed sample at None, a planner judge may give a malformed plan -1. Which
    direction is better is the pair miner's setting, not stored here.
    """

    sample_id: str
    cond_id: str
    seed: int
    iteration: int
    output: Any
    status: str
    score: float | None
    scorer: str
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    _checks = Sample._checks + (
        ("score", "score", _is_opt_finite),
        ("detail", "detail", _is_json_object),
        ("scorer", "scorer", _is_nonempty_str),
    )
    id_field = "sample_id"

    @classmethod
    def of(
        cls,
        sample: Sample,
        *,
        score: float | None,
        scorer: str,
        detail: dict[str, Any] | None = None,
    ) -> ScoredSample:
        """The scored row of `sample` (all sample fields carried over)."""
        return cls(
            sample_id=sample.sample_id,
            cond_id=sample.cond_id,
            seed=sample.seed,
            iteration=sample.iteration,
            output=sample.output,
            status=sample.status,
            files=dict(sample.files),
            error=sample.error,
            meta=dict(sample.meta),
            score=score,
            scorer=scorer,
            detail=dict(detail or {}),
        )

    @property
    def valid(self) -> bool:
        """Usable for ranking: generation succeeded and the scorer gave a score."""
        return self.status == "ok" and self.score is not None


@dataclasses.dataclass(frozen=True)
class Pair(_Row):
    """A preference pair of two samples of one condition (`chosen`, `rejected` = sample ids).

    `gap` = |chosen_score - rejected_score|; `weak` marks a pair kept although its gap is
    below the miner's `min_gap`. `extra` carries what a text policy's trainer needs beside
    the ids (trl's prompt / chosen / rejected / images, stored as `prompt`, `chosen_text`,
    `rejected_text`, `images`), so the pair file is self-contained for it.
    """

    pair_id: str
    cond_id: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    gap: float
    iteration: int
    weak: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    _checks = (
        ("pair_id", "pair_id", _is_nonempty_str),
        ("cond_id", "cond_id", _is_nonempty_str),
        ("chosen", "chosen", _is_nonempty_str),
        ("rejected", "rejected", _is_nonempty_str),
        ("chosen_score", "chosen_score", _is_finite),
        ("rejected_score", "rejected_score", _is_finite),
        ("gap", "gap", _is_nonneg_finite),
        ("iteration", "iteration", _is_nonneg_int),
        ("weak", "weak", _is_bool),
        ("extra", "extra", _is_json_object),
    )
    id_field = "pair_id"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chosen == self.rejected:
            raise RecordError(f"rejected: expected a sample other than chosen {self.chosen!r}")


R = TypeVar("R", Condition, Sample, ScoredSample, Pair)
ROW_TYPES = (Condition, Sample, ScoredSample, Pair)


# ---------------------------------------------------------------- JSONL I/O


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise RecordError(f"{k}: expected each key once in an object, found it twice")
        out[k] = v
    return out


def read_jsonl(path: Path | str, row_type: type[R]) -> list[R]:
    """Read and validate every line of a JSONL file as `row_type`.

    Blank lines are errors (a row file has exactly one object a line). Ids must be unique
    within the file. Python's json accepts the non-standard tokens NaN/Infinity; they
    parse, then fail the finite-number check of the field they are in.
    """
    if row_type not in ROW_TYPES:
        raise TypeError(f"row_type must be one of {[t.__name__ for t in ROW_TYPES]}")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: expected UTF-8 text ({e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    rows: list[R] = []
    first_seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        where = f"{path}:{lineno}"
        if not line.strip():
            raise RecordError(f"{where}: expected a JSON object, got a blank line")
        try:
            obj = json.loads(line, object_pairs_hook=_reject_duplicate_keys)
        except RecordError as e:
            raise RecordError(f"{where}: {e}") from None
        except json.JSONDecodeError as e:
            raise RecordError(
                f"{where}: expected one JSON object, got malformed JSON "
                f"({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, got {_show(obj)}")
        try:
            row = row_type.from_dict(obj)
        except RecordError as e:
            raise RecordError(f"{where}: {e}") from None
        rid = row.row_id
        if rid in first_seen:
            raise RecordError(
                f"{where}: {row_type.id_field}: expected a unique id, {rid!r} is already on "
                f"line {first_seen[rid]}"
            )
        first_seen[rid] = lineno
        rows.append(row)
    return rows


def dumps_rows(rows: Iterable[Condition | Sample | ScoredSample | Pair]) -> str:
    """The JSONL text of `rows` (one type, unique ids); raises RecordError otherwise."""
    rows = list(rows)
    lines = []
    first_seen: dict[str, int] = {}
    row_type = type(rows[0]) if rows else None
    for i, row in enumerate(rows):
        if type(row) is not row_type or row_type not in ROW_TYPES:
            raise RecordError(
                f"rows[{i}]: expected a {getattr(row_type, '__name__', 'row')}, "
                f"got {type(row).__name__}"
            )
        rid = row.row_id
        if rid in first_seen:
            raise RecordError(
                f"rows[{i}]: {row.id_field}: expected a unique id, {rid!r} is already "
                f"rows[{first_seen[rid]}]"
            )
        first_seen[rid] = i
        try:
            lines.append(json.dumps(row.to_dict(), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise RecordError(f"rows[{i}]: expected JSON-serialisable values ({e})") from e
    return "".join(line + "\n" for line in lines)


def write_jsonl(path: Path | str, rows: Iterable[Condition | Sample | ScoredSample | Pair]) -> None:
    """Write `rows` as JSONL, replacing `path` atomically (all rows or the old file)."""
    atomic_write_text(Path(path), dumps_rows(rows))
