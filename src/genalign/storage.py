"""Artifact storage: atomic writes, artifact manifests, file hashes.

Every artifact is a directory holding `manifest.json` beside its payload. A stage writes
into a temporary sibling directory and renames it into place at the end, so a killed
stage leaves the previous output (or nothing), never half of a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class ArtifactError(ValueError):
    """An input artifact that is missing, of the wrong kind, or malformed."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `out` when the block succeeds.

    On an exception the temporary directory is removed and `out` is left untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (a config, a list of inputs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def write_manifest(
    directory: Path,
    *,
    kind: str,
    config: dict[str, Any] | None = None,
    inputs: dict[str, str] | None = None,
    counts: dict[str, Any] | None = None,
    hash_files: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `manifest.json` into an artifact directory and return it.

    `hash_files` are paths relative to `directory` whose sha256 is recorded (the row
    files; binary payloads are named in the rows).
    """
    directory = Path(directory)
    manifest = {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "config": config or {},
        "inputs": inputs or {},
        "counts": counts or {},
        "hashes": {name: sha256_file(directory / name) for name in (hash_files or [])},
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: Path, kind: str | tuple[str, ...]) -> dict[str, Any]:
    """Read an artifact's manifest and check its kind; errors name the directory."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: not a genalign artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: invalid JSON ({e})") from e
    kinds = (kind,) if isinstance(kind, str) else kind
    if manifest.get("kind") not in kinds:
        raise ArtifactError(
            f"{path}: artifact kind is {manifest.get('kind')!r}, expected one of {list(kinds)}"
        )
    return manifest
