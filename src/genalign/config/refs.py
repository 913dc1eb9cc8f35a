"""Model references, parsed without resolving them: which form a string is, and its parts.

    <path>                              a local directory (any string without "://")
    tiny://<arch>                       built by the project from a config, or released with it (TINY_ARCHS)
    hf://[<org>/]<repo>[@<revision>]    a hub snapshot
    s3://<bucket>/<key>                 a prefix in the object store
    mlflow://models/<name>@<alias>      a registered model version, by alias
    mlflow://models/<name>/<version>    a registered model version, by number

`parse_model_ref` is the one parser: `genalign.models.refs.resolve` fetches what it
returns, and config dataclasses call `check_model_ref` in `__post_init__`, so a malformed
reference fails when a preset loads rather than when a stage reaches the model. Syntax
only: whether a directory exists or a registered model has that alias is for `resolve`.
No torch here.
"""

from __future__ import annotations

import dataclasses
import re

SCHEMES = ("tiny", "hf", "s3", "mlflow")
# The keys of genalign.models.refs.TINY_BUILDERS, which imports torch-side builders; a unit
# test keeps the two equal.
TINY_ARCHS = ("part-generator", "part-generator-pretrained", "tiny-qwen2-vl")
FORMS = (
    "a local path, tiny://<arch>, hf://<org>/<repo>[@<revision>], s3://<bucket>/<key>, "
    "mlflow://models/<name>@<alias> or mlflow://models/<name>/<version>"
)

_MLFLOW = re.compile(r"^mlflow://models/(?P<name>[^@/]+)(?:@(?P<alias>[\w.-]+)|/(?P<version>\d+))$")
# Hub repo ids: an optional namespace and a name of letters, digits, '_', '-' and '.'.
_HF_REPO = re.compile(r"^[\w.-]+(?:/[\w.-]+)?$")


class ModelRefError(ValueError):
    """A model reference that does not parse or does not resolve."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A parsed model reference; the fields that belong to other forms are None."""

    ref: str
    scheme: str  # "path" or one of SCHEMES
    path: str | None = None  # path
    arch: str | None = None  # tiny
    repo: str | None = None  # hf
    revision: str | None = None  # hf, None = the default branch
    bucket: str | None = None  # s3
    key: str | None = None  # s3
    name: str | None = None  # mlflow: the registered model
    alias: str | None = None  # mlflow, by alias
    version: str | None = None  # mlflow, by version number


def parse_model_ref(ref: str) -> ModelRef:
    """The form and parts of `ref`; ModelRefError saying what was expected otherwise."""
    if not isinstance(ref, str):
        raise ModelRefError(f"{ref!r}: expected a model reference string ({FORMS})")
    if not ref.strip():
        raise ModelRefError(f"expected a model reference ({FORMS}), got {ref!r}")
    if ref != ref.strip():
        raise ModelRefError(f"{ref!r}: expected a model reference without surrounding spaces")
    if "://" not in ref:
        return ModelRef(ref, "path", path=ref)
    scheme, _, body = ref.partition("://")
    if scheme == "tiny":
        if body not in TINY_ARCHS:
            raise ModelRefError(f"{ref}: unknown tiny architecture; valid: {sorted(TINY_ARCHS)}")
        return ModelRef(ref, "tiny", arch=body)
    if scheme == "mlflow":
        m = _MLFLOW.match(ref)
        if not m:
            raise ModelRefError(
                f"{ref}: expected mlflow://models/<name>@<alias> or mlflow://models/<name>/<version>"
            )
        return ModelRef(ref, "mlflow", name=m["name"], alias=m["alias"], version=m["version"])
    if scheme == "s3":
        bucket, _, key = body.partition("/")
        if not bucket or not key.strip("/"):
            raise ModelRefError(f"{ref}: expected s3://<bucket>/<key> with both parts non-empty")
        return ModelRef(ref, "s3", bucket=bucket, key=key)
    if scheme == "hf":
        repo, at, revision = body.partition("@")
        if not _HF_REPO.match(repo) or (at and not revision):
            raise ModelRefError(
                f"{ref}: expected hf://<org>/<repo>[@<revision>] (letters, digits, '_', '-', '.')"
            )
        return ModelRef(ref, "hf", repo=repo, revision=revision or None)
    raise ModelRefError(f"{ref}: unknown scheme; use a path, s3://, mlflow://, hf:// or tiny://")


def check_model_ref(value: str, *, where: str, extra: tuple[str, ...] = ()) -> None:
    """ValueError naming `where` unless `value` is a well-formed model reference or one of
    the words in `extra` (e.g. 'pretrain')."""
    if value in extra:
        return
    try:
        parse_model_ref(value)
    except ModelRefError as e:
        also = f"; or one of {list(extra)}" if extra else ""
        raise ValueError(f"{where}: {e}{also}") from None
