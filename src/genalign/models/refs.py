"""Model references: one resolver turns a string into a local directory.

Forms:
- a path:                            an existing local directory
- `s3://bucket/key`:                 downloaded (boto3 via MLflow's artifact client)
- `mlflow://models/<name>@<alias>`:  a registered model version by alias
- `mlflow://models/<name>/<version>`: a registered model version by number
- `hf://<org>/<repo>[@revision]`:    a hub snapshot (clusters with a hub or mirror)
- `tiny://<arch>`:                   built from a config by the project and saved, or a
                                     released tiny model copied from the package
                                     (`tiny://part-generator-pretrained`)

Downstream code always calls `from_pretrained(local_dir)` on the result, so the tiny
path and the real path run the same code.

A registered adapter (register-model) resolves on a machine that has nothing but the
tracking server: `resolve("mlflow://models/<name>@champion")` downloads the version's
source into the cache and returns the adapter directory in it, after resolving (and so
fetching) the base its model card names, recursively:

    <cache>/mlflow/<name>/<version>/model/      the version's source: an MLflow pyfunc model
        MLmodel                                 metadata "genalign.model": artifacts/adapter
        artifacts/adapter/                      <- resolve returns this directory
            adapter_config.json, adapter_model.safetensors
            genalign.json                       kind "adapter", base_model "<reference>"
    <cache>/mlflow/<name>-base/<version>/base/  a base made inside a run, registered by
        genalign.json, ...                      register-model (kind "model")

`base_and_adapter(directory)` then gives (base directory, adapter directory) for any
resolved directory, and the loaders (`genalign.generators.parts.generator_from_ref`,
`genalign.generators.pyfunc`) put the adapter on its base.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from genalign.artifacts import MODEL_CARD, ArtifactError, ModelCard, has_model_card, read_model_card
from genalign.config.refs import ModelRefError, parse_model_ref
from genalign.storage import atomic_dir

# The MLmodel metadata key naming the genalign model directory inside a pyfunc model.
PYFUNC_MODEL_KEY = "genalign.model"
# How deep a chain of references (ref cards, adapters over registered bases) may go.
MAX_DEPTH = 8


def cache_dir() -> Path:
    return Path(os.environ.get("GENALIGN_CACHE", Path(os.environ.get("GENALIGN_HOME", ".genalign")) / "cache")).resolve()


def _build_tiny_part_generator(out: Path) -> None:
    from genalign.models.part_generator import build_tiny_generator

    build_tiny_generator(out, seed=0)


def _build_tiny_qwen2_vl(out: Path) -> None:
    from genalign.models.tiny_qwen_vl import build_tiny_qwen2_vl

    build_tiny_qwen2_vl(out, seed=0)


def _copy_released(name: str, out: Path) -> None:
    """Copy the model directory `genalign/models/released/<name>/` shipped with the package
    (package data, so it is there in an installed wheel too) into `out`."""
    from importlib.resources import files

    source = files("genalign.models") / "released" / name
    if not (source / MODEL_CARD).is_file():
        raise ModelRefError(f"tiny://{name}: {source} is missing from the installed package")

    def copy(src, dst: Path) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            if item.is_dir():
                copy(item, dst / item.name)
            else:
                (dst / item.name).write_bytes(item.read_bytes())

    copy(source, out)


def _copy_part_generator_pretrained(out: Path) -> None:
    _copy_released("part-generator-pretrained", out)


# tiny://<arch> builders, for tests and tiny presets: random-init models from configs, and
# released ones (built by a command, committed under genalign/models/released/, copied).
# Their names are also declared, torch-free, as genalign.config.refs.TINY_ARCHS.
TINY_BUILDERS: dict[str, Callable[[Path], None]] = {
    "part-generator": _build_tiny_part_generator,
    "part-generator-pretrained": _copy_part_generator_pretrained,
    "tiny-qwen2-vl": _build_tiny_qwen2_vl,
}


def resolve(ref: str, *, cache: Path | None = None, depth: int = 0) -> Path:
    """Return a local directory holding the model named by `ref`.

    `ref` is parsed by `genalign.config.refs.parse_model_ref`, the parser config checks use.
    A downloaded adapter (mlflow://, s3://) comes with its base: the reference in its
    model card's `base_model` is resolved too (into the same cache).
    """
    if depth > MAX_DEPTH:
        raise ModelRefError(f"{ref}: more than {MAX_DEPTH} nested model references (a cycle?)")
    cache = Path(cache) if cache else cache_dir()
    parsed = parse_model_ref(ref)
    if parsed.scheme == "tiny":
        out = cache / "tiny" / parsed.arch
        if not has_model_card(out):  # missing, or built with an older model card
            with atomic_dir(out) as tmp:
                TINY_BUILDERS[parsed.arch](tmp)
        return out
    if parsed.scheme == "mlflow":
        return _with_base(_resolve_mlflow(parsed.name, parsed.alias, parsed.version, cache), cache, depth)
    if parsed.scheme == "s3":
        return _with_base(_download(ref, cache / "s3" / f"{parsed.bucket}/{parsed.key}"), cache, depth)
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
    return _pyfunc_payload(_download(mv.source, cache / "mlflow" / name / str(mv.version)))


def _pyfunc_payload(directory: Path) -> Path:
    """The genalign model directory in a downloaded version: the directory itself, or for
    an MLflow pyfunc model the one its MLmodel metadata names."""
    if (directory / MODEL_CARD).is_file() or not (directory / "MLmodel").is_file():
        return directory
    import yaml

    meta = (yaml.safe_load((directory / "MLmodel").read_text()) or {}).get("metadata") or {}
    rel = meta.get(PYFUNC_MODEL_KEY)
    if not rel:
        return directory
    inner = (directory / rel).resolve()
    if directory.resolve() not in inner.parents or not inner.is_dir():
        raise ModelRefError(f"{directory / 'MLmodel'}: metadata {PYFUNC_MODEL_KEY}={rel!r} names no directory inside it")
    return inner


def _with_base(directory: Path, cache: Path, depth: int) -> Path:
    """`directory`, after resolving the base of the adapter in it (when it is one). A card
    that does not read (written before the current schema) is left to whoever loads it."""
    try:
        card = _card(directory)
    except ArtifactError:
        return directory
    if card is not None and card.kind == "adapter":
        try:
            resolve(card.base_model, cache=cache, depth=depth + 1)
        except ModelRefError as e:
            raise ModelRefError(f"{directory}: the adapter's base model does not resolve: {e}") from e
    return directory


def _card(directory: Path) -> ModelCard | None:
    """The model card of `directory`, None when it has none (a hub snapshot, say)."""
    if not (Path(directory) / MODEL_CARD).is_file():
        return None
    return read_model_card(directory)


def pin(ref: str) -> str:
    """`ref` with an MLflow alias replaced by the version it names now
    (`mlflow://models/<name>@champion` -> `mlflow://models/<name>/<version>`), so that a
    lineage record keeps naming the same weights after the alias moves; other forms as
    they are."""
    parsed = parse_model_ref(ref)
    if parsed.scheme != "mlflow" or not parsed.alias:
        return ref
    from mlflow.exceptions import MlflowException

    from genalign.tracking import _client

    try:
        mv = _client().get_model_version_by_alias(parsed.name, parsed.alias)
    except MlflowException as e:
        raise ModelRefError(f"{ref}: not in the registry ({e.message})") from e
    return f"mlflow://models/{parsed.name}/{mv.version}"


def is_portable(ref: str) -> bool:
    """True for a reference that resolves on another machine (tiny://, hf://, s3://,
    mlflow://); False for a path."""
    return parse_model_ref(ref).scheme != "path"


def _download(uri: str, out: Path) -> Path:
    if not out.is_dir():
        _fetch(uri, out)
    # download_artifacts keeps the last path component as a folder
    children = [p for p in out.iterdir()]
    return children[0] if len(children) == 1 and children[0].is_dir() else out


def _fetch(uri: str, out: Path) -> None:
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


def model_dir(model: Path) -> Path:
    """The local directory of the model in a model artifact: the artifact itself, or the
    model its card points to (kind "ref"), resolved. Every stage that loads a model
    artifact (rollout, training, evaluation) goes through here."""
    model = Path(model)
    for _ in range(MAX_DEPTH):
        card = _card(model)
        if card is None or card.kind != "ref":
            return model
        model = resolve(card.ref)
    raise ModelRefError(f"{model}: more than {MAX_DEPTH} nested model references (a cycle?)")


def artifact_ref(model: Path) -> str:
    """What to record as the base of a model trained on the model artifact `model`: the
    reference of a "ref" card (portable), else the artifact's own path (a directory made
    inside the run, which register-model registers)."""
    card = _card(Path(model))
    return card.ref if card is not None and card.kind == "ref" else str(Path(model))


def base_and_adapter(directory: Path, *, cache: Path | None = None) -> tuple[Path, Path | None]:
    """(model directory, adapter directory or None) of a resolved directory: a "ref" card
    is followed, an adapter's `base_model` resolved (into `cache`; a base that is itself a
    "ref" is followed too). An adapter over an adapter is an error: merge the first one."""
    directory = model_dir(directory)
    card = _card(directory)
    if card is None or card.kind != "adapter":
        return directory, None
    try:
        base = model_dir(resolve(card.base_model, cache=cache))
    except ModelRefError as e:
        raise ModelRefError(f"{directory}: the adapter's base model does not resolve: {e}") from e
    base_card = _card(base)
    if base_card is not None and base_card.kind == "adapter":
        raise ArtifactError(f"{directory}: its base {card.base_model} is an adapter too; merge it into its base first")
    return base, directory

