"""Backups of the MLflow database in the object store: upload one, keep the newest N.

The backup CronJob of k8s/ (k8s/base/mlflow-backup-cronjob.yaml) dumps the MLflow
databases with `pg_dump --format=custom` into a folder, then runs, in the project's CPU
image:

    python -m genalign.backup /backup

which uploads every file of the folder to `s3://<bucket>/<prefix><UTC time>/<file>` and
then deletes all but the newest `keep` backups under the prefix. A backup is the folder of
one time stamp, `%Y%m%dT%H%M%SZ`, so that names sort by time; keys under the prefix that
are not such a folder are never deleted. Nothing is deleted unless the upload succeeded.
The S3 endpoint comes from MLFLOW_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) when set, the
credentials from the usual AWS variables, as for MLflow's own S3 client.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

TIMESTAMP = "%Y%m%dT%H%M%SZ"
TIMESTAMP_PATTERN = re.compile(r"\d{8}T\d{6}Z")
DEFAULT_PREFIX = "backups/mlflow/"
# Daily backups for two weeks (the CronJob's schedule is daily).
DEFAULT_KEEP = 14
# S3 DeleteObjects takes at most 1000 keys per request.
DELETE_BATCH = 1000


class BackupError(RuntimeError):
    """A backup that cannot be uploaded as asked; names what to fix."""


class BackupResult(NamedTuple):
    uploaded: list[str]  # keys written by this backup
    deleted: list[str]  # keys of the older backups pruned


def s3_client():
    """boto3's S3 client, at MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL when set (MinIO,
    Ceph RGW, ...), as the MLflow server reaches the same bucket."""
    import boto3

    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None)


def upload_backup(
    path: str | Path,
    bucket: str,
    prefix: str = DEFAULT_PREFIX,
    keep: int = DEFAULT_KEEP,
    *,
    client=None,
    now: datetime.datetime | None = None,
) -> BackupResult:
    """Uploads the backup at `path` (a file, or a folder of files) under
    `<prefix><UTC time of now>/`, then deletes all but the newest `keep` backups under
    `prefix`, this one included. `client`: a boto3 S3 client (default `s3_client()`)."""
    path = Path(path)
    if not bucket:
        raise BackupError("no bucket given")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise BackupError(f"keep must be an integer >= 1, got {keep!r}")
    folder = prefix.strip("/")
    if not folder:
        raise BackupError("prefix is empty: backups need a folder of their own in the bucket")
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise BackupError(f"{path}: no backup files there")
    empty = [p.name for p in files if p.stat().st_size == 0]
    if empty:
        raise BackupError(f"{path}: empty file(s) {empty}: did the dump fail?")

    client = client or s3_client()
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stamp = now.astimezone(datetime.timezone.utc).strftime(TIMESTAMP)
    uploaded = []
    for p in files:
        key = f"{folder}/{stamp}/{p.name}"
        client.upload_file(str(p), bucket, key)
        uploaded.append(key)
    return BackupResult(uploaded, prune(client, bucket, folder, keep))


def prune(client, bucket: str, folder: str, keep: int) -> list[str]:
    """Deletes the objects of all but the newest `keep` backup folders under `folder/`."""
    backups: dict[str, list[str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{folder}/"):
        for obj in page.get("Contents", []):
            stamp, sep, _ = obj["Key"][len(folder) + 1:].partition("/")
            if sep and TIMESTAMP_PATTERN.fullmatch(stamp):
                backups.setdefault(stamp, []).append(obj["Key"])
    old = sorted(backups, reverse=True)[keep:]
    doomed = sorted(key for stamp in old for key in backups[stamp])
    for i in range(0, len(doomed), DELETE_BATCH):
        batch = doomed[i:i + DELETE_BATCH]
        answer = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
        )
        if answer.get("Errors"):
            raise BackupError(f"s3://{bucket}: could not delete {answer['Errors']}")
    return doomed


def main(argv: list[str] | None = None) -> int:
    """`python -m genalign.backup FOLDER`; S3_BUCKET (the bucket key of genalign-s3),
    BACKUP_PREFIX (default backups/mlflow/) and BACKUP_KEEP (default 14) from the environment."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m genalign.backup FOLDER_OR_FILE", file=sys.stderr)
        return 2
    keep_text = os.environ.get("BACKUP_KEEP") or str(DEFAULT_KEEP)
    try:
        if not keep_text.isdigit():
            raise BackupError(f"BACKUP_KEEP must be a whole number >= 1, got {keep_text!r}")
        bucket = os.environ.get("S3_BUCKET", "")
        if not bucket:
            raise BackupError("S3_BUCKET is not set: it comes from key bucket of the Secret genalign-s3")
        result = upload_backup(argv[0], bucket, os.environ.get("BACKUP_PREFIX") or DEFAULT_PREFIX,
                               int(keep_text))
    except BackupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for key in result.uploaded:
        print(f"uploaded s3://{bucket}/{key}")
    for key in result.deleted:
        print(f"deleted s3://{bucket}/{key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
