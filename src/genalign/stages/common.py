"""Helpers shared by stages: artifact copies, resume checks, generator loading."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from genalign.storage import MANIFEST, config_hash


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (same file system) or copy it; a `dst` already there is
    kept (rows of one artifact share files, such as a question's image)."""
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fingerprint(cfg: Any, inputs: dict[str, Any]) -> str:
    """What makes an output reusable: the config and the manifests of the inputs."""
    def manifest_hash(path: Path) -> str:
        m = Path(path) / MANIFEST
        return config_hash(json.loads(m.read_text())) if m.is_file() else str(path)

    return config_hash({
        "config": cfg.to_dict(),
        "inputs": {
            k: [manifest_hash(p) for p in v] if isinstance(v, (list, tuple)) else manifest_hash(v)
            for k, v in sorted(inputs.items())
        },
    })


def completed(out: Path, kind: str, fp: str) -> bool:
    """True when `out` already holds a complete artifact made from the same config and inputs.

    Outputs are renamed into place only when finished, so a manifest with a matching
    fingerprint means the work is done and a re-run can skip it.
    """
    m = Path(out) / MANIFEST
    if not m.is_file():
        return False
    manifest = json.loads(m.read_text())
    return manifest.get("kind") == kind and manifest.get("fingerprint") == fp


def load_generator(model_dir: Path, adapter_dir: Path | None = None):
    """The part generator in `model_dir`; a directory whose genalign.json is a model reference
    ({"kind": "ref", "ref": ...}) is resolved first."""
    from genalign.generators.parts import generator_from_ref
    from genalign.models.refs import resolve

    meta_path = Path(model_dir) / "genalign.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") == "ref":
            model_dir = resolve(meta["ref"])
    return generator_from_ref(Path(model_dir), adapter_dir=adapter_dir)
