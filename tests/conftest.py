"""Test setup shared by every tier: no telemetry, an isolated genalign home per session."""

import os

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
