"""The tiny preset's executor: render the synthetic scene from the viewpoint an instruction names.

The instruction vocabulary (what the planner's warm-start data uses and this executor
understands; case, surrounding whitespace and a final full stop are ignored):

    view from the {front|back|left|right|top}
    view from the {front|back|left|right} at a {high|low} angle
    zoom {in|out} on the <object name>          e.g. "zoom in on the red cube"

Each parses to a view key of `genalign.render.scenes` ("back", "left-high",
"zoom-in:red cube"). Anything else, or a zoom on an object the scene does not hold,
is a failed execution with the reason; a render slower than `timeout_s` is a timeout.

    >>> from genalign.config.planner_world import ExecutorConfig
    >>> from genalign.executors.render_view import RenderViewExecutor
    >>> RenderViewExecutor(ExecutorConfig()).execute(scene, "view from the back").status
    'ok'
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from genalign.config.planner_world import ExecutorConfig
from genalign.executors import ExecutionResult
from genalign.render.scenes import DIRECTIONS, render_scene, view_camera

if TYPE_CHECKING:
    from genalign.data.spatial_scenes import SpatialScene

_VIEW_RE = re.compile(r"view from the (front|back|left|right|top)")
_ANGLE_RE = re.compile(r"view from the (front|back|left|right) at a (high|low) angle")
_ZOOM_RE = re.compile(r"zoom (in|out) on the ([a-z]+ [a-z]+)")
FORMS = (
    "view from the {front|back|left|right|top}",
    "view from the {front|back|left|right} at a {high|low} angle",
    "zoom {in|out} on the <object name>",
)


class InstructionError(ValueError):
    """An instruction outside the vocabulary, or naming an object the scene lacks."""


def _normalise(text: str) -> str:
    text = " ".join(text.strip().lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def parse_instruction(text: str, object_names: Iterable[str] | None = None) -> str:
    """The view key of an instruction. Raises InstructionError with the reason.

    With `object_names`, a zoom must name one of them.
    """
    norm = _normalise(text)
    if m := _VIEW_RE.fullmatch(norm):
        return m.group(1)
    if m := _ANGLE_RE.fullmatch(norm):
        return f"{m.group(1)}-{m.group(2)}"
    if m := _ZOOM_RE.fullmatch(norm):
        zoom, name = m.groups()
        if object_names is not None and name not in set(object_names):
            raise InstructionError(
                f"instruction {text!r}: the scene has no {name!r}; its "
                f"objects are {sorted(object_names)}"
            )
        return f"zoom-{zoom}:{name}"
    raise InstructionError(
        f"instruction {text!r} is not in the vocabulary; expected one of {list(FORMS)}"
    )


def instruction_for(view: str) -> str:
    """The canonical instruction of a view key (the inverse of `parse_instruction`)."""
    if view.startswith("zoom-"):
        zoom, _, name = view[len("zoom-") :].partition(":")
        return f"zoom {zoom} on the {name}"
    direction, _, angle = view.partition("-")
    return f"view from the {direction}" + (f" at a {angle} angle" if angle else "")


def instruction_vocabulary(object_names: Iterable[str]) -> list[str]:
    """Every instruction the executor understands for a scene with these objects, in order."""
    views = [f"view from the {d}" for d in (*DIRECTIONS, "top")]
    angles = [f"view from the {d} at a {a} angle" for d in DIRECTIONS for a in ("high", "low")]
    zooms = [f"zoom {z} on the {name}" for name in object_names for z in ("in", "out")]
    return views + angles + zooms


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
