"""Run a training function in this process, or in N processes under torchrun.

    metrics = launch(
        processes,
        in_process=lambda: train(cfg, ...),            # processes == 1
        module="genalign.trainers.lm_dpo",             # its `main` is one worker
        worker_args=lambda scratch: ["--config", ...],  # files for the workers go in scratch
        result=lambda: read_metrics(out_dir),          # what rank 0 wrote
        name="lm_dpo",
    )

N > 1 runs `python -m torch.distributed.run --standalone --nproc-per-node N -m <module>
<args>` (`--standalone` picks a free port on this host) with OMP_NUM_THREADS=1 unless
set, in a session of its own so a timeout stops torchrun and every worker. Its output
(stderr merged) is relayed to our stdout line by line; a failure or a timeout raises
with the last lines, enough for a worker's traceback and torchrun's summary after it.
The workers return nothing to us: the main process writes the result to disk and
`result()` reads it back.

`rank()`, `world_size()` and `is_main_process()` answer from the default process group
when one is initialised and otherwise from torchrun's RANK / WORLD_SIZE environment
(a worker before it joins the group; 0 and 1 for a plain process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Lines of a failed multi-process run quoted in the error: enough for a worker's traceback
# and torchrun's failure summary after it.
TAIL_LINES = 80
# Seconds a timed-out launch gets between SIGTERM (torchrun stops its workers) and SIGKILL.
KILL_GRACE_S = 30.0


def rank() -> int:
    """This process's global rank (0 outside a distributed run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of processes of this run (1 outside a distributed run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on global rank 0: the process that writes outputs and logs."""
    return rank() == 0


# Processes a distributed stage starts on this node when it is not already one of
# torchrun's: the cluster profile's `gpus` of the stage (pipelines/cluster.py sets it on
# the task), 1 when unset. The one knob: presets have none.
PROCESSES_ENV = "GENALIGN_PROCESSES"


def stage_processes(distributed: bool) -> int:
    """How many processes a stage should start for its work: 1 when it runs in one
    process (`distributed` False) or already is one of torchrun's (WORLD_SIZE set: a
    TrainJob's pods, or a worker started here), else GENALIGN_PROCESSES (default 1)."""
    if not distributed or "WORLD_SIZE" in os.environ:
        return 1
    text = os.environ.get(PROCESSES_ENV, "1")
    try:
        processes = int(text)
    except ValueError:
        processes = 0
    if processes < 1:
        raise ValueError(f"${PROCESSES_ENV}: expected an integer >= 1, got {text!r}")
    return processes


def torchrun_command(module: str, args: Sequence[str], processes: int) -> list[str]:
    """The command that runs `python -m <module> <args>` in `processes` local workers."""
    if processes < 1:
        raise ValueError(f"processes: expected at least 1, got {processes}")
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(processes),
        "-m", module, *args,
    ]  # fmt: skip


def worker_env() -> dict[str, str]:
    """This environment with OMP_NUM_THREADS=1 unless set (torchrun's default too): N
    workers already share the cores, more threads each only contend."""
    return {"OMP_NUM_THREADS": "1", **os.environ}


def run_relayed(
    cmd: Sequence[str], env: dict[str, str], timeout_s: float | None, *, name: str
) -> None:
    """Run `cmd`, copying its output (stderr merged) to our stdout line by line; raise
    RuntimeError / TimeoutError, prefixed with `name`, with the last TAIL_LINES lines when it
    fails or runs past `timeout_s`."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    # a session of its own: on a timeout the signal reaches torchrun and its workers
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )

    def relay() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    what = " ".join(cmd)
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join()
        raise TimeoutError(
            f"{name}: stopped after {timeout_s} s: {what}\nlast lines:\n{''.join(tail)}"
        ) from None
    reader.join()
    if returncode != 0:
        raise RuntimeError(
            f"{name}: exit status {returncode}: {what}\nlast lines:\n{''.join(tail)}"
        )


def launch(
    processes: int,
    *,
    in_process: Callable[[], T],
    module: str,
    worker_args: Callable[[Path], Sequence[str]],
    result: Callable[[], T],
    name: str,
    timeout_s: float | None = None,
) -> T:
    """`in_process()` for one process; otherwise torchrun runs `module` in `processes`
    workers with `worker_args(scratch)` (a temporary directory that lives until they exit,
    for the files they read) and `result()` reads back what rank 0 wrote."""
    if processes < 1:
        raise ValueError(f"processes: expected at least 1, got {processes}")
    if processes == 1:
        return in_process()
    with tempfile.TemporaryDirectory(prefix=f"{name}-launch-") as scratch:
        cmd = torchrun_command(module, worker_args(Path(scratch)), processes)
        run_relayed(cmd, worker_env(), timeout_s, name=name)
    return result()
