"""Real services on loopback for integration tests: PostgreSQL, an S3 server (moto) and an
MLflow tracking server using both, with or without MLflow's basic-auth app.

Each starter is a context manager that starts one process on 127.0.0.1 and a free port,
waits until it answers (or raises with the process's log), yields how to reach it, and
stops it on exit. Nothing here imports pytest; the fixtures live in the tests that use
them. `make services` (tests/services.mk) installs the PostgreSQL server binaries.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
# moto accepts any credentials; these only have to be present and consistent
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BIN = Path(sys.executable).parent  # the venv's console scripts (moto_server, mlflow)


class ServiceError(RuntimeError):
    """A service did not start; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding pg_ctl and initdb, or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    found = [d for d in found if (d / "initdb").is_file() and (d / "postgres").is_file()]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return found[-1] if found else None


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as e:
        return f"(no log: {e})"


def _wait(ready, proc: subprocess.Popen | None, log: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode}; its log:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.25)
    raise ServiceError(f"{what} not ready after {timeout:.0f} s; its log:\n{_tail(log)}")


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group the service leads (mlflow starts uvicorn workers), then kill."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


# loopback never goes through an http(s)_proxy from the environment
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_ok(url: str, *, any_answer: bool = False) -> bool:
    """200 from `url`; with `any_answer`, any HTTP answer below 500 (the server is up)."""
    try:
        with _DIRECT.open(url, timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        return any_answer and e.code < 500
    except OSError:
        return False


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    port: int
    database: str
    user: str
    bindir: Path = field(repr=False)

    @property
    def uri(self) -> str:
        return self.uri_of(self.database)

    def uri_of(self, database: str) -> str:
        # the driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3)
        return f"postgresql+psycopg2://{self.user}@{HOST}:{self.port}/{database}"

    def create_database(self, database: str) -> str:
        """A new empty database in this cluster; its URI."""
        made = subprocess.run(
            [str(self.bindir / "createdb"), "-h", HOST, "-p", str(self.port), "-U", self.user, database],
            capture_output=True, text=True, check=False,
        )
        if made.returncode != 0:
            raise ServiceError(f"createdb {database} failed: {made.stderr}")
        return self.uri_of(database)


@contextlib.contextmanager
def postgres(database: str = "mlflow", timeout: float = 60) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, trust auth, one database.

    The server refuses to run as root, so as root everything runs as the `postgres`
    system user the Debian package creates (`runuser -u postgres --`), in a temp dir that
    user owns; as any other user it runs as that user.
    """
    bindir = postgres_bin()
    if bindir is None:
        raise ServiceError("no PostgreSQL server under /usr/lib/postgresql/*/bin: run `make services`")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError("running as root and there is no `postgres` user to run the server as") from None
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        owner, prefix = pwd.getpwuid(os.geteuid()), []
    root = Path(tempfile.mkdtemp(prefix="genalign-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "postgres.log"
    sockets.mkdir()
    log.touch()
    if as_root:
        for p in (root, sockets, log):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    proc = None
    try:
        init = subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-locale", "--no-sync"],
            capture_output=True, text=True, check=False,
        )
        if init.returncode != 0:
            raise ServiceError(f"initdb failed ({init.returncode}):\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*prefix, str(bindir / "postgres"), "-D", str(data), "-h", HOST, "-p", str(port),
                 "-k", str(sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=100"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        pg_isready = bindir / "pg_isready"
        _wait(
            lambda: subprocess.run([str(pg_isready), "-q", "-h", HOST, "-p", str(port), "-U", "postgres"],
                                   check=False).returncode == 0,
            proc, log, "postgres", timeout,
        )
        pg = Postgres(port=port, database=database, user="postgres", bindir=bindir)
        try:
            pg.create_database(database)
        except ServiceError as e:
            raise ServiceError(f"{e}\n{_tail(log)}") from None
        yield pg
    finally:
        if proc is not None:
            if proc.poll() is None:
                subprocess.run([*prefix, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast",
                                "-w", "-t", "30"], capture_output=True, check=False)
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- S3 (moto)


@dataclass
class S3:
    endpoint: str
    bucket: str

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextlib.contextmanager
def moto_s3(bucket: str = "genalign", timeout: float = 60) -> Iterator[S3]:
    """moto's S3 server (`moto_server`) on 127.0.0.1:<free port>, with one bucket."""
    exe = BIN / "moto_server"
    if not exe.is_file():
        raise ServiceError(f"{exe}: missing; install the dev extra (moto[server])")
    root = Path(tempfile.mkdtemp(prefix="genalign-s3-"))
    log = root / "moto.log"
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(exe), "-H", HOST, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **S3_ENV},
        )
    try:
        _wait(lambda: _http_ok(f"{endpoint}/moto-api/", any_answer=True), proc, log, "moto_server", timeout)
        s3 = S3(endpoint=endpoint, bucket=bucket)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- MLflow


@dataclass(frozen=True)
class BasicAuth:
    """Settings of MLflow's basic-auth app (`mlflow server --app-name basic-auth`): where it
    keeps users and permissions, what an authenticated user may do by default, and the
    admin it creates on its first start against an empty user store."""

    database_uri: str
    admin_username: str
    admin_password: str = field(repr=False)  # kept out of assertion messages and logs
    default_permission: str = "READ"
    # seconds a successful credential check is remembered; 0 (MLflow's default) hashes the
    # password again on every request
    auth_cache_ttl_seconds: int = 0

    def ini(self) -> str:
        """The file MLFLOW_AUTH_CONFIG_PATH names; keys as in mlflow/server/auth/basic_auth.ini."""
        values = (self.database_uri, self.admin_username, self.admin_password, self.default_permission)
        if any(c in v for v in values for c in "%\n"):
            # configparser reads `%` as interpolation and a newline as the end of a value
            raise ValueError("basic-auth settings cannot hold '%' or a newline")
        return (
            "[mlflow]\n"
            f"default_permission = {self.default_permission}\n"
            f"database_uri = {self.database_uri}\n"
            f"admin_username = {self.admin_username}\n"
            f"admin_password = {self.admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {self.auth_cache_ttl_seconds}\n"
        )


@dataclass
class MlflowServer:
    uri: str
    log: Path
    artifacts_destination: str
    auth: BasicAuth | None = None


# set in the environment they would replace the auth ini's admin (mlflow/server/auth/config.py)
_AUTH_ENV_OVERRIDES = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH")


@contextlib.contextmanager
def mlflow_server(backend_uri: str, s3: S3, prefix: str = "mlflow", timeout: float = 120,
                  auth: BasicAuth | None = None) -> Iterator[MlflowServer]:
    """`mlflow server` on 127.0.0.1:<free port>: runs and registry in `backend_uri`,
    artifacts proxied by the server (`--serve-artifacts`) into s3://<bucket>/<prefix>.

    With `auth`, the server runs the basic-auth app: every request but /health needs HTTP
    basic credentials of a user in `auth.database_uri`. The app migrates that database and
    creates the admin in the `mlflow server` process before uvicorn starts its worker, so
    /health answering means the admin can log in. Its ini file lives in the server's temp
    dir, readable by its owner only, and goes with it.
    """
    exe = BIN / "mlflow"
    root = Path(tempfile.mkdtemp(prefix="genalign-mlflow-"))
    log = root / "mlflow-server.log"
    port = free_port()
    uri = f"http://{HOST}:{port}"
    destination = f"s3://{s3.bucket}/{prefix}"
    env = {
        **{k: v for k, v in os.environ.items() if k not in _AUTH_ENV_OVERRIDES}, **S3_ENV,
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_TRACKING_URI": uri,
        "NO_PROXY": HOST, "no_proxy": HOST,
    }
    app = []
    if auth is not None:
        ini = root / "basic_auth.ini"
        ini.touch(mode=0o600)
        ini.write_text(auth.ini())
        # the app refuses to start without a static key (it signs CSRF tokens of the signup form)
        env |= {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
        app = ["--app-name", "basic-auth"]
    with open(log, "ab") as out:
        # with --app-name too, uvicorn serves the app (create_app as a factory) and --workers applies
        proc = subprocess.Popen(
            [str(exe), "server", "--backend-store-uri", backend_uri,
             "--artifacts-destination", destination, "--serve-artifacts",
             "--host", HOST, "--port", str(port), "--workers", "1", *app],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=root,
        )
    try:
        _wait(lambda: _http_ok(f"{uri}/health"), proc, log, "mlflow server", timeout)
        yield MlflowServer(uri=uri, log=log, artifacts_destination=destination, auth=auth)
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def tracking_stack(bucket: str = "genalign", admin: tuple[str, str] | None = None
                   ) -> Iterator[tuple[MlflowServer, S3, Postgres]]:
    """PostgreSQL + moto S3 + an MLflow server using both, stopped in reverse order.

    With `admin` (username, password) the server runs the basic-auth app, its users and
    permissions in a second database of the same cluster, `mlflow_auth`, as
    k8s/base/mlflow.yaml keeps them: apart from the tracking store's tables and migrations.
    """
    with postgres() as pg, moto_s3(bucket) as s3:
        auth = None
        if admin is not None:
            auth = BasicAuth(database_uri=pg.create_database("mlflow_auth"),
                             admin_username=admin[0], admin_password=admin[1],
                             # without it every request hashes the password again (scrypt,
                             # ~0.15 s): part-dpo's e2e run took about twice as long
                             auth_cache_ttl_seconds=600)
        with mlflow_server(pg.uri, s3, auth=auth) as server:
            yield server, s3, pg
