"""Procedural spatial-QA scenes for the planner-dpo tiny preset: the front view hides the answer.

A scene is 3-6 coloured primitives ("red cube", "blue sphere", "green cylinder"; every
object its own colour) and one multiple-choice question about a relation to a reference
object X. The answer object is placed so the front camera cannot show it, and the scene
is built so that a known set of viewpoints does (`reveal_views`). Which views those are
depends on the question, with little overlap between question types, so a planner has
to read the question to choose a view:

| question | layout | revealing views |
|---|---|---|
| behind: "What is directly behind the X?" | a small object right behind a tall X, a tall blocker on each side of it, a canopy over it | back, back-high, back-low |
| left_of: "What is directly to the left of the X?" | a small object beside a tall X, a tall blocker in front of it and one behind it, a canopy over it | left, left-high, left-low |
| right_of: "What is directly to the right of the X?" | the mirror image of left_of | right, right-high, right-low |
| above: "What is on top of the X?" | a flat disc (cylinder) on X's top | top and the four high-angle views (they look down on X's top) |

The canopy is a thin wide disc (radius 0.42-0.48, 0.04 thick) floating 0.06-0.12 above
the tallest object under it (its top stays below 1.2): the straight-down top camera
cannot see the answer under it, eye-level, low and 35-degree views see under its rim.
Zoom instructions keep the front camera's eye, so they never reveal.

Measured on 200 scenes (50 of each type, seed 11: tests/unit/test_executor_oracle.py): a
high-angle view from the back, left or right reveals 50% of the answers (its own type
and 'above'); back, back-low, left, left-low, right, right-low, top and front-high 25%
(one type each); front and front-low none. A uniformly random instruction of the
vocabulary (13 views and a zoom in and out on each object) reveals 15%; the
question-aware choice (behind: back, left_of: left, right_of: right, above: top) 100%.

Every draw is checked with the scene oracle's rule (`genalign.data.scene_views`, which
`genalign.scorers.scene_oracle` scores with) over every view of the vocabulary, with a
margin (it must hold for thresholds well below and above the defaults), and redrawn
until it matches its design. The four options are the answer, one or two other objects
of the scene that do not stand in the relation, and names of absent objects; blockers
and canopies are never options (they stand near the relation).

    >>> from genalign.data.spatial_scenes import make_spatial_samples
    >>> rows = make_spatial_samples(100, seed=0, out_dir=Path("data"))  # writes scenes/, images/
    >>> rows[0]["question"], rows[0]["options"], rows[0]["answer"]

Deterministic: sample i depends only on (seed, i), so the first 10 of 100 samples are
the 10 samples of `make_spatial_samples(10, seed, ...)`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from genalign.config.planner_world import QUESTION_TYPES, OracleConfig, SpatialDataConfig
from genalign.data.scene_views import (
    decide,
    instruction_vocabulary,
    parse_instruction,
    view_evidence,
)
from genalign.render.parts_image import save_png
from genalign.render.scenes import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    VIEWS,
    SceneObject,
    render_scene,
    view_camera,
)
from genalign.storage import atomic_write_json

SCENE_SCHEMA = 1
LETTERS = "ABCD"
# The scene stays inside this square so every view frames every object.
_HALF_WORLD = 1.3
# Behind and beside designs hold 5 objects and get one free distractor for the options;
# more would slow the rejection sampler (each object adds two zoom views to check).
_MAX_OBJECTS = 6


class SceneError(ValueError):
    """A scene file that does not match the schema; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class SpatialQuestion:
    """A multiple-choice question about the relation of `answer_object` to `reference`."""

    type: str  # behind | left_of | right_of | above
    text: str
    reference: str  # object name, e.g. "red cube"
    answer_object: str
    options: tuple[str, ...]  # "A. blue sphere", ...
    answer: str  # the letter of answer_object


@dataclasses.dataclass(frozen=True)
class SpatialScene:
    """Objects, the question, and the views designed (and checked) to reveal its answer."""

    id: str
    objects: tuple[SceneObject, ...]
    question: SpatialQuestion
    reveal_views: tuple[str, ...]

    @property
    def object_names(self) -> list[str]:
        return [o.name for o in self.objects]

    def object(self, name: str) -> SceneObject:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"scene {self.id}: no object {name!r}; objects: {self.object_names}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCENE_SCHEMA,
            "id": self.id,
            "objects": [
                {
                    "name": o.name,
                    "color": o.color,
                    "shape": o.shape,
                    "center": list(o.center),
                    "half_extents": list(o.half_extents),
                }
                for o in self.objects
            ],
            "question": {
                **dataclasses.asdict(self.question),
                "options": list(self.question.options),
            },
            "reveal_views": list(self.reveal_views),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "scene") -> SpatialScene:
        def need(obj: Any, key: str, kind: type | tuple[type, ...], at: str) -> Any:
            if not isinstance(obj, dict) or key not in obj:
                raise SceneError(f"{at}: missing field {key!r}")
            if not isinstance(obj[key], kind):
                raise SceneError(f"{at}.{key}: expected {kind}, got {obj[key]!r}")
            return obj[key]

        if need(d, "schema", int, where) != SCENE_SCHEMA:
            raise SceneError(f"{where}.schema: expected {SCENE_SCHEMA}, got {d['schema']!r}")
        objects = []
        for i, o in enumerate(need(d, "objects", list, where)):
            at = f"{where}.objects[{i}]"
            try:
                obj = SceneObject(
                    color=need(o, "color", str, at),
                    shape=need(o, "shape", str, at),
                    center=tuple(float(v) for v in need(o, "center", list, at)),
                    half_extents=tuple(float(v) for v in need(o, "half_extents", list, at)),
                )
            except (TypeError, ValueError) as e:
                raise SceneError(f"{at}: {e}") from e
            if need(o, "name", str, at) != obj.name:
                raise SceneError(
                    f"{at}.name: {o['name']!r} does not match colour and shape ({obj.name!r})"
                )
            objects.append(obj)
        q = need(d, "question", dict, where)
        at = f"{where}.question"
        question = SpatialQuestion(
            type=need(q, "type", str, at),
            text=need(q, "text", str, at),
            reference=need(q, "reference", str, at),
            answer_object=need(q, "answer_object", str, at),
            options=tuple(need(q, "options", list, at)),
            answer=need(q, "answer", str, at),
        )
        names = [o.name for o in objects]
        if len(set(names)) != len(names):
            raise SceneError(f"{where}.objects: object names repeat: {names}")
        if question.type not in QUESTION_TYPES:
            raise SceneError(
                f"{at}.type: expected one of {list(QUESTION_TYPES)}, got {question.type!r}"
            )
        letters = list(LETTERS[: len(question.options)])
        if question.answer not in letters:
            raise SceneError(f"{at}.answer: expected one of {letters}, got {question.answer!r}")
        for key in ("reference", "answer_object"):
            if getattr(question, key) not in names:
                raise SceneError(
                    f"{at}.{key}: {getattr(question, key)!r} is not an object of the scene {names}"
                )
        views = need(d, "reveal_views", list, where)
        unknown = [v for v in views if v not in VIEWS]
        if unknown:
            raise SceneError(f"{where}.reveal_views: unknown views {unknown}; valid: {list(VIEWS)}")
        return cls(
            id=need(d, "id", str, where),
            objects=tuple(objects),
            question=question,
            reveal_views=tuple(views),
        )


def load_scene(path: Path) -> SpatialScene:
    """Read a scene JSON file written by `make_spatial_samples`."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SceneError(f"{path}: scene file not found") from None
    except json.JSONDecodeError as e:
        raise SceneError(f"{path}: not JSON ({e})") from None
    return SpatialScene.from_dict(data, where=str(path))


# ---------------------------------------------------------------- drawing objects
# Sizes are half extents in world units; the cameras frame +-1.7 at the scene centre.


@dataclasses.dataclass
class _Draft:
    """A scene under construction: objects without colours yet, and its design."""

    qtype: str
    shapes: list[tuple[str, tuple[float, float, float], tuple[float, float, float]]]
    reference: int  # index into shapes
    answer: int
    blockers: list[int]  # and the canopy: never options
    reveal_views: set[str]


def _family(direction: str) -> set[str]:
    return {direction, f"{direction}-high", f"{direction}-low"}


def _on_floor(shape: str, x: float, z: float, half: float, half_h: float | None = None):
    he = (half, half_h if shape == "cylinder" else half, half)
    return (shape, (x, he[1], z), he)


def _big(rng: np.random.Generator, x: float, z: float, lo: float = 0.38, hi: float = 0.48):
    """A tall occluder or reference: cube or cylinder, 0.76-1.0 high."""
    shape = str(rng.choice(["cube", "cylinder"]))
    half = rng.uniform(lo, hi)
    return _on_floor(shape, x, z, half, rng.uniform(0.4, 0.5))


def _small(rng: np.random.Generator):
    """(shape, half, half_h) of a hidden answer: at most 0.4 high, 0.4 wide."""
    shape = str(rng.choice(SHAPES))
    if shape == "sphere":
        return shape, rng.uniform(0.14, 0.2), None
    if shape == "cube":
        return shape, rng.uniform(0.13, 0.19), None
    return shape, rng.uniform(0.13, 0.18), rng.uniform(0.13, 0.2)


def _canopy(rng: np.random.Generator, hidden, below: list):
    """A thin wide disc over `hidden`, 0.06-0.12 above the tallest shape of `below` under it.

    It hides `hidden` (at most 0.4 high) from the top camera, which looks straight down.
    Under it stands a tall X (0.76 high at least), so the disc is 0.4 or more above the
    hidden top: a ray from a 35-degree eye meets that height 0.6 further out, past the
    rim (the disc's radius is at most 0.52 from the hidden centre, the hidden top's
    near edge 0.2); eye-level and low rays stay below the disc.
    """
    r = rng.uniform(0.42, 0.48)
    h = 0.02
    cx = hidden[1][0] + rng.uniform(-0.04, 0.04)
    cz = hidden[1][2] + rng.uniform(-0.04, 0.04)
    disc = ("cylinder", (cx, 0.0, cz), (r, h, r))
    under = [s for s in below if not _apart(disc, s, 0.0)]
    bottom = max(s[1][1] + s[2][1] for s in under) + rng.uniform(0.06, 0.12)
    return ("cylinder", (cx, bottom + h, cz), (r, h, r))


def _behind(rng: np.random.Generator) -> _Draft:
    # X near the middle: the blockers span up to 2.4 across it, and the canopy over Y
    # reaches 0.5 behind Y, all inside the square.
    x = _big(rng, rng.uniform(-0.2, 0.2), rng.uniform(0.1, 0.5))
    shape, half, half_h = _small(rng)
    yx = x[1][0] + rng.uniform(-0.08, 0.08)
    yz = x[1][2] - x[2][2] - rng.uniform(0.05, 0.15) - half
    y = _on_floor(shape, yx, yz, half, half_h)
    shapes = [x, y]
    # A blocker on each side; its front face is no nearer to X than Y's, so from the
    # side it covers Y's whole depth, and it stays clear of X.
    for sign in (-1.0, 1.0):
        b_half = rng.uniform(0.3, 0.4)
        bz = x[1][2] - x[2][2] - rng.uniform(0.03, 0.05) - b_half
        bx = yx + sign * (half + rng.uniform(0.06, 0.15) + b_half)
        shapes.append(_big(rng, bx, bz, b_half, b_half))
    shapes.append(_canopy(rng, y, shapes))
    return _Draft(
        "behind", shapes, reference=0, answer=1, blockers=[2, 3, 4], reveal_views=_family("back")
    )


def _beside(qtype: str, rng: np.random.Generator) -> _Draft:
    side = "left" if qtype == "left_of" else "right"
    sign = -1.0 if side == "left" else 1.0
    # X near the middle in depth: with a blocker in front and one behind, the row is up
    # to 2.8 deep, and the draws deeper than the square (2.6) are redrawn.
    x = _big(rng, -sign * rng.uniform(0.15, 0.35), rng.uniform(-0.2, 0.1))
    shape, half, half_h = _small(rng)
    yx = x[1][0] + sign * (x[2][0] + rng.uniform(0.05, 0.15) + half)
    yz = x[1][2] + rng.uniform(-0.08, 0.08)
    y = _on_floor(shape, yx, yz, half, half_h)
    # The blockers in front and behind stand clear of X's front and back faces too.
    w_half = rng.uniform(0.32, 0.42)
    wz = max(yz + half, x[1][2] + x[2][2]) + rng.uniform(0.05, 0.12) + w_half
    w = _big(rng, yx + rng.uniform(-0.06, 0.06), wz, w_half, w_half)
    v_half = rng.uniform(0.3, 0.38)
    vz = min(yz - half, x[1][2] - x[2][2]) - rng.uniform(0.05, 0.12) - v_half
    v = _big(rng, yx + rng.uniform(-0.06, 0.06), vz, v_half, v_half)
    shapes = [x, y, w, v]
    shapes.append(_canopy(rng, y, shapes))
    return _Draft(
        qtype, shapes, reference=0, answer=1, blockers=[2, 3, 4], reveal_views=_family(side)
    )


def _above(rng: np.random.Generator) -> _Draft:
    # X's top (0.6-0.9) is above the eye-level eye (0.45), which then sees only the thin
    # rim of the disc, mostly behind X's front edge.
    shape = str(rng.choice(["cube", "cylinder"]))
    half = rng.uniform(0.3, 0.42)
    x = _on_floor(
        shape, rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), half, rng.uniform(0.3, 0.45)
    )
    r = rng.uniform(0.14, min(0.26, half - 0.08))
    h = rng.uniform(0.015, 0.03)
    slack = (half - r) * 0.4
    top = x[1][1] + x[2][1]
    y = (
        "cylinder",
        (x[1][0] + rng.uniform(-slack, slack), top + h, x[1][2] + rng.uniform(-slack, slack)),
        (r, h, r),
    )
    views = {"top"} | {f"{d}-high" for d in DIRECTIONS}
    return _Draft("above", [x, y], reference=0, answer=1, blockers=[], reveal_views=views)


_DESIGNS: dict[str, Callable[[np.random.Generator], _Draft]] = {
    "behind": _behind,
    "left_of": lambda rng: _beside("left_of", rng),
    "right_of": lambda rng: _beside("right_of", rng),
    "above": _above,
}


def _box(s) -> tuple[float, float, float, float]:
    """xz bounds (x0, x1, z0, z1) of a drawn shape."""
    (_, c, he) = s
    return c[0] - he[0], c[0] + he[0], c[2] - he[2], c[2] + he[2]


def _inside_world(s) -> bool:
    x0, x1, z0, z1 = _box(s)
    return max(-x0, x1, -z0, z1) <= _HALF_WORLD


def _apart(a, b, margin: float) -> bool:
    ax0, ax1, az0, az1 = _box(a)
    bx0, bx1, bz0, bz1 = _box(b)
    return ax1 + margin < bx0 or bx1 + margin < ax0 or az1 + margin < bz0 or bz1 + margin < az0


def _solid(draft: _Draft) -> bool:
    """No two designed objects interpenetrate (the disc of an 'above' scene rests on X, a
    canopy floats above what it covers)."""
    for i, (_, a, ah) in enumerate(draft.shapes):
        for _, b, bh in draft.shapes[i + 1 :]:
            gap = max(abs(a[k] - b[k]) - ah[k] - bh[k] for k in range(3))
            if gap < -1e-9:
                return False
    return True


def _near_relation(qtype: str, s, ref) -> bool:
    """Whether a free object stands anywhere near the question's relation to `ref`."""
    (_, c, he), (_, rc, rhe) = s, ref
    reach_x, reach_z = rhe[0] + he[0] + 0.2, rhe[2] + he[2] + 0.2
    if qtype == "behind":
        return c[2] < rc[2] and abs(c[0] - rc[0]) < reach_x
    if qtype == "left_of":
        return c[0] < rc[0] and abs(c[2] - rc[2]) < reach_z
    if qtype == "right_of":
        return c[0] > rc[0] and abs(c[2] - rc[2]) < reach_z
    return False  # above: free objects stand on the floor, never on X


def _free_object(rng: np.random.Generator):
    shape = str(rng.choice(SHAPES))
    half = rng.uniform(0.15, 0.28)
    s = _on_floor(
        shape, rng.uniform(-1.1, 1.1), rng.uniform(-1.1, 1.1), half, rng.uniform(0.15, 0.35)
    )
    return s


# The generator's margin: a view must give the same answer under both of these, so the
# oracle's defaults (between them) never sit on a borderline case.
_LENIENT = OracleConfig(
    min_visible_fraction=0.3,
    min_visible_pixels=2,
    min_reference_fraction=0.1,
    min_above_elevation_deg=15.0,
)
_STRICT = OracleConfig(
    min_visible_fraction=0.7,
    min_visible_pixels=8,
    min_reference_fraction=0.3,
    min_above_elevation_deg=25.0,
)


def _matches_design(scene: SpatialScene) -> bool:
    for instruction in instruction_vocabulary(scene.object_names):
        view = parse_instruction(instruction)
        ev = view_evidence(scene, view, _STRICT.resolution)
        want = view in scene.reveal_views
        for cfg in (_LENIENT, _STRICT):
            if decide(ev, scene.question.type, cfg) != want:
                return False
    return True


def _question(
    draft: _Draft, names: list[str], free: list[int], rng: np.random.Generator
) -> SpatialQuestion:
    ref, ans = names[draft.reference], names[draft.answer]
    text = {
        "behind": f"What is directly behind the {ref}?",
        "left_of": f"What is directly to the left of the {ref}?",
        "right_of": f"What is directly to the right of the {ref}?",
        "above": f"What is on top of the {ref}?",
    }[draft.qtype]
    in_scene = [names[i] for i in free]
    n_scene = min(len(in_scene), int(rng.integers(1, 3)))
    picked = [in_scene[i] for i in rng.permutation(len(in_scene))[:n_scene]]
    absent = sorted(f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in names)
    picked += [absent[i] for i in rng.permutation(len(absent))[: 3 - n_scene]]
    choices = [ans, *picked]
    order = rng.permutation(len(choices))
    options = tuple(f"{LETTERS[k]}. {choices[i]}" for k, i in enumerate(order))
    answer = LETTERS[int(np.flatnonzero(order == 0)[0])]
    return SpatialQuestion(draft.qtype, text, ref, ans, options, answer)


def make_scene(index: int, seed: int, cfg: SpatialDataConfig | None = None) -> SpatialScene:
    """Sample `index` of the stream `seed`: its question kind is question_types[index % n]."""
    cfg = cfg or SpatialDataConfig()
    qtype = cfg.question_types[index % len(cfg.question_types)]
    rng = np.random.default_rng([seed, index])
    scene_id = f"spatial-{seed}-{index:05d}"
    for _ in range(cfg.max_tries):
        draft = _DESIGNS[qtype](rng)
        if not all(_inside_world(s) for s in draft.shapes) or not _solid(draft):
            continue
        n_free = int(
            rng.integers(1, min(cfg.max_distractors, _MAX_OBJECTS - len(draft.shapes)) + 1)
        )
        for _ in range(n_free):
            for _ in range(50):
                s = _free_object(rng)
                # Apart from every designed object's footprint, the canopy's included,
                # so no distractor stands under the canopy.
                if (
                    _inside_world(s)
                    and all(_apart(s, o, 0.1) for o in draft.shapes)
                    and not (_near_relation(qtype, s, draft.shapes[draft.reference]))
                ):
                    draft.shapes.append(s)
                    break
        if len(draft.shapes) < 3:
            continue
        colors = [str(c) for c in rng.permutation(sorted(COLORS))]
        objects = tuple(
            SceneObject(colors[i], shape, tuple(float(v) for v in c), tuple(float(v) for v in he))
            for i, (shape, c, he) in enumerate(draft.shapes)
        )
        names = [o.name for o in objects]
        free = [
            i
            for i in range(len(objects))
            if i not in (draft.reference, draft.answer, *draft.blockers)
        ]
        question = _question(draft, names, free, rng)
        views = tuple(v for v in VIEWS if v in draft.reveal_views)
        scene = SpatialScene(scene_id, objects, question, views)
        if _matches_design(scene):
            return scene
    raise RuntimeError(
        f"{scene_id}: no {qtype!r} scene matched its design in {cfg.max_tries} "
        f"draws; raise max_tries or check the scene designs"
    )


def make_spatial_samples(
    n: int, seed: int, out_dir: Path, cfg: SpatialDataConfig | None = None
) -> list[dict[str, Any]]:
    """Generate `n` samples: writes scenes/<id>.json and images/<id>_front.png under out_dir.

    Returns the rows (MMSI-Bench-like): {id, images, question, options, answer,
    question_type, meta: {scene}}, paths relative to out_dir.
    """
    cfg = cfg or SpatialDataConfig()
    out_dir = Path(out_dir)
    rows = []
    for i in range(n):
        scene = make_scene(i, seed, cfg)
        scene_rel, image_rel = f"scenes/{scene.id}.json", f"images/{scene.id}_front.png"
        atomic_write_json(out_dir / scene_rel, scene.to_dict())
        img = render_scene(
            scene.objects, view_camera("front"), cfg.image_size, supersample=cfg.supersample
        )
        save_png(img, out_dir / image_rel)
        rows.append(
            {
                "id": scene.id,
                "images": [image_rel],
                "question": scene.question.text,
                "options": list(scene.question.options),
                "answer": scene.question.answer,
                "question_type": scene.question.type,
                "meta": {"scene": scene_rel},
            }
        )
    return rows
