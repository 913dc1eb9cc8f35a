"""Artifacts: their kinds, where they live, their seals, and the model card.

Every artifact is a directory with `manifest.json` (kind, schema version, the config
that made it, its inputs, counts, row-file hashes; `genalign.storage.write_manifest`)
beside its payload. When a stage returns, `run_stage` *seals* each output: the manifest
gets the sha256 of every payload file, the stage's fingerprint and its result. A sealed
output is reused only while its files still match the seal and its fingerprint — the
stage, its config and params, and the content of every input file — is the same; a
hand-edited row file or a swapped mesh is therefore recomputed, never reused stale.

Artifacts may live on local disk or under `s3://bucket/prefix` (`materialise` copies
one into a scratch directory, `publish` uploads one), so a stage runs the same on
another node as on this one.

The model card `genalign.json` beside a model or adapter is one schema
(`ModelCard`) that every trainer writes and `register-model` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from genalign.storage import (
    MANIFEST,
    ArtifactError,
    atomic_write_json,
    config_hash,
    read_manifest,
    sha256_file,
)

# The artifact kinds, by the name their manifests carry.
CONDITIONS = "conditions"
DATASET = "dataset"
SHARDS = "shards"
SAMPLES = "samples"
EXECUTED = "executed"
SCORED = "scored"
PAIRS = "pairs"
MODEL = "model"
ADAPTER = "adapter"
REPORT = "report"
REGISTRATION = "registration"
KINDS = (CONDITIONS, DATASET, SHARDS, SAMPLES, EXECUTED, SCORED, PAIRS, MODEL, ADAPTER, REPORT, REGISTRATION)

MODEL_CARD = "genalign.json"


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


# --------------------------------------------------------------------- readers


def read_conditions(directory: Path) -> list:
    """The rows of a conditions artifact (`genalign.records.Condition`), checked."""
    from genalign.records import Condition, read_jsonl

    read_manifest(directory, CONDITIONS)
    return read_jsonl(Path(directory) / "conditions.jsonl", Condition)


def read_shard(shards: Path, index: int) -> list[str]:
    """The question ids of shard `index` of a shards artifact."""
    read_manifest(shards, SHARDS)
    data = json.loads((Path(shards) / "shards.json").read_text())
    if not 0 <= index < len(data["shards"]):
        raise ArtifactError(f"{Path(shards) / 'shards.json'}: no shard {index}; it has {len(data['shards'])}")
    return data["shards"][index]


# ----------------------------------------------------------------------- seals


def payload_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file of an artifact but its manifest, by relative path."""
    directory = Path(directory)
    return {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.relative_to(directory).as_posix() != MANIFEST
    }


def content_digest(directory: Path) -> str:
    """One hash of what an artifact holds (its payload files and their names)."""
    return config_hash(payload_hashes(directory))


def fingerprint(stage: str, config: dict[str, Any], params: dict[str, Any], inputs: dict[str, Any]) -> str:
    """What makes a stage's outputs reusable: the stage, its config and params, and the
    content of its inputs (`inputs`: name -> directory, or a list of them)."""
    return config_hash({
        "stage": stage,
        "config": config,
        "params": params,
        "inputs": {
            k: [content_digest(p) for p in v] if isinstance(v, (list, tuple)) else content_digest(v)
            for k, v in sorted(inputs.items())
        },
    })


def seal(directory: Path, *, stage: str, fingerprint: str, result: dict[str, Any]) -> None:
    """Record the payload's hashes, the fingerprint and the stage's result in the
    artifact's manifest (written by the stage), atomically."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: stage {stage} wrote this output without a {MANIFEST}")
    manifest = json.loads(path.read_text())
    manifest.update(payload=payload_hashes(directory), fingerprint=fingerprint, stage=stage, result=result)
    atomic_write_json(path, manifest)


def sealed_result(outputs: dict[str, Path], fingerprint: str) -> dict[str, Any] | None:
    """The stored result when every output is sealed with `fingerprint` and unchanged
    since; None when the stage has to run."""
    result = None
    for directory in outputs.values():
        path = Path(directory) / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if manifest.get("fingerprint") != fingerprint or "result" not in manifest:
            return None
        if manifest.get("payload") != payload_hashes(directory):
            return None
        result = manifest["result"]
    return result


def remove_stale_temporaries(out: Path) -> None:
    """Remove the `.NAME.*.tmp` / `.NAME.old` directories a killed stage left beside `out`."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    for path in out.parent.glob(f".{out.name}.*"):
        if path.is_dir() and (path.name.endswith(".tmp") or path.name == f".{out.name}.old"):
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------ local and s3://


def is_remote(where: str | Path) -> bool:
    return str(where).startswith("s3://")


def _s3_client():
    """boto3's S3 client; an endpoint from MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL
    (MinIO, Ceph, moto) when set, credentials from the usual AWS variables."""
    import boto3

    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None)


def _split(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ArtifactError(f"{uri}: expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def materialise(where: str | Path, scratch: Path) -> Path:
    """A local directory holding the artifact at `where`: the path itself, or for an
    `s3://` URI a copy downloaded into `scratch`."""
    if not is_remote(where):
        return Path(where)
    bucket, prefix = _split(str(where))
    client = _s3_client()
    scratch = Path(scratch)
    found = False
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1:]
            target = scratch / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
            found = True
    if not found:
        raise ArtifactError(f"{where}: no such artifact (no object under that prefix)")
    return scratch


def publish(directory: Path, uri: str) -> None:
    """Upload an artifact directory to `uri`, the manifest last: a reader that finds the
    manifest finds the whole payload."""
    bucket, prefix = _split(uri)
    client = _s3_client()
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == MANIFEST):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")


# ------------------------------------------------------------------ model card


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """`genalign.json` beside a model or an adapter: what it is and what it came from.

    One schema for every model directory the project writes or reads:

        kind              "model" (a directory of weights), "adapter" (a peft directory over
                          `base_model`), "ref" (a pointer: `ref` is a model reference resolved
                          on use) or "partcrafter" (`ref` names a PartCrafter checkpoint,
                          `genalign.generators.partcrafter`)
        method            how it was made: "random_init" (tiny builders), "flow_matching"
                          (pretrained here), "planner_sft" (warm start), "flow_dpo", "lm_dpo",
                          "merge" (an adapter folded into `base_model`)
        arch              what it is; for an adapter, what its base is: "part-generator"
                          (`components` dit/ + vision/) or "qwen-vl" (a transformers Qwen-VL
                          directory, `genalign.models.vlm`)
        ref               kind "ref" / "partcrafter": the model reference
        base_model        the model it was made from or sits on: a reference that resolves on
                          another machine (tiny://, hf://, s3://, mlflow://) whenever one is
                          known; a path only for a directory made inside a run (register-model
                          registers that one and rewrites the reference)
        base_model_sha256 the content hash of the base the adapter was trained on
                          (`genalign.training.base_model`)
        adapter_type      "lora", "dora" or "full"
        loss              the preference loss (flow_dpo's `loss`, trl's `loss_type`)
        iteration         the on-policy round that trained it (iterative pipelines)
        components        sub-directories by role (part-generator: {"dit": "dit", "vision": "vision"})
        pairs             the training pairs: counts (trained, weak_kept, weak_dropped),
                          iterations, the pairs file's sha256
        config, metrics   the config that made it and its final metrics
        extra             anything else worth keeping (runtime settings, notes, the adapter a
                          merged model folds in); never read to decide behaviour

    Fields left empty are not written; an unknown field is an error on read."""

    kind: str
    method: str = ""
    arch: str = ""
    ref: str = ""
    base_model: str = ""
    base_model_sha256: str = ""
    adapter_type: str = ""
    loss: str = ""
    iteration: int | None = None
    components: dict[str, str] = dataclasses.field(default_factory=dict)
    pairs: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    KINDS = ("model", "adapter", "ref", "partcrafter")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ArtifactError(f"model card: kind {self.kind!r}, expected one of {list(self.KINDS)}")
        if self.kind in ("ref", "partcrafter") and not self.ref:
            raise ArtifactError(f"model card: kind {self.kind!r} needs a model reference in 'ref'")
        if self.kind == "adapter" and not self.base_model:
            raise ArtifactError("model card: kind 'adapter' needs its base model's reference in 'base_model'")


def write_model_card(directory: Path, card: ModelCard) -> None:
    """Write `card` as `directory/genalign.json` (atomically; empty fields left out)."""
    data = {k: v for k, v in dataclasses.asdict(card).items() if v not in ("", None, {}) or k == "kind"}
    atomic_write_json(Path(directory) / MODEL_CARD, data)


def read_model_card(directory: Path) -> ModelCard:
    """The model card of `directory`; errors name the file and the field."""
    path = Path(directory) / MODEL_CARD
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MODEL_CARD} (not a genalign model or adapter directory)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict) or "kind" not in data:
        raise ArtifactError(f"{path}: expected a JSON object with a 'kind' (one of {list(ModelCard.KINDS)})")
    names = {f.name for f in dataclasses.fields(ModelCard)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ArtifactError(f"{path}: unknown field(s) {unknown}; valid fields are {sorted(names)}")
    try:
        return ModelCard(**data)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None


def has_model_card(directory: Path) -> bool:
    """True when `directory` holds a model card that reads (a cache made with an older
    card is rebuilt rather than used)."""
    try:
        read_model_card(directory)
    except ArtifactError:
        return False
    return True


__all__ = [
    "KINDS", "MODEL_CARD", "ArtifactError", "ModelCard", "content_digest", "fingerprint", "has_model_card",
    "link_or_copy", "materialise", "publish", "read_conditions", "read_manifest", "read_model_card", "read_shard",
    "seal", "sealed_result", "write_model_card",
]
