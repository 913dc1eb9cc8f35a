"""Test setup shared by every tier: no telemetry, an isolated genalign home per session,
and each test's tier from its folder.

    tests/unit         default: CPU, no subprocess, each well under a second (`make test-unit`)
    tests/contracts    the contracts every declared pipeline keeps (fast ones unit, others integration)
    tests/integration  tiny models, stages and trainers called directly, subprocesses (torchrun, kubectl)
    tests/e2e          whole pipelines through kfp.local, services on loopback (PostgreSQL, S3, MLflow),
                       and rebuilding the released tiny base (minutes)
    tests/gpu          real CUDA work; skipped without a CUDA device
"""

import builtins
import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TQDM_DISABLE", "1")
# one thread per process: two busy threads on two shared cores run several times slower
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """MLflow store, caches and kfp.local artifacts of the tests live in a temp dir."""
    home = tmp_path_factory.mktemp("genalign-home")
    old = {k: os.environ.get(k) for k in ("GENALIGN_HOME", "MLFLOW_TRACKING_URI", "GENALIGN_CACHE")}
    os.environ["GENALIGN_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if "GENALIGN_TEST_CACHE" in os.environ:  # reuse pretrained tiny models across test sessions
        os.environ["GENALIGN_CACHE"] = os.environ["GENALIGN_TEST_CACHE"]
    else:
        os.environ.pop("GENALIGN_CACHE", None)
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_PRINT = builtins.print


@pytest.fixture(autouse=True)
def _plain_print():
    """Each test starts with the built-in print: a kfp.local run can leave it wrapped by
    kfp.local.logging_utils.indented_print, which indents every later line by four spaces."""
    builtins.print = _PRINT


TIERS = {"integration": "integration", "e2e": "e2e", "gpu": "gpu"}
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """The marker of each test's tier folder; gpu tests skip without CUDA."""
    cuda = None
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(HERE).parts[0]
        if folder in TIERS:
            item.add_marker(getattr(pytest.mark, TIERS[folder]))
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))




@pytest.fixture
def sentinels(monkeypatch):
    """Every genalign.secrets.SECRET_ENV variable set to its sentinel (tests/secret_sentinels.py)."""
    from secret_sentinels import secret_sentinels

    values = secret_sentinels()
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test: tiny models run fastest on one, and a second
    OpenMP thread only adds contention on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def moto_s3(monkeypatch):
    """A boto3 S3 client on an in-process S3 (moto), with test credentials and no
    endpoint override; the test creates its buckets."""
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        yield boto3.client("s3")
