"""The tiny preset's executor: render the synthetic scene from the viewpoint an instruction names.

The instruction vocabulary ("view from the back", "view from the left at a high angle",
"zoom in on the red cube") is defined in `genalign.data.scene_views`; each instruction
parses to a view key of `genalign.render.scenes`. Anything outside it, or a zoom on an
object the scene does not hold, is a failed execution with the reason; a render slower
than `timeout_s` is a timeout.

    >>> from genalign.config.planner_world import ExecutorConfig
    >>> from genalign.executors.render_view import RenderViewExecutor
    >>> RenderViewExecutor(ExecutorConfig()).execute(scene, "view from the back").status
    'ok'
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from genalign.config.planner_world import ExecutorConfig
from genalign.data.scene_views import InstructionError, parse_instruction
from genalign.executors.base import ExecutionResult
from genalign.render.scenes import render_scene, view_camera

if TYPE_CHECKING:
    from genalign.data.spatial_scenes import SpatialScene


class RenderViewExecutor:
    """Renders `scene` from the instruction's viewpoint with `genalign.render.scenes`."""

    name = "render-view"

    def __init__(self, cfg: ExecutorConfig):
        self.cfg = cfg

    def execute(self, scene: SpatialScene, instruction: str) -> ExecutionResult:
        start = time.perf_counter()
        try:
            view = parse_instruction(instruction, scene.object_names)
        except InstructionError as e:
            return ExecutionResult("failed", error=str(e), elapsed_s=time.perf_counter() - start)
        # The render runs in a daemon thread so a slow call can be abandoned at the limit;
        # numpy cannot be interrupted, so an abandoned render finishes in the background.
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                cam = view_camera(view, scene.objects)
                box["image"] = render_scene(
                    scene.objects, cam, self.cfg.image_size, supersample=self.cfg.supersample
                )
            except Exception as e:  # noqa: BLE001 -- reported as a failed execution, never raised
                box["error"] = f"{type(e).__name__}: {e}"

        thread = threading.Thread(target=work, name=f"render-view {view}", daemon=True)
        thread.start()
        thread.join(self.cfg.timeout_s)
        elapsed = time.perf_counter() - start
        if thread.is_alive():
            return ExecutionResult(
                "timeout",
                error=f"rendering {view!r} took longer than {self.cfg.timeout_s} s",
                view=view,
                elapsed_s=elapsed,
            )
        if "error" in box:
            return ExecutionResult("failed", error=box["error"], view=view, elapsed_s=elapsed)
        return ExecutionResult("ok", image=box["image"], view=view, elapsed_s=elapsed)
