"""Synthetic spatial-QA scenes: determinism, the row format, the per-question-type design
of revealing views, the renderer, and the MMSI-Bench-format loader."""

import dataclasses
import json
import statistics
import time

import numpy as np
import pytest

from genalign.config.base import ConfigError
from genalign.config.planner_world import QUESTION_TYPES, SpatialDataConfig
from genalign.data import spatial_scenes
from genalign.data.mmsi import MMSIError, load_mmsi
from genalign.data.scene_views import instruction_vocabulary, parse_instruction
from genalign.data.spatial_scenes import (
    SceneError,
    SpatialScene,
    load_scene,
    make_scene,
    make_spatial_samples,
)
from genalign.render.parts_image import _camera_rays
from genalign.render.scenes import (
    DIRECTIONS,
    VIEWS,
    _hits,
    _rays,
    render_scene,
    view_camera,
    visibility,
)
from genalign.scorers.scene_oracle import SceneOracle

N_SCENES = 60  # 15 of each question type


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(i, seed=0) for i in range(N_SCENES)]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("spatial")
    return out, make_spatial_samples(8, seed=5, out_dir=out)


def family(direction):
    return {direction, f"{direction}-high", f"{direction}-low"}


# The module docstring's table: one family of views per question type.
DESIGNED = {
    "behind": family("back"),
    "left_of": family("left"),
    "right_of": family("right"),
    "above": {"top", *(f"{d}-high" for d in DIRECTIONS)},
}


def resting(o, objects):
    """Whether o stands on the floor or on another object's top."""
    return abs(o.bottom) < 1e-9 or any(
        abs(o.bottom - b.top) < 1e-9
        and all(abs(o.center[k] - b.center[k]) <= b.half_extents[k] for k in (0, 2))
        for b in objects
        if b is not o
    )


def footprints_overlap(a, b):
    return all(
        abs(a.center[k] - b.center[k]) < a.half_extents[k] + b.half_extents[k] for k in (0, 2)
    )


# ---------------------------------------------------------------- determinism and format


def test_same_seed_same_files_and_prefix_stable(tmp_path, written):
    out, rows = written
    again = make_spatial_samples(4, seed=5, out_dir=tmp_path)
    assert again == rows[:4]
    for row in again:
        for rel in [*row["images"], row["meta"]["scene"]]:
            assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes(), rel
    other = [make_scene(i, seed=6) for i in range(4)]
    assert [s.objects for s in other] != [
        load_scene(out / r["meta"]["scene"]).objects for r in rows[:4]
    ]


def test_rows_follow_the_contract(written):
    out, rows = written
    assert [r["question_type"] for r in rows] == [QUESTION_TYPES[i % 4] for i in range(8)]
    for row in rows:
        assert set(row) == {
            "id",
            "images",
            "question",
            "options",
            "answer",
            "question_type",
            "meta",
        }
        assert row["meta"] == {"scene": f"scenes/{row['id']}.json"}
        assert len(row["images"]) == 1 and (out / row["images"][0]).is_file()
        assert [o[:3] for o in row["options"]] == ["A. ", "B. ", "C. ", "D. "]
        scene = load_scene(out / row["meta"]["scene"])
        assert scene.id == row["id"] and scene.question.text == row["question"]
        chosen = row["options"]["ABCD".index(row["answer"])][3:]
        assert chosen == scene.question.answer_object
        assert len({o[3:] for o in row["options"]}) == 4
        assert SpatialScene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


def test_front_image_is_the_front_render(written):
    from PIL import Image

    out, rows = written
    scene = load_scene(out / rows[0]["meta"]["scene"])
    img = np.asarray(Image.open(out / rows[0]["images"][0]))
    assert img.shape == (56, 56, 3)
    assert np.array_equal(img, render_scene(scene.objects, view_camera("front"), 56))


# ---------------------------------------------------------------- the design


def test_objects_are_distinct_solid_and_inside_the_frame(scenes):
    for s in scenes:
        assert 3 <= len(s.objects) <= 6
        assert len({o.color for o in s.objects}) == len(s.objects)  # names and colours unique
        for o in s.objects:
            assert (
                max(abs(o.center[0]) + o.half_extents[0], abs(o.center[2]) + o.half_extents[2])
                <= 1.3
            )
            assert o.bottom >= -1e-9 and o.top <= 1.2
        for i, a in enumerate(s.objects):  # no two objects interpenetrate (touching is fine)
            for b in s.objects[i + 1 :]:
                gaps = [
                    abs(a.center[k] - b.center[k]) - a.half_extents[k] - b.half_extents[k]
                    for k in range(3)
                ]
                assert max(gaps) >= -1e-9, (s.id, a.name, b.name)


def relation_holds(qtype, a, ref):
    """Ground truth of the question's relation between object a and the reference."""
    if qtype == "behind":
        return (
            a.center[2] + a.half_extents[2] < ref.center[2] - ref.half_extents[2]
            and abs(a.center[0] - ref.center[0]) <= ref.half_extents[0]
        )
    if qtype in ("left_of", "right_of"):
        sign = -1 if qtype == "left_of" else 1
        return (
            sign * (a.center[0] - ref.center[0]) > ref.half_extents[0] + a.half_extents[0]
            and abs(a.center[2] - ref.center[2]) <= ref.half_extents[2]
        )
    return abs(a.bottom - ref.top) < 1e-9 and all(
        abs(a.center[k] - ref.center[k]) <= ref.half_extents[k] for k in (0, 2)
    )


def test_the_answer_is_the_only_option_in_the_relation(scenes):
    for s in scenes:
        q = s.question
        ref = s.object(q.reference)
        assert relation_holds(q.type, s.object(q.answer_object), ref), s.id
        for option in q.options:
            name = option[3:]
            if name != q.answer_object and name in s.object_names:
                assert not relation_holds(q.type, s.object(name), ref), (s.id, name)


def test_exactly_the_designed_views_reveal_the_answer(scenes):
    """For every question the front view does not reveal, the designed views do, no other does."""
    oracle = SceneOracle()
    for s in scenes:
        assert "front" not in s.reveal_views and s.reveal_views
        for instruction in instruction_vocabulary(s.object_names):
            view = parse_instruction(instruction)
            assert oracle.view_reveals(s, view) == (view in s.reveal_views), (s.id, view)


def test_the_designs_per_question_type(scenes):
    """Each type has its own family of views; 'top' reveals only what lies on X's top."""
    oracle = SceneOracle()
    by_type = {t: [s for s in scenes if s.question.type == t] for t in QUESTION_TYPES}
    assert all(len(v) == N_SCENES // 4 for v in by_type.values())
    for s in scenes:
        assert set(s.reveal_views) == DESIGNED[s.question.type], s.id
        assert oracle.view_reveals(s, "top") == (s.question.type == "above"), s.id


def test_a_canopy_hides_the_answer_from_the_top_and_is_never_an_option(scenes):
    for s in scenes:
        q = s.question
        floating = [o for o in s.objects if not resting(o, s.objects)]
        options = {o[3:] for o in q.options}
        if q.type == "above":
            assert not floating, s.id
            continue
        assert len(floating) == 1, s.id
        (canopy,) = floating
        answer = s.object(q.answer_object)
        assert canopy.shape == "cylinder" and canopy.half_extents[0] >= 0.4, s.id
        assert all(abs(answer.center[k] - canopy.center[k]) < 0.05 for k in (0, 2)), s.id
        assert canopy.name not in options
        under = [o for o in s.objects if o is not canopy and footprints_overlap(o, canopy)]
        assert canopy.bottom > max(o.top for o in under), s.id
        # No distractor stands under it: only X, the answer and the blockers do.
        assert not {o.name for o in under} & options - {q.answer_object}, s.id


def test_rejection_sampling_is_cheap(monkeypatch):
    """A few draws per scene reach the oracle check (each renders ~25 views)."""
    checks = []
    matches = spatial_scenes._matches_design

    def counted(scene):
        checks.append(scene.id)
        return matches(scene)

    monkeypatch.setattr(spatial_scenes, "_matches_design", counted)
    ids = [make_scene(i, seed=2).id for i in range(40)]
    per_scene = [checks.count(i) for i in ids]
    assert statistics.mean(per_scene) <= 1.6 and max(per_scene) <= 10, per_scene


def test_config_is_checked():
    with pytest.raises(ConfigError, match="unknown question_types"):
        SpatialDataConfig.from_dict({"question_types": ["under"]})
    with pytest.raises(ConfigError, match="unknown key"):
        SpatialDataConfig.from_dict({"n_objects": 4})
    only = SpatialDataConfig.from_dict({"question_types": ["above"]})
    assert make_scene(3, seed=1, cfg=only).question.type == "above"


def test_load_scene_names_file_and_field(tmp_path, scenes):
    d = scenes[0].to_dict()
    d["objects"][1]["shape"] = "pyramid"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(SceneError, match=r"bad\.json\.objects\[1\]: unknown shape 'pyramid'"):
        load_scene(path)
    d = scenes[0].to_dict()
    d["question"]["answer_object"] = "white cone"
    path.write_text(json.dumps(d))
    with pytest.raises(SceneError, match="question.answer_object"):
        load_scene(path)
    d = scenes[0].to_dict()
    d["question"]["answer"] = "E"
    path.write_text(json.dumps(d))
    with pytest.raises(
        SceneError, match=r"question\.answer: expected one of \['A', 'B', 'C', 'D'\]"
    ):
        load_scene(path)
    with pytest.raises(SceneError, match="not found"):
        load_scene(tmp_path / "absent.json")


# ---------------------------------------------------------------- renderer


def test_renders_every_view_fast(scenes):
    s = scenes[0]
    images = {v: render_scene(s.objects, view_camera(v, s.objects), 56) for v in VIEWS}
    assert all(img.shape == (56, 56, 3) and img.dtype == np.uint8 for img in images.values())
    assert len({img.tobytes() for img in images.values()}) == len(VIEWS)
    cam = view_camera("back-high", s.objects)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        render_scene(s.objects, cam, 56)
        times.append(time.perf_counter() - t0)
    # ~10 ms on one core; the bound leaves room for a loaded machine.
    assert statistics.median(times) < 0.1


def test_rays_and_visibility_match_the_reference_computation(scenes):
    """Rays by rotation equal `parts_image._camera_rays`; counting a few objects equals
    the rows of a full object-id buffer."""
    s = scenes[1]
    for view in [*VIEWS, f"zoom-in:{s.objects[1].name}", f"zoom-out:{s.objects[0].name}"]:
        cam = view_camera(view, s.objects)
        eye, dirs = _camera_rays(cam, 64)
        assert np.allclose(_rays(cam, 64)[1], dirs, rtol=0.0, atol=1e-12), view
        t_all, _ = _hits(s.objects, eye, dirs, with_normals=False)  # [K, N]
        nearest = np.argmin(t_all, axis=0)[np.isfinite(t_all.min(axis=0))]
        full = np.stack(
            [np.bincount(nearest, minlength=len(s.objects)), np.isfinite(t_all).sum(axis=1)], 1
        )
        assert np.array_equal(visibility(s.objects, cam, 64), full), view
        assert np.array_equal(visibility(s.objects, cam, 64, of=(1, 0)), full[[1, 0]]), view


def test_zoom_frames_the_object(scenes):
    s = scenes[0]
    obj = s.objects[0]
    zin = view_camera(f"zoom-in:{obj.name}", s.objects)
    zout = view_camera(f"zoom-out:{obj.name}", s.objects)
    assert zin.target == obj.center and zin.fov_deg < view_camera("front").fov_deg < zout.fov_deg
    with pytest.raises(ValueError, match="no object named"):
        view_camera("zoom-in:white cone", s.objects)


# ---------------------------------------------------------------- MMSI-format loader


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_mmsi_loads_the_synthetic_rows(written):
    out, rows = written
    write_jsonl(out / "data.jsonl", rows)
    data = load_mmsi(out / "data.jsonl")
    assert data.counts() == {"rows": 8, "skipped": 0}
    row = data.rows[0]
    assert row.id == rows[0]["id"] and row.image_paths == (out / rows[0]["images"][0],)
    assert (
        row.options[row.answer_index][3:]
        == load_scene(out / row.meta["scene"]).question.answer_object
    )


def test_mmsi_skips_rows_with_a_missing_image_and_reports_them(written, tmp_path):
    out, rows = written
    rows = [dict(r) for r in rows]
    rows[2]["images"] = ["images/nowhere.png"]
    rows[5]["images"] = [rows[5]["images"][0], "images/also_missing.png"]
    (tmp_path / "data.json").write_text(json.dumps(rows))
    data = load_mmsi(tmp_path / "data.json", image_root=out)
    assert data.counts() == {"rows": 6, "skipped": 2}
    assert [(s.id, s.line) for s in data.skipped] == [(rows[2]["id"], 3), (rows[5]["id"], 6)]
    assert "nowhere.png" in data.skipped[0].reason and "image not found" in data.skipped[1].reason


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("question"), r"data\.jsonl:2: missing field\(s\) \['question'\]"),
        (
            lambda r: r.update(answer="E"),
            r"data\.jsonl:2: answer: expected one of \['A', 'B', 'C', 'D'\]",
        ),
        (lambda r: r.update(images=[]), r"data\.jsonl:2: images: expected a list"),
        (lambda r: r.update(options="A. x"), r"data\.jsonl:2: options: expected a list"),
        (lambda r: r.update(id=""), r"data\.jsonl:2: id: expected a non-empty string"),
        (lambda r: r.update(id="first"), r"data\.jsonl:2: id 'first' repeats line 1"),
    ],
)
def test_mmsi_malformed_rows_name_file_and_line(tmp_path, change, message):
    good = {
        "id": "first",
        "images": ["a.png"],
        "question": "q?",
        "options": ["A. x", "B. y", "C. z", "D. w"],
        "answer": "A",
        "question_type": "behind",
    }
    bad = dict(good, id="second")
    change(bad)
    write_jsonl(tmp_path / "data.jsonl", [good, bad])
    with pytest.raises(MMSIError, match=message):
        load_mmsi(tmp_path / "data.jsonl")


def test_mmsi_file_level_errors(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"id": "a"}\n{not json\n')
    with pytest.raises(MMSIError, match=r"data\.jsonl:1: missing field"):
        load_mmsi(tmp_path / "data.jsonl")
    (tmp_path / "data.jsonl").write_text("\n{not json\n")
    with pytest.raises(MMSIError, match=r"data\.jsonl:2: not JSON"):
        load_mmsi(tmp_path / "data.jsonl")
    (tmp_path / "data.json").write_text('{"id": "a"}')
    with pytest.raises(MMSIError, match="expected a JSON list"):
        load_mmsi(tmp_path / "data.json")
    with pytest.raises(MMSIError, match="not found"):
        load_mmsi(tmp_path / "absent.jsonl")


def test_mmsi_keeps_extra_fields(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    row = {
        "id": "q",
        "images": ["a.png"],
        "question": "q?",
        "options": ["A. x", "B. y"],
        "answer": "B",
        "question_type": "t",
        "thought": "because",
    }
    write_jsonl(tmp_path / "d.jsonl", [row])
    loaded = load_mmsi(tmp_path / "d.jsonl").rows[0]
    assert loaded.extra == {"thought": "because"} and loaded.answer_index == 1
    assert dataclasses.asdict(loaded)["meta"] == {}
