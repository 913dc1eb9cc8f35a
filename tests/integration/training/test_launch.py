"""launch: one process in-process, N under torchrun (a real 2-worker run), failures and
timeouts with the output's tail; the rank helpers."""

import json
import os
import sys
from pathlib import Path

import pytest

from genalign.training import launch as launch_module
from genalign.training.launch import (
    is_main_process,
    launch,
    rank,
    run_relayed,
    torchrun_command,
    worker_env,
    world_size,
)

HERE = Path(__file__).resolve().parent


def test_torchrun_command():
    cmd = torchrun_command("pkg.worker", ["--out", "x"], 3)
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert cmd[4:] == ["--nproc-per-node", "3", "-m", "pkg.worker", "--out", "x"]
    with pytest.raises(ValueError, match="processes: expected at least 1, got 0"):
        torchrun_command("pkg.worker", [], 0)


def test_worker_env_one_thread_unless_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_env()["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert worker_env()["OMP_NUM_THREADS"] == "4"


def test_one_process_runs_in_process():
    def never(_scratch):
        raise AssertionError("no workers for one process")

    got = launch(
        1, in_process=lambda: {"x": 1.0}, module="m", worker_args=never, result=dict, name="t"
    )
    assert got == {"x": 1.0}
    with pytest.raises(ValueError, match="processes: expected at least 1"):
        launch(0, in_process=dict, module="m", worker_args=never, result=dict, name="t")


def test_two_processes_under_torchrun_return_rank_0_result(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    scratch_seen = []

    def worker_args(scratch: Path) -> list[str]:
        scratch_seen.append(scratch)
        assert scratch.is_dir()
        return [str(tmp_path)]

    got = launch(
        2,
        in_process=lambda: pytest.fail("two processes run under torchrun"),
        module="_launch_worker",
        worker_args=worker_args,
        result=lambda: json.loads((tmp_path / "result.json").read_text()),
        name="test",
        timeout_s=120,
    )
    assert got == {"written_by": 0}
    for r in (0, 1):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == {"world_size": 2}
    assert not scratch_seen[0].exists()  # removed once the workers are done


def test_failure_raises_with_the_last_lines(capsys):
    code = "import sys; print('line one'); print('boom', file=sys.stderr); sys.exit(3)"
    with pytest.raises(
        RuntimeError, match=r"(?s)^job: exit status 3: .*last lines:\nline one\nboom"
    ):
        run_relayed([sys.executable, "-c", code], dict(os.environ), None, name="job")
    assert "line one" in capsys.readouterr().out  # relayed as it ran


def test_timeout_stops_the_process_group(monkeypatch):
    monkeypatch.setattr(launch_module, "KILL_GRACE_S", 5.0)
    code = "import time; print('started', flush=True); time.sleep(60)"
    with pytest.raises(TimeoutError, match=r"(?s)^job: stopped after 1.0 s: .*started"):
        run_relayed([sys.executable, "-c", code], dict(os.environ), 1.0, name="job")


def test_rank_helpers_read_torchrun_env_outside_a_process_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (rank(), world_size(), is_main_process()) == (3, 4, False)


def test_rank_helpers_prefer_the_process_group(tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert (rank(), world_size(), is_main_process()) == (0, 1, True)
    finally:
        dist.destroy_process_group()
