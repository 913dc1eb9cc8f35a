"""Backups of the MLflow database in the object store (`genalign.backup`), against moto's
in-process S3 (`moto.mock_aws`): the time-stamped keys, pruning to the newest N, and
that nothing else in the bucket is touched."""

from __future__ import annotations

import datetime

import pytest

from genalign import backup
from genalign.backup import BackupError, upload_backup

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

BUCKET = "genalign"
UTC = datetime.timezone.utc


@pytest.fixture
def s3(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def keys(client, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def dumps(tmp_path):
    folder = tmp_path / "backup"
    folder.mkdir()
    (folder / "mlflow.dump").write_bytes(b"PGDMP tracking")
    (folder / "mlflow_auth.dump").write_bytes(b"PGDMP auth")
    return folder


def at(day: int, hour: int = 3) -> datetime.datetime:
    return datetime.datetime(2025, 1, day, hour, 0, 0, tzinfo=UTC)


def test_uploads_every_file_under_one_utc_timestamp(s3, dumps):
    tz = datetime.timezone(datetime.timedelta(hours=2))
    result = upload_backup(dumps, BUCKET, "backups/mlflow/", keep=3,
                           now=datetime.datetime(2025, 1, 2, 5, 4, 5, tzinfo=tz))
    assert result.uploaded == [
        "backups/mlflow/20250102T030405Z/mlflow.dump",
        "backups/mlflow/20250102T030405Z/mlflow_auth.dump",
    ]
    assert result.deleted == []
    assert keys(s3) == result.uploaded
    body = s3.get_object(Bucket=BUCKET, Key=result.uploaded[0])["Body"].read()
    assert body == b"PGDMP tracking"


def test_a_single_file_is_a_backup_too(s3, dumps):
    result = upload_backup(dumps / "mlflow.dump", BUCKET, "backups/mlflow", keep=1, now=at(1))
    assert result.uploaded == ["backups/mlflow/20250101T030000Z/mlflow.dump"]


def test_keeps_the_newest_n_backups_and_nothing_else_is_touched(s3, dumps):
    # unrelated objects: the MLflow artifacts, a file beside the backups, a non-backup folder
    for key in ("mlflow/1/run/artifacts/model.bin", "backups/mlflow/README", "backups/mlflow/manual/x.dump",
                "backups/other/20240101T000000Z/x.dump"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    results = [upload_backup(dumps, BUCKET, "backups/mlflow/", keep=2, now=at(day)) for day in (1, 2, 3, 4)]
    assert [len(r.deleted) for r in results] == [0, 0, 2, 2]
    assert results[2].deleted == ["backups/mlflow/20250101T030000Z/mlflow.dump",
                                  "backups/mlflow/20250101T030000Z/mlflow_auth.dump"]
    assert keys(s3, "backups/mlflow/") == [
        "backups/mlflow/20250103T030000Z/mlflow.dump",
        "backups/mlflow/20250103T030000Z/mlflow_auth.dump",
        "backups/mlflow/20250104T030000Z/mlflow.dump",
        "backups/mlflow/20250104T030000Z/mlflow_auth.dump",
        "backups/mlflow/README",
        "backups/mlflow/manual/x.dump",
    ]
    assert "mlflow/1/run/artifacts/model.bin" in keys(s3)
    assert "backups/other/20240101T000000Z/x.dump" in keys(s3)


def test_order_is_by_time_not_by_upload_order(s3, dumps):
    """A late upload of an older dump is the one pruned, never the newest backup."""
    upload_backup(dumps, BUCKET, "backups/mlflow/", keep=1, now=at(5))
    late = upload_backup(dumps, BUCKET, "backups/mlflow/", keep=1, now=at(4))
    assert late.deleted == late.uploaded
    assert {k.split("/")[2] for k in keys(s3)} == {"20250105T030000Z"}


def test_prunes_more_than_one_delete_request_holds(s3, dumps, monkeypatch):
    monkeypatch.setattr(backup, "DELETE_BATCH", 3)
    for day in range(1, 6):
        upload_backup(dumps, BUCKET, "backups/mlflow/", keep=5, now=at(day))
    result = upload_backup(dumps, BUCKET, "backups/mlflow/", keep=1, now=at(6))
    assert len(result.deleted) == 10
    assert keys(s3) == result.uploaded


@pytest.mark.parametrize("kwargs, message", [
    ({"keep": 0}, "keep must be an integer >= 1, got 0"),
    ({"keep": True}, "keep must be an integer >= 1"),
    ({"prefix": "/"}, "prefix is empty"),
    ({"bucket": ""}, "no bucket given"),
])
def test_bad_settings_are_refused_before_anything_is_written(s3, dumps, kwargs, message):
    args = {"bucket": BUCKET, "prefix": "backups/mlflow/", "keep": 2} | kwargs
    with pytest.raises(BackupError, match=message):
        upload_backup(dumps, **args)
    assert keys(s3) == []


def test_a_missing_empty_or_failed_dump_is_refused(s3, tmp_path, dumps):
    with pytest.raises(BackupError, match="no backup files there"):
        upload_backup(tmp_path / "nowhere", BUCKET)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(BackupError, match="no backup files there"):
        upload_backup(tmp_path / "nothing", BUCKET)
    (dumps / "mlflow_auth.dump").write_bytes(b"")
    with pytest.raises(BackupError, match=r"empty file\(s\) \['mlflow_auth.dump'\]"):
        upload_backup(dumps, BUCKET)
    assert keys(s3) == []


def test_the_endpoint_comes_from_mlflow_s3_endpoint_url(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://minio.example:9000")
    assert backup.s3_client().meta.endpoint_url == "http://minio.example:9000"


def test_main_reads_the_cronjob_environment(s3, dumps, monkeypatch, capsys):
    s3.put_object(Bucket=BUCKET, Key="backups/mlflow/20200101T000000Z/mlflow.dump", Body=b"old")
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    monkeypatch.setenv("BACKUP_PREFIX", "backups/mlflow/")
    monkeypatch.setenv("BACKUP_KEEP", "1")
    assert backup.main([str(dumps)]) == 0
    out = capsys.readouterr().out
    assert out.count("uploaded s3://genalign/backups/mlflow/") == 2
    assert "deleted s3://genalign/backups/mlflow/20200101T000000Z/mlflow.dump" in out
    (stamp,) = {k.split("/")[2] for k in keys(s3)}
    assert backup.TIMESTAMP_PATTERN.fullmatch(stamp) and stamp > "20200101T000000Z"


@pytest.mark.parametrize("env, message", [
    ({"BACKUP_KEEP": "two"}, "BACKUP_KEEP must be a whole number >= 1, got 'two'"),
    ({"BACKUP_KEEP": "0"}, "keep must be an integer >= 1, got 0"),
    ({"S3_BUCKET": ""}, "S3_BUCKET is not set: it comes from key bucket of the Secret genalign-s3"),
])
def test_main_names_a_bad_setting(s3, dumps, monkeypatch, capsys, env, message):
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert backup.main([str(dumps)]) == 1
    assert message in capsys.readouterr().err


def test_main_wants_one_path(capsys):
    assert backup.main([]) == 2
    assert "usage" in capsys.readouterr().err
