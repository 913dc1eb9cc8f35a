"""Loader for MMSI-Bench-format spatial QA data: multi-image questions with lettered options.

A data file is JSONL (one row a line) or a JSON list of rows. A row:

    {"id": "q1", "images": ["imgs/q1_0.png", "imgs/q1_1.png"],
     "question": "Which object is closer to the camera in image 2?",
     "options": ["A. chair", "B. table", "C. lamp", "D. sofa"], "answer": "B",
     "question_type": "positional relationship (cam-obj)", "meta": {...}}

Image paths are relative to `image_root` (default: the data file's folder) unless
absolute. `meta` is optional; other extra keys are kept in `extra`. A row whose image
file is missing is not an error: it is skipped and reported in `MMSIData.skipped` with
its line and the path (the rest of the run goes on). A malformed row (not an object, a
missing or mistyped field, an answer that is not one of the option letters, a repeated
id) stops loading with an `MMSIError` naming the file and line, before any work starts.
The synthetic set of `genalign.data.spatial_scenes` is written in this format.

    >>> from genalign.data.mmsi import load_mmsi
    >>> data = load_mmsi(Path("mmsi/test.jsonl"))
    >>> len(data.rows), [(s.line, s.reason) for s in data.skipped]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REQUIRED = ("id", "images", "question", "options", "answer", "question_type")
LETTERS = "ABCDEFGHIJ"


class MMSIError(ValueError):
    """A malformed data file or row; the message names the file and line (or list item)."""


@dataclasses.dataclass(frozen=True)
class MMSIRow:
    """One question. `image_paths` are the resolved paths of `images` (checked to exist)."""

    id: str
    images: tuple[str, ...]
    image_paths: tuple[Path, ...]
    question: str
    options: tuple[str, ...]
    answer: str  # a letter: A for options[0], ...
    question_type: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def answer_index(self) -> int:
        return LETTERS.index(self.answer)


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    """A row left out, and why (for the run's report)."""

    id: str
    line: int  # 1-based line of a JSONL file; 1-based item of a JSON list
    reason: str


@dataclasses.dataclass(frozen=True)
class MMSIData:
    source: Path
    rows: list[MMSIRow]
    skipped: list[SkippedRow]

    def counts(self) -> dict[str, int]:
        """Rows loaded and skipped (for a stage's metrics)."""
        return {"rows": len(self.rows), "skipped": len(self.skipped)}


def _items(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(unit, number, parsed value) of each row of a JSONL or JSON-list file, in file order.

    unit is "line" (JSONL) or "item" (JSON list); blank JSONL lines are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MMSIError(f"{path}: data file not found") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MMSIError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise MMSIError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        for number, row in enumerate(data, start=1):
            yield "item", number, row
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MMSIError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        yield "line", lineno, row


def _check_row(row: Any) -> str | None:
    """What is wrong with a parsed row, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        return f"missing field(s) {missing}"
    for key in ("id", "question", "answer", "question_type"):
        if not isinstance(row[key], str) or not row[key]:
            return f"{key}: expected a non-empty string, got {row[key]!r}"
    for key, least in (("images", 1), ("options", 2)):
        value = row[key]
        if (
            not isinstance(value, list)
            or len(value) < least
            or not all(isinstance(v, str) and v for v in value)
        ):
            return f"{key}: expected a list of at least {least} non-empty strings, got {value!r}"
    if len(row["options"]) > len(LETTERS):
        return f"options: at most {len(LETTERS)} options, got {len(row['options'])}"
    letters = list(LETTERS[: len(row["options"])])
    if row["answer"] not in letters:
        return f"answer: expected one of {letters}, got {row['answer']!r}"
    if "meta" in row and not isinstance(row["meta"], dict):
        return f"meta: expected a JSON object, got {row['meta']!r}"
    return None


def load_mmsi(path: Path, *, image_root: Path | None = None) -> MMSIData:
    """Load and check an MMSI-Bench-format file (.jsonl, or .json holding a list)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    rows: list[MMSIRow] = []
    skipped: list[SkippedRow] = []
    seen: dict[str, int] = {}
    for unit, number, row in _items(path):
        where = f"{path}:{number}" if unit == "line" else f"{path}: item {number}"
        problem = _check_row(row)
        if problem:
            raise MMSIError(f"{where}: {problem}")
        if row["id"] in seen:
            raise MMSIError(f"{where}: id {row['id']!r} repeats {unit} {seen[row['id']]}")
        seen[row["id"]] = number
        paths = tuple(Path(p) if Path(p).is_absolute() else root / p for p in row["images"])
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            skipped.append(SkippedRow(row["id"], number, f"image not found: {', '.join(absent)}"))
            continue
        rows.append(
            MMSIRow(
                id=row["id"],
                images=tuple(row["images"]),
                image_paths=paths,
                question=row["question"],
                options=tuple(row["options"]),
                answer=row["answer"],
                question_type=row["question_type"],
                meta=dict(row.get("meta", {})),
                extra={k: v for k, v in row.items() if k not in (*REQUIRED, "meta")},
            )
        )
    return MMSIData(source=path, rows=rows, skipped=skipped)


DATASET_ROWS = "rows.jsonl"  # a dataset artifact's rows, in this module's format


def read_dataset(dataset: Path) -> list[dict[str, Any]]:
    """The rows of a dataset artifact, checked (`load_mmsi`), as plain dicts with image
    paths relative to the artifact."""
    from genalign.artifacts import DATASET, read_manifest

    read_manifest(dataset, DATASET)
    data = load_mmsi(Path(dataset) / DATASET_ROWS)
    if data.skipped:  # prepare leaves out rows with missing images; any now missing is damage
        raise FileNotFoundError(f"{Path(dataset) / DATASET_ROWS}: images missing: "
                                f"{[(s.line, s.reason) for s in data.skipped]}")
    return [
        {"id": r.id, "images": list(r.images), "question": r.question, "options": list(r.options),
         "answer": r.answer, "question_type": r.question_type, "meta": dict(r.meta)}
        for r in data.rows
    ]
