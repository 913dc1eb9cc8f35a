"""Views of the synthetic spatial scenes: the instruction vocabulary that names them, and
what a view shows of a question's answer (the scene oracle's rule).

The instruction vocabulary (what the planner's warm-start data uses and the render-view
executor understands; case, surrounding whitespace and a final full stop are ignored):

    view from the {front|back|left|right|top}
    view from the {front|back|left|right} at a {high|low} angle
    zoom {in|out} on the <object name>          e.g. "zoom in on the red cube"

Each parses to a view key of `genalign.render.scenes` ("back", "left-high",
"zoom-in:red cube").

A view reveals the answer of a question when `decide` says so on its `view_evidence`
(the rule is spelled out in `genalign.scorers.scene_oracle`). The scene generator
(`genalign.data.spatial_scenes`) checks its designs with the very rule the oracle
scores with, so the rule lives with the scenes and the oracle imports it.

    >>> from genalign.data.scene_views import decide, parse_instruction, view_evidence
    >>> ev = view_evidence(scene, parse_instruction("view from the back"), 64)
    >>> decide(ev, scene.question.type, OracleConfig())
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from genalign.config.planner_world import OracleConfig
from genalign.render.scenes import DIRECTIONS, camera_eye, view_camera, visibility

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


@dataclasses.dataclass(frozen=True)
class ViewEvidence:
    """What a view shows of a question's answer and reference objects."""

    view: str
    answer_visible_px: int
    answer_alone_px: int
    reference_visible_px: int
    reference_alone_px: int
    elevation_deg: float  # how far below the eye's horizon the answer object's centre is

    @property
    def answer_fraction(self) -> float:
        return self.answer_visible_px / self.answer_alone_px if self.answer_alone_px else 0.0

    @property
    def reference_fraction(self) -> float:
        return (
            self.reference_visible_px / self.reference_alone_px if self.reference_alone_px else 0.0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "answer_fraction": round(self.answer_fraction, 4),
            "answer_visible_px": self.answer_visible_px,
            "reference_fraction": round(self.reference_fraction, 4),
            "elevation_deg": round(self.elevation_deg, 2),
        }


def view_evidence(scene: SpatialScene, view: str, resolution: int) -> ViewEvidence:
    """Visibility of the answer and reference objects of `scene` from the view key `view`."""
    names = scene.object_names
    answer = names.index(scene.question.answer_object)
    reference = names.index(scene.question.reference)
    cam = view_camera(view, scene.objects)
    (ans_visible, ans_alone), (ref_visible, ref_alone) = visibility(
        scene.objects, cam, resolution, of=(answer, reference)
    )
    off = camera_eye(cam) - np.asarray(scene.objects[answer].center)
    elevation = math.degrees(math.asin(off[1] / float(np.linalg.norm(off))))
    return ViewEvidence(
        view=view,
        answer_visible_px=int(ans_visible),
        answer_alone_px=int(ans_alone),
        reference_visible_px=int(ref_visible),
        reference_alone_px=int(ref_alone),
        elevation_deg=elevation,
    )


def decide(evidence: ViewEvidence, question_type: str, cfg: OracleConfig) -> bool:
    """Whether the view reveals the answer (the rule in `genalign.scorers.scene_oracle`)."""
    visible = (
        evidence.answer_fraction >= cfg.min_visible_fraction
        and evidence.answer_visible_px >= cfg.min_visible_pixels
    )
    observable = evidence.reference_fraction >= cfg.min_reference_fraction
    if question_type == "above":
        observable = observable and evidence.elevation_deg >= cfg.min_above_elevation_deg
    return visible and observable
