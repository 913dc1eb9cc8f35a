"""Executors: turn one planner instruction ("view from the back") into an image.

Every executor has one call, `execute(scene, instruction) -> ExecutionResult`, and never
raises for one bad instruction: an instruction it cannot carry out comes back with
status "failed" and the reason, one that takes too long with status "timeout", and the
caller counts them. Look one up by name in the explicit table `EXECUTORS`:

    >>> from genalign.executors import get_executor
    >>> ex = get_executor("render-view", {"image_size": 56})
    >>> result = ex.execute(scene, "view from the top")  # result.image: uint8 [56, 56, 3]

| name | does | where |
|---|---|---|
| `render-view` | renders the synthetic scene (`genalign.data.spatial_scenes`) from the viewpoint the instruction names; CPU, milliseconds | `executors/render_view.py` |

The generative executor of real data (Flux.2 Klein through diffusers, on a GPU, editing
the sample's input images as the instruction asks) joins this table under its own name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np

from genalign.config.planner_world import ExecutorConfig


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


def _render_view(cfg: ExecutorConfig) -> Executor:
    from genalign.executors.render_view import RenderViewExecutor

    return RenderViewExecutor(cfg)


EXECUTORS: dict[str, Callable[[ExecutorConfig], Executor]] = {
    "render-view": _render_view,
}


def get_executor(name: str, cfg: ExecutorConfig | dict[str, Any] | None = None) -> Executor:
    """Build the executor called `name` from its config (a dict is checked strictly)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; valid executors are {sorted(EXECUTORS)}")
    if not isinstance(cfg, ExecutorConfig):
        cfg = ExecutorConfig.from_dict(cfg or {})
    return EXECUTORS[name](cfg)


__all__ = ["EXECUTORS", "ExecutionResult", "Executor", "get_executor"]
