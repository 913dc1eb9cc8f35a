"""The identity of a base model directory, and the check that an adapter sits on its base.

An adapter is only meaningful on the exact weights it was trained on. The trainer records
`base_model_sha256` in the adapter's model card (`genalign.json`); whoever loads the
adapter calls `check_adapter_base` first, which fails with both paths and both hashes
instead of letting a mismatched adapter produce plausible-looking garbage.

The hash is sha256 over lines "<relative path>:<sha256 of the file>\\n", in the order of
`files` (or sorted by path when every file of the directory counts), so it depends on
the bytes of the files only, not on where the directory lives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from genalign.artifacts import MODEL_CARD, read_model_card
from genalign.storage import ArtifactError, sha256_file

# The model card an adapter (or model) directory carries beside its weights.
GENALIGN_JSON = MODEL_CARD


def model_dir_sha256(
    directory: Path, files: Sequence[str] | None = None, *, kind: str = "model"
) -> str:
    """sha256 identity of `directory` over `files` (relative paths, in that order), or over
    every file under it sorted by relative path when `files` is None. `kind` names the
    directory in the error raised when one of `files` is missing."""
    directory = Path(directory)
    if files is None:
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: not a {kind} directory")
        files = sorted(
            p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()
        )
        if not files:
            raise ArtifactError(f"{directory}: not a {kind} directory (no files)")
    h = hashlib.sha256()
    for name in files:
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: not a {kind} directory (no {name})")
        h.update(f"{name}:{sha256_file(path)}\n".encode())
    return h.hexdigest()


def check_adapter_base(
    adapter_dir: Path,
    base_model_dir: Path,
    files: Sequence[str] | None = None,
    *,
    kind: str = "model",
) -> None:
    """Raise ArtifactError unless the adapter in `adapter_dir` was trained on the model in
    `base_model_dir` (its `genalign.json` names the base's `model_dir_sha256` over the
    same `files`)."""
    adapter_dir, base_model_dir = Path(adapter_dir), Path(base_model_dir)
    meta_path = adapter_dir / GENALIGN_JSON
    if not meta_path.is_file():
        raise ArtifactError(f"{adapter_dir}: not a genalign adapter (no {GENALIGN_JSON})")
    card = read_model_card(adapter_dir)
    if not card.base_model_sha256:
        raise ArtifactError(f"{meta_path}: no base_model_sha256 recorded")
    expected = card.base_model_sha256
    actual = model_dir_sha256(base_model_dir, files, kind=kind)
    if expected != actual:
        raise ArtifactError(
            f"adapter {adapter_dir} was trained on base model {card.base_model!r} "
            f"(sha256 {expected[:16]}...), but base model {base_model_dir} has sha256 "
            f"{actual[:16]}..."
        )
