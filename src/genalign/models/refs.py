"""Model references: one resolver turns a string into a local directory.

Forms:
- a path:                            an existing local directory
- `s3://bucket/key`:                 downloaded (boto3 via MLflow's artifact client)
- `mlflow://models/<name>@<alias>`:  a registered model version by alias
- `mlflow://models/<name>/<version>`: a registered model version by number
- `hf://<org>/<repo>[@revision]`:    a hub snapshot (clusters with a hub or mirror)
- `tiny://<arch>`:                   built from a config by the project and saved

Downstream code always calls `from_pretrained(local_dir)` on the result, so the tiny
path and the real path run the same code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from genalign.config.refs import ModelRefError, parse_model_ref
from genalign.storage import atomic_dir


def cache_dir() -> Path:
    return Path(os.environ.get("GENALIGN_CACHE", Path(os.environ.get("GENALIGN_HOME", ".genalign")) / "cache")).resolve()


def _build_tiny_part_generator(out: Path) -> None:
    from genalign.models.part_generator import build_tiny_generator

    build_tiny_generator(out, seed=0)


def _build_tiny_qwen2_vl(out: Path) -> None:
    from genalign.models.tiny_qwen_vl import build_tiny_qwen2_vl

    build_tiny_qwen2_vl(out, seed=0)


# tiny://<arch> builders: random-init models from configs, for tests and tiny presets.
# Their names are also declared, torch-free, as genalign.config.refs.TINY_ARCHS.
TINY_BUILDERS: dict[str, Callable[[Path], None]] = {
    "part-generator": _build_tiny_part_generator,
    "tiny-qwen2-vl": _build_tiny_qwen2_vl,
}


def resolve(ref: str, *, cache: Path | None = None) -> Path:
    """Return a local directory holding the model named by `ref`.

    `ref` is parsed by `genalign.config.refs.parse_model_ref`, the parser config checks use.
    """
    cache = Path(cache) if cache else cache_dir()
    parsed = parse_model_ref(ref)
    if parsed.scheme == "tiny":
        out = cache / "tiny" / parsed.arch
        if not out.is_dir():
            with atomic_dir(out) as tmp:
                TINY_BUILDERS[parsed.arch](tmp)
        return out
    if parsed.scheme == "mlflow":
        return _resolve_mlflow(parsed.name, parsed.alias, parsed.version, cache)
    if parsed.scheme == "s3":
        return _download(ref, cache / "s3" / f"{parsed.bucket}/{parsed.key}")
    if parsed.scheme == "hf":
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(parsed.repo, revision=parsed.revision))
        except Exception as e:
            raise ModelRefError(f"{ref}: could not download from the hub ({e})") from e
    path = Path(parsed.path)
    if not path.is_dir():
        raise ModelRefError(f"{ref}: no such model directory")
    return path


def _resolve_mlflow(name: str, alias: str | None, version: str | None, cache: Path) -> Path:
    from mlflow.exceptions import MlflowException

    from genalign.tracking import _client

    client = _client()
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
    except MlflowException as e:
        which = f"@{alias}" if alias else f"/{version}"
        raise ModelRefError(f"mlflow://models/{name}{which}: not in the registry ({e.message})") from e
    return _download(mv.source, cache / "mlflow" / name / str(mv.version))


def _download(uri: str, out: Path) -> Path:
    if out.is_dir():
        return out
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow.artifacts

    from genalign.tracking import tracking_uri

    with atomic_dir(out) as tmp:
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(tmp), tracking_uri=tracking_uri()
            )
        except Exception as e:
            raise ModelRefError(f"{uri}: download failed ({e})") from e
    # download_artifacts keeps the last path component as a folder
    children = [p for p in out.iterdir()]
    return children[0] if len(children) == 1 and children[0].is_dir() else out


def model_dir(model: Path) -> Path:
    """The local directory of the model in a model artifact: the artifact itself, or the
    model its card points to (`{"kind": "ref", "ref": ...}`), resolved."""
    import json

    card = Path(model) / "genalign.json"
    if card.is_file():
        meta = json.loads(card.read_text())
        if meta.get("kind") == "ref":
            return resolve(meta["ref"])
    return Path(model)

