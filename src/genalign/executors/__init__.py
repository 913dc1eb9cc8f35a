"""Executors: turn one planner instruction ("view from the back") into an image.

Every executor has one call, `execute(scene, instruction) -> ExecutionResult`, and never
raises for one bad instruction: an instruction it cannot carry out comes back with
status "failed" and the reason, one that takes too long with status "timeout", and the
caller counts them (the protocol and the result type are in `genalign.executors.base`,
which the executor modules import). Look one up by name in the explicit table `EXECUTORS`:

    >>> from genalign.executors import get_executor
    >>> ex = get_executor("render-view", {"image_size": 56})
    >>> result = ex.execute(scene, "view from the top")  # result.image: uint8 [56, 56, 3]

| name | config | does | where |
|---|---|---|---|
| `render-view` | `ExecutorConfig` | renders the synthetic scene (`genalign.data.spatial_scenes`) from the viewpoint the instruction names; CPU, milliseconds | `executors/render_view.py` |
| `diffusers-edit` | `DiffusersEditConfig` | edits the real-data row's input image as the instruction asks with a diffusers pipeline (Flux.2 Klein); GPU, about a second | `executors/diffusers_edit.py` |

`get_executor` takes each executor's own config class, or a dict checked strictly
against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from genalign.config.base import Config, ConfigError
from genalign.config.diffusers_edit import DiffusersEditConfig
from genalign.config.planner_world import ExecutorConfig
from genalign.executors.base import ExecutionResult, Executor


def _render_view(cfg: ExecutorConfig) -> Executor:
    from genalign.executors.render_view import RenderViewExecutor

    return RenderViewExecutor(cfg)


def _diffusers_edit(cfg: DiffusersEditConfig) -> Executor:
    from genalign.executors.diffusers_edit import DiffusersEditExecutor

    return DiffusersEditExecutor(cfg)


class ExecutorEntry(NamedTuple):
    """An executor's config class and the function that builds it from that config."""

    config: type[Config]
    build: Callable[[Any], Executor]


EXECUTORS: dict[str, ExecutorEntry] = {
    "render-view": ExecutorEntry(ExecutorConfig, _render_view),
    "diffusers-edit": ExecutorEntry(DiffusersEditConfig, _diffusers_edit),
}


def get_executor(name: str, cfg: Config | dict[str, Any] | None = None) -> Executor:
    """Build the executor called `name` from its config (a dict is checked strictly)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; valid executors are {sorted(EXECUTORS)}")
    entry = EXECUTORS[name]
    if cfg is None or isinstance(cfg, dict):
        cfg = entry.config.from_dict(cfg or {})
    elif not isinstance(cfg, entry.config):
        raise ConfigError(
            f"executor {name!r} takes a {entry.config.__name__} or a dict, "
            f"got a {type(cfg).__name__}"
        )
    return entry.build(cfg)


__all__ = ["EXECUTORS", "ExecutionResult", "Executor", "ExecutorEntry", "get_executor"]
