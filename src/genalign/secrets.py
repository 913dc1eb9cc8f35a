"""What a secret is, and how it is masked before it reaches a log line, an MLflow param
or tag, a printed message or an error.

A secret is
- the value of a variable of `SECRET_ENV` (the credentials that the CLI, the MLflow
  client, boto3, libpq and the hub client read from the environment), once it is at
  least `MIN_LENGTH` characters long;
- the userinfo of a URL: `https://user:password@host/path` becomes `https://***@host/path`;
- the credential of an HTTP `Bearer` or `Basic` authorization;
- the value of a `name=value` pair (a query string, a DSN, an environment listing) or of
  a mapping entry whose name says it holds one (`is_secret_name`).

`redact` masks them in a text, `redact_mapping` in params or tags, and `masked_errors`
in an exception on its way out. They are applied at a few choke points: the tracking
helpers (`genalign.tracking`), `genalign.stages.run_stage` and the CLI's `main` and its
printed lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

MASK = "***"
# MLflow param, tag and metric names allow only letters, digits, spaces and _-./: so a
# secret inside a name is replaced by a word.
KEY_MASK = "redacted"

SECRET_ENV = (
    "KF_PIPELINES_TOKEN", "KFP_TOKEN",  # genalign submit (cli.TOKEN_ENV)
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD",  # the MLflow client
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",  # boto3: s3:// artifacts, MLflow's artifact store
    "PGPASSWORD", "POSTGRES_PASSWORD",  # the MLflow server's PostgreSQL (libpq)
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",  # hf:// model references (huggingface_hub)
)
# Shorter values are words in development setups (moto's "test" and "testing"); masking
# them would cut into paths, such as the output URIs that --resume-from reads back.
# Generated credentials are far longer.
MIN_LENGTH = 8

_SECRET_NAME = re.compile(
    r"(password|passwd|secret|token|credentials?|signature|authorization"
    r"|api[_-]?key|access[_-]?key|private[_-]?key)$",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://(?P<secret>[^/?#\s'\"<>]+)@")
# HTTP's own spelling of the schemes, so that prose ("a basic ...") is left alone
_AUTHORIZATION = re.compile(r"\b(?:Bearer|Basic)\s+(?P<secret>[A-Za-z0-9._~+/\-]{16,}=*)")
_PAIR = re.compile(r"(?:^|(?<=[\s?&;,(]))(?P<name>[A-Za-z_][\w.\-]*)=(?P<secret>[^\s&#;,'\")]+)")


def is_secret_name(name: str) -> bool:
    """True for a name that says its value is a secret: a variable of `SECRET_ENV`, or a
    name ending in password, secret, token, credential(s), signature, authorization,
    api_key, access_key or private_key (any case): `db.password`, `X-Amz-Security-Token`,
    but not `max_new_tokens`, `token_dim` or `match_key`."""
    return name.upper() in SECRET_ENV or _SECRET_NAME.search(name) is not None


def secret_values() -> list[str]:
    """The current values of the `SECRET_ENV` variables that are long enough to mask."""
    return [v for v in (os.environ.get(name, "") for name in SECRET_ENV) if len(v) >= MIN_LENGTH]


def redact(text: str, *, also: Iterable[str | None] = (), mask: str = MASK) -> str:
    """`text` with every secret replaced by `mask`; `also`: further values to mask (a
    token read from a file, say), under the same minimum length.

    Overlapping secrets are masked as one, so no part of either is left."""
    values = {v for v in (*secret_values(), *also) if v and len(v) >= MIN_LENGTH}
    spans = []
    for value in values:
        start = text.find(value)
        while start >= 0:
            spans.append((start, start + len(value)))
            start = text.find(value, start + 1)
    for pattern in (_USERINFO, _AUTHORIZATION):
        spans += [m.span("secret") for m in pattern.finditer(text)]
    spans += [m.span("secret") for m in _PAIR.finditer(text) if is_secret_name(m["name"])]
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    pieces, last = [], 0
    for start, stop in merged:
        pieces += [text[last:start], mask]
        last = stop
    pieces.append(text[last:])
    return "".join(pieces)


def redact_mapping(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Params or tags with every secret masked: in the names (by `KEY_MASK`), in the
    values, and the whole value of a name that says it is a secret. A value that is not
    a string keeps its type unless its text holds a secret (then it is the masked text)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = redact(str(key), mask=KEY_MASK)
        text = "" if value is None else str(value)
        if is_secret_name(str(key)) and text:
            out[name] = MASK
        elif isinstance(value, str):
            out[name] = redact(value)
        else:
            masked = redact(text)
            out[name] = value if masked == text else masked
    return out


class RedactedError(RuntimeError):
    """An error whose text held a secret that could not be masked in place; its message
    is the error's traceback with the secrets masked."""


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and every exception it carries: its cause, its context and exceptions in its args."""
    found: list[BaseException] = []
    todo = [error]
    while todo:
        exc = todo.pop()
        if any(exc is seen for seen in found):
            continue
        found.append(exc)
        todo += [e for e in (exc.__cause__, exc.__context__, *exc.args) if isinstance(e, BaseException)]
    return found


def _leaks(error: BaseException) -> bool:
    return any(redact(str(exc)) != str(exc) for exc in _chain(error))


@contextlib.contextmanager
def masked_errors() -> Iterator[None]:
    """Masks the secrets in an exception that leaves the block: in the messages of it and
    of the exceptions it chains, in place, so that its type (and what catches it) stays
    the same. An error whose text does not come from its args (OSError's strerror, say)
    is raised instead as `RedactedError`, without the original. Usable as a decorator."""
    try:
        yield
    except Exception as error:
        if not _leaks(error):
            raise
        for exc in _chain(error):
            exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        if _leaks(error):
            raise RedactedError(redact("".join(traceback.format_exception(error)))) from None
        raise
