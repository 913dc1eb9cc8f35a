"""score-samples when samples cannot be scored: each such sample is a counted failure with
a reason, the stage finishes, and no NaN reaches a record."""

import json
import math
import struct
from pathlib import Path

import pytest

from genalign.models.part_codec import PartParams, part_mesh, save_glb
from genalign.records import Sample, ScoredSample, read_jsonl, write_jsonl
from genalign.scorers.base import ObjectScore
from genalign.stages import run_stage
from genalign.storage import write_manifest

pytestmark = pytest.mark.integration


def cube(x: float) -> PartParams:
    return PartParams("box", (x, 0.0, 0.0), (0.5, 0.5, 0.5), 0.0)


def write_samples(directory: Path, objects: dict[str, list]) -> None:
    """A samples artifact: {sample_id: meshes, or None for a sample whose file is missing}."""
    rows = []
    for sid, meshes in objects.items():
        if meshes is not None:
            save_glb(meshes, directory / "meshes" / f"{sid}.glb")
        rows.append(Sample(sample_id=sid, cond_id=sid.split("-")[0], seed=0, iteration=0, output={"num_parts": 2},
                           files={"meshes": f"meshes/{sid}.glb"}, status="ok"))
    write_jsonl(directory / "samples.jsonl", rows)
    write_manifest(directory, kind="samples", counts={"samples": len(rows)})


def set_first_coordinate(path: Path, part: int, value: float) -> None:
    """Overwrite the first position coordinate of one part of a GLB, byte for byte."""
    data = bytearray(path.read_bytes())
    (json_length,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20 : 20 + json_length])
    accessor = doc["accessors"][doc["meshes"][doc["nodes"][part]["mesh"]]["primitives"][0]["attributes"]["POSITION"]]
    view = doc["bufferViews"][accessor["bufferView"]]
    struct.pack_into("<f", data, 20 + json_length + 8 + view.get("byteOffset", 0) + accessor.get("byteOffset", 0), value)
    path.write_bytes(bytes(data))


def score(tmp_path, samples):
    return run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": samples},
                     outputs={"scored": tmp_path / "scored"})


def test_every_unscorable_sample_is_a_counted_failure_with_its_reason(tmp_path):
    meshes = [part_mesh(cube(0.0)), part_mesh(cube(0.5))]
    samples = tmp_path / "samples"
    write_samples(samples, {"a-k0": meshes, "a-k1": meshes, "b-k0": meshes, "b-k1": meshes,
                            "c-k0": None, "c-k1": meshes, "d-k0": meshes})
    set_first_coordinate(samples / "meshes" / "a-k1.glb", 1, math.nan)
    set_first_coordinate(samples / "meshes" / "b-k0.glb", 0, math.inf)
    (samples / "meshes" / "b-k1.glb").write_bytes(b"glTF but nothing else")
    cut = samples / "meshes" / "c-k1.glb"
    cut.write_bytes(cut.read_bytes()[:-100])

    result = score(tmp_path, samples)
    assert result.metrics["score/samples"] == 7 and result.metrics["score/failed"] == 5
    assert result.metrics["score/mean"] == 0.5
    text = (tmp_path / "scored" / "scored.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rows = {r.sample_id: r for r in read_jsonl(tmp_path / "scored" / "scored.jsonl", ScoredSample)}
    assert rows["a-k0"].score == 0.5 and rows["d-k0"].score == 0.5
    errors = {sid: rows[sid].detail["error"] for sid in ("a-k1", "b-k0", "b-k1", "c-k0", "c-k1")}
    assert all(rows[sid].score is None and rows[sid].status == "failed" for sid in errors)
    assert "a-k1.glb: part 1: 1 of" in errors["a-k1"] and "not finite" in errors["a-k1"]
    assert "b-k0.glb: part 0:" in errors["b-k0"] and "not finite" in errors["b-k0"]
    assert "b-k1.glb: cannot read GLB" in errors["b-k1"]
    assert "c-k0.glb: cannot open: No such file" in errors["c-k0"]
    assert "c-k1.glb: cannot read GLB" in errors["c-k1"] and "truncated" in errors["c-k1"]


@pytest.mark.parametrize("bad", [{"score": math.nan}, {"score": 0.1, "total_volume": math.nan},
                                 {"score": 0.1, "depth_max": math.inf}])
def test_a_score_or_detail_that_is_not_a_number_is_counted_not_recorded(tmp_path, monkeypatch, bad):
    from genalign import scorers

    class Fixed:
        name, higher_is_better = "penetration", False

        def score_files(self, paths):
            good = ObjectScore(score=0.25, detail={"total_volume": 2.0})
            detail = {k: v for k, v in bad.items() if k != "score"}
            return [good] + [ObjectScore(score=bad["score"], detail=detail)] * (len(paths) - 1)

    monkeypatch.setitem(scorers.SCORERS, "penetration", lambda cfg: Fixed())
    meshes = [part_mesh(cube(0.0)), part_mesh(cube(0.5))]
    samples = tmp_path / "samples"
    write_samples(samples, {"a-k0": meshes, "a-k1": meshes})
    result = score(tmp_path, samples)
    assert result.metrics["score/failed"] == 1 and result.metrics["score/mean"] == 0.25
    rows = {r.sample_id: r for r in read_jsonl(tmp_path / "scored" / "scored.jsonl", ScoredSample)}
    assert rows["a-k1"].score is None and rows["a-k1"].status == "failed"
    assert "not a finite number" in rows["a-k1"].detail["error"]
    assert "NaN" not in (tmp_path / "scored" / "scored.jsonl").read_text()
