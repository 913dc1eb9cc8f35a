"""Procedural furniture-like objects made of 2-8 box and cylinder parts.

Each category builds an object from continuous random dimensions so the part DiT has
a varied but learnable distribution to fit. Parts of an object touch face to face and
never overlap: every contact is built by placing one part's face exactly on another's
(a leg's top on a table top's underside, a shelf board's end on a side's inner face).
Objects are built standing on y = 0, turned about +y by an optional yaw, then moved so
they rest on y = -1 centred in x and z, and shrunk only if needed to fit [-1, 1]^3.

    >>> from genalign.data.parts import make_objects
    >>> objs = make_objects(100, seed=0)  # deterministic; objs[:10] == make_objects(10, 0)

Categories and part counts: table 5, chair 6 or 8, stool 4-5, shelf 4-6, bench 3-4,
lamp 3-4, cabinet 2-5, bed 6-8.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from genalign.models.part_codec import PartParams


@dataclass(frozen=True)
class ObjectSpec:
    """One ground-truth object: its parts in a fixed, category-defined order."""

    id: str
    category: str
    parts: tuple[PartParams, ...]


def _box(
    cx: float, cy: float, cz: float, hx: float, hy: float, hz: float, yaw: float = 0.0
) -> PartParams:
    return PartParams("box", (cx, cy, cz), (hx, hy, hz), yaw)


def _cyl(cx: float, cy: float, cz: float, r: float, hy: float) -> PartParams:
    return PartParams("cylinder", (cx, cy, cz), (r, hy, r), 0.0)


def _post(kind: str, cx: float, cy: float, cz: float, half: float, hy: float, yaw=0.0):
    """A leg or post: a square box or a round cylinder of half thickness `half`."""
    if kind == "box":
        return _box(cx, cy, cz, half, hy, half, yaw)
    return _cyl(cx, cy, cz, half, hy)


def _kind(rng) -> str:
    return "box" if rng.random() < 0.5 else "cylinder"


def _legs_under(rng, top_y: float, hx: float, hz: float, n_half: float, kind: str):
    """Four legs from the floor to `top_y`, inset under a rectangle of half size hx, hz."""
    inset = rng.uniform(0.0, 0.4) * min(hx, hz) * 0.5
    lx, lz = hx - n_half - inset, hz - n_half - inset
    hy = top_y / 2
    return [_post(kind, sx * lx, hy, sz * lz, n_half, hy) for sx in (-1, 1) for sz in (-1, 1)]


def _table(rng) -> list[PartParams]:
    w, d = rng.uniform(0.5, 0.95), rng.uniform(0.3, 0.7)
    height, t = rng.uniform(0.6, 1.3), rng.uniform(0.03, 0.07)
    leg = rng.uniform(0.03, 0.07)
    kind = _kind(rng)
    top = _box(0.0, height - t, 0.0, w, t, d)
    return [top, *_legs_under(rng, height - 2 * t, w, d, leg, kind)]


def _chair(rng) -> list[PartParams]:
    w, d = rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6)
    seat_y, t = rng.uniform(0.6, 1.0), rng.uniform(0.03, 0.06)
    leg = rng.uniform(0.03, 0.06)
    kind = _kind(rng)
    seat_top = seat_y + t
    parts = [_box(0.0, seat_y, 0.0, w, t, d), *_legs_under(rng, seat_y - t, w, d, leg, kind)]
    back_h = rng.uniform(0.25, 0.45)  # half height of the back
    if rng.random() < 0.5:
        bt = rng.uniform(0.025, 0.05)
        parts.append(_box(0.0, seat_top + back_h, -d + bt, w, back_h, bt))
    else:
        # Two posts on the seat's back corners and a rail spanning between them.
        pw = rng.uniform(0.025, 0.05)
        post_z = -d + pw
        for sx in (-1, 1):
            parts.append(_box(sx * (w - pw), seat_top + back_h, post_z, pw, back_h, pw))
        rail_h = rng.uniform(0.05, 0.12)
        parts.append(
            _box(0.0, seat_top + 2 * back_h - rail_h, post_z, w - 2 * pw, rail_h, 0.8 * pw)
        )
    return parts


def _stool(rng) -> list[PartParams]:
    r, t = rng.uniform(0.3, 0.5), rng.uniform(0.03, 0.06)
    height = rng.uniform(0.8, 1.5)
    n_legs = int(rng.integers(3, 5))
    leg = rng.uniform(0.03, 0.06)
    # Leg radius from the axis: the leg's square top (corner at rho + leg*sqrt 2) stays
    # inside the 24-gon inscribed radius r*cos(7.5 deg) > 0.99 r.
    rho = rng.uniform(0.4, 0.65) * r
    kind = _kind(rng)
    leg_hy = (height - 2 * t) / 2
    phase = rng.uniform(0.0, 2 * math.pi / n_legs)
    parts = [_cyl(0.0, height - t, 0.0, r, t)]
    for i in range(n_legs):
        a = phase + 2 * math.pi * i / n_legs
        # Box legs turn to face the axis.
        parts.append(_post(kind, rho * math.cos(a), leg_hy, rho * math.sin(a), leg, leg_hy, -a))
    return parts


def _shelf(rng) -> list[PartParams]:
    w, d = rng.uniform(0.35, 0.8), rng.uniform(0.15, 0.35)  # inner half width, half depth
    height, st, bt = rng.uniform(1.0, 2.0), rng.uniform(0.02, 0.04), rng.uniform(0.02, 0.04)
    n_boards = int(rng.integers(2, 5))
    parts = [_box(sx * (w + st), height / 2, 0.0, st, height / 2, d) for sx in (-1, 1)]
    # Boards from the floor to the top, evenly spaced, their ends on the sides' faces.
    for y in np.linspace(bt, height - bt, n_boards):
        parts.append(_box(0.0, float(y), 0.0, w, bt, d))
    return parts


def _bench(rng) -> list[PartParams]:
    w, d = rng.uniform(0.6, 0.95), rng.uniform(0.15, 0.3)
    height, t = rng.uniform(0.5, 0.9), rng.uniform(0.03, 0.06)
    lt = rng.uniform(0.025, 0.05)  # slab leg half thickness
    inset = rng.uniform(0.0, 0.15)
    leg_hz = d - rng.uniform(0.0, 0.5) * d
    leg_hy = (height - 2 * t) / 2
    lx = w - inset - lt
    parts = [_box(0.0, height - t, 0.0, w, t, d)]
    parts += [_box(sx * lx, leg_hy, 0.0, lt, leg_hy, leg_hz) for sx in (-1, 1)]
    if rng.random() < 0.5:
        sh = rng.uniform(0.03, 0.06)
        sy = rng.uniform(0.2, 0.5) * 2 * leg_hy
        sz = rng.uniform(0.025, min(0.08, leg_hz))
        parts.append(_box(0.0, max(sy, sh), 0.0, lx - lt, sh, sz))
    return parts


def _lamp(rng) -> list[PartParams]:
    base_r, base_h = rng.uniform(0.2, 0.45), rng.uniform(0.02, 0.06)
    pole_r, pole_len = rng.uniform(0.025, 0.05), rng.uniform(0.6, 1.3)
    shade_r, shade_h = rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.25)
    pole_top = 2 * base_h + pole_len
    parts = [
        _cyl(0.0, base_h, 0.0, base_r, base_h),
        _cyl(0.0, 2 * base_h + pole_len / 2, 0.0, pole_r, pole_len / 2),
    ]
    if rng.random() < 0.5:
        parts.append(_cyl(0.0, pole_top + shade_h, 0.0, shade_r, shade_h))
    else:
        parts.append(_box(0.0, pole_top + shade_h, 0.0, shade_r, shade_h, shade_r))
    if rng.random() < 0.5:
        fin_r, fin_h = rng.uniform(0.03, 0.08), rng.uniform(0.02, 0.05)
        parts.append(_cyl(0.0, pole_top + 2 * shade_h + fin_h, 0.0, fin_r, fin_h))
    return parts


def _cabinet(rng) -> list[PartParams]:
    w, d, body_h = rng.uniform(0.4, 0.9), rng.uniform(0.25, 0.5), rng.uniform(0.6, 1.5)
    parts = []
    bottom = 0.0
    if rng.random() < 0.5:
        plinth_h = rng.uniform(0.03, 0.06)
        inset = rng.uniform(0.02, 0.06)
        parts.append(_box(0.0, plinth_h, 0.0, w - inset, plinth_h, d - inset))
        bottom = 2 * plinth_h
    parts.insert(0, _box(0.0, bottom + body_h / 2, 0.0, w, body_h / 2, d))
    top_t, overhang = rng.uniform(0.02, 0.04), rng.uniform(0.0, 0.06)
    parts.append(_box(0.0, bottom + body_h + top_t, 0.0, w + overhang, top_t, d + overhang))
    n_fronts = int(rng.integers(0, 3))
    ft = rng.uniform(0.02, 0.03)
    margin = rng.uniform(0.03, 0.08)
    front_hy = body_h / 2 - margin
    for i in range(n_fronts):
        # One door across the front, or two side by side with a gap between them.
        cx = 0.0 if n_fronts == 1 else (-1 + 2 * i) * w / 2
        hx = (w if n_fronts == 1 else w / 2) - margin
        parts.append(_box(cx, bottom + body_h / 2, d + ft, hx, front_hy, ft))
    return parts


def _bed(rng) -> list[PartParams]:
    w, length = rng.uniform(0.45, 0.75), rng.uniform(0.7, 0.9)  # half sizes
    frame_t, leg_h = rng.uniform(0.05, 0.12), rng.uniform(0.1, 0.3)
    leg = rng.uniform(0.03, 0.06)
    kind = _kind(rng)
    frame_top = leg_h + 2 * frame_t
    parts = [_box(0.0, leg_h + frame_t, 0.0, w, frame_t, length)]
    parts += _legs_under(rng, leg_h, w, length, leg, kind)
    head_t, head_h = rng.uniform(0.025, 0.05), rng.uniform(0.5, 1.1)
    # The headboard stands on the floor against the frame's end face.
    parts.append(_box(0.0, head_h / 2, -length - head_t, w, head_h / 2, head_t))
    variant = int(rng.integers(0, 3))
    if variant >= 1:
        m_inset, m_t = rng.uniform(0.0, 0.05), rng.uniform(0.04, 0.1)
        parts.append(_box(0.0, frame_top + m_t, 0.0, w - m_inset, m_t, length - m_inset))
    if variant == 2:
        foot_h = rng.uniform(0.3, 0.6)
        parts.append(_box(0.0, foot_h / 2, length + head_t, w, foot_h / 2, head_t))
    return parts


# Explicit table of category builders; each returns parts standing on y = 0.
CATEGORIES: dict[str, Callable[[np.random.Generator], list[PartParams]]] = {
    "table": _table,
    "chair": _chair,
    "stool": _stool,
    "shelf": _shelf,
    "bench": _bench,
    "lamp": _lamp,
    "cabinet": _cabinet,
    "bed": _bed,
}


def _footprint(p: PartParams) -> np.ndarray:
    """World-space axis-aligned bounds [2, 3] of a part."""
    hx, hy, hz = p.half_extents
    if p.kind == "cylinder":
        ex, ez = hx, hx
    else:
        c, s = abs(math.cos(p.yaw)), abs(math.sin(p.yaw))
        ex, ez = c * hx + s * hz, s * hx + c * hz
    center = np.asarray(p.center)
    ext = np.array([ex, hy, ez])
    return np.stack([center - ext, center + ext])


def _wrap_half_turn(yaw: float) -> float:
    """A box's yaw modulo a half turn, in [-pi/2, pi/2) (what the codec decodes to)."""
    return (yaw + math.pi / 2) % math.pi - math.pi / 2


def _place(parts: list[PartParams], yaw: float) -> tuple[PartParams, ...]:
    """Turn the object by `yaw` about +y, rest it on y = -1, centre it, fit [-1, 1]^3."""
    c, s = math.cos(yaw), math.sin(yaw)
    turned = []
    for p in parts:
        x, y, z = p.center
        center = (c * x + s * z, y, -s * x + c * z)
        part_yaw = 0.0 if p.kind == "cylinder" else _wrap_half_turn(p.yaw + yaw)
        turned.append(PartParams(p.kind, center, p.half_extents, part_yaw))
    bounds = np.stack([_footprint(p) for p in turned])  # [P, 2, 3]
    lo, hi = bounds[:, 0].min(0), bounds[:, 1].max(0)
    shift = np.array([-(lo[0] + hi[0]) / 2, -lo[1], -(lo[2] + hi[2]) / 2])
    size = hi - lo
    # Shrink about the floor centre only when needed; scaling keeps every contact.
    scale = min(1.0, 2.0 / size[0], 2.0 / size[1], 2.0 / size[2])
    placed = []
    for p in turned:
        center = (np.asarray(p.center) + shift) * scale + np.array([0.0, -1.0, 0.0])
        half = np.asarray(p.half_extents) * scale
        placed.append(
            PartParams(
                p.kind, tuple(float(v) for v in center), tuple(float(v) for v in half), p.yaw
            )
        )
    return tuple(placed)


def make_object(index: int, seed: int) -> ObjectSpec:
    """The object number `index` of the dataset with `seed` (independent of other indices)."""
    rng = np.random.default_rng([seed, index])
    names = list(CATEGORIES)
    category = names[int(rng.integers(len(names)))]
    parts = CATEGORIES[category](rng)
    # Half the objects face the camera squarely; the rest turn up to 30 degrees.
    yaw = 0.0 if rng.random() < 0.5 else float(rng.uniform(-math.pi / 6, math.pi / 6))
    return ObjectSpec(
        id=f"{category}-{seed}-{index:05d}", category=category, parts=_place(parts, yaw)
    )


def make_objects(n: int, seed: int) -> list[ObjectSpec]:
    """`n` objects, deterministic per seed; a prefix of a longer list for the same seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [make_object(i, seed) for i in range(n)]


def object_to_dict(obj: ObjectSpec) -> dict[str, Any]:
    """The ground-truth JSON of an object."""
    return {
        "id": obj.id,
        "category": obj.category,
        "parts": [p.to_dict() for p in obj.parts],
    }


def object_from_dict(d: dict[str, Any]) -> ObjectSpec:
    """Inverse of `object_to_dict`; strict about keys."""
    expected = {"id", "category", "parts"}
    if set(d) != expected:
        raise ValueError(f"object needs keys {sorted(expected)}, got {sorted(d)}")
    return ObjectSpec(
        id=str(d["id"]),
        category=str(d["category"]),
        parts=tuple(PartParams.from_dict(p) for p in d["parts"]),
    )
