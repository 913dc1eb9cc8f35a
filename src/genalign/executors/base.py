"""The executor protocol and the per-instruction result (the table of executors by name
is `EXECUTORS` in `genalign.executors`).

Every executor has one call, `execute(scene, instruction) -> ExecutionResult`, and never
raises for one bad instruction: an instruction it cannot carry out comes back with
status "failed" and the reason, one that takes too long with status "timeout", and the
caller counts them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare image arrays
class ExecutionResult:
    """The outcome of one instruction. `image` is set exactly when `status` is "ok"."""

    status: Literal["ok", "failed", "timeout"]
    image: np.ndarray | None = None  # uint8 [H, W, 3]
    error: str | None = None
    view: str | None = None  # the view key the instruction parsed to (render-view)
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in ("ok", "failed", "timeout"):
            raise ValueError(f"ExecutionResult: unknown status {self.status!r}")
        if (self.status == "ok") != (self.image is not None):
            raise ValueError(
                f"ExecutionResult: status {self.status!r} with image "
                f"{'set' if self.image is not None else 'None'}"
            )
        if self.status != "ok" and not self.error:
            raise ValueError(f"ExecutionResult: status {self.status!r} needs an error message")


class Executor(Protocol):
    """What the execute stage needs from an executor."""

    name: str

    def execute(self, scene: Any, instruction: str) -> ExecutionResult: ...
