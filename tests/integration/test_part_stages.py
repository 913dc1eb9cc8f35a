"""The part-dpo stages on small artifacts: bad input gets a clear error or a counted
fallback before expensive work, a killed stage leaves no half-written output, and a
re-run resumes from what completed."""

import json
from pathlib import Path

import pytest

from genalign.models.part_codec import PartParams, part_mesh, save_glb
from genalign.pairs import NoPairsError
from genalign.records import RecordError, Sample, ScoredSample, read_jsonl, write_jsonl
from genalign.stages import run_stage
from genalign.storage import ArtifactError, write_manifest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Conditions and a random-init generator given by model reference (no pretraining)."""
    out = tmp_path_factory.mktemp("prepared")
    cfg = {"train_conditions": 4, "eval_conditions": 2, "base_model": "tiny://part-generator"}
    run_stage("prepare-parts", cfg, inputs={},
              outputs={"conditions": out / "cond", "eval_conditions": out / "eval", "model": out / "model"})
    return out


def test_rollout_and_score_resume(prepared, tmp_path):
    cfg = {"samples_per_condition": 2, "steps": 2}
    ins = {"conditions": prepared / "cond", "model": prepared / "model"}
    first = run_stage("rollout-parts", cfg, inputs=ins, outputs={"samples": tmp_path / "s"}, params={"shard": 1, "num_shards": 2})
    assert first.metrics["rollout/samples"] == 4 and not first.reused
    rows = read_jsonl(tmp_path / "s" / "samples.jsonl", Sample)
    assert {r.cond_id for r in rows} == {c for c in [r.cond_id for r in rows]} and len({r.seed for r in rows}) == 4
    for r in rows:
        for f in r.files.values():
            assert (tmp_path / "s" / f).is_file()
    again = run_stage("rollout-parts", cfg, inputs=ins, outputs={"samples": tmp_path / "s"}, params={"shard": 1, "num_shards": 2})
    assert again.reused and again.metrics == first.metrics
    scored = run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": tmp_path / "s"}, outputs={"scored": tmp_path / "sc"})
    assert scored.metrics["score/samples"] == 4
    rescored = run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": tmp_path / "s"},
                         outputs={"scored": tmp_path / "sc"})
    assert rescored.reused and rescored.metrics == scored.metrics


def test_killed_score_leaves_no_half_written_output(prepared, tmp_path, monkeypatch):
    run_stage("rollout-parts", {"samples_per_condition": 2, "steps": 2},
              inputs={"conditions": prepared / "cond", "model": prepared / "model"},
              outputs={"samples": tmp_path / "s"}, params={"shard": 0, "num_shards": 2})
    import genalign.stages.shared.score_samples as score_stage

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(score_stage, "write_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": tmp_path / "s"}, outputs={"scored": tmp_path / "sc"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def make_samples(directory: Path, objects: dict[str, list[list[PartParams]]], *, broken: set[str] = frozenset()) -> None:
    """A samples artifact from explicit objects: {cond_id: [parts of sample 0, parts of sample 1, ...]}."""
    rows = []
    for cond_id, samples in objects.items():
        for k, parts in enumerate(samples):
            sid = f"{cond_id}-k{k}"
            meshes = [part_mesh(p) for p in parts]
            if sid in broken:  # drop two faces: the part is no longer watertight
                meshes[0] = meshes[0].copy()
                meshes[0].update_faces([i for i in range(len(meshes[0].faces)) if i > 1])
            save_glb(meshes, directory / "meshes" / f"{sid}.glb")
            rows.append(Sample(sample_id=sid, cond_id=cond_id, seed=k, iteration=0, output={"num_parts": len(parts)},
                               files={"meshes": f"meshes/{sid}.glb"}, status="ok"))
    write_jsonl(directory / "samples.jsonl", rows)
    write_manifest(directory, kind="samples", counts={"samples": len(rows)})


def box(x: float) -> PartParams:
    return PartParams("box", (x, 0.0, 0.0), (0.5, 0.5, 0.5), 0.0)


def test_non_watertight_part_falls_back_to_voxels_and_is_counted(tmp_path):
    make_samples(tmp_path / "s", {"c": [[box(0.0), box(0.5)], [box(0.0), box(1.0)]]}, broken={"c-k0"})
    result = run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": tmp_path / "s"}, outputs={"scored": tmp_path / "sc"})
    assert result.metrics["score/non_watertight_parts"] == 1 and result.metrics["score/fallback_pairs"] == 1
    rows = {r.sample_id: r for r in read_jsonl(tmp_path / "sc" / "scored.jsonl", ScoredSample)}
    assert rows["c-k0"].score == pytest.approx(0.5, abs=0.1)  # half of a unit cube overlaps (64³ voxels)
    assert rows["c-k1"].score == 0.0  # touching faces


def test_unreadable_mesh_is_a_counted_failure_and_its_condition_is_dropped(tmp_path):
    make_samples(tmp_path / "s", {"a": [[box(0.0), box(0.5)], [box(0.0), box(1.0)]],
                                  "b": [[box(0.0), box(0.2)], [box(0.0), box(1.0)]]})
    (tmp_path / "s" / "meshes" / "b-k0.glb").write_bytes(b"not a glb")
    result = run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": tmp_path / "s"}, outputs={"scored": tmp_path / "sc"})
    assert result.metrics["score/failed"] == 1
    row = next(r for r in read_jsonl(tmp_path / "sc" / "scored.jsonl", ScoredSample) if r.sample_id == "b-k0")
    assert row.score is None and row.status == "failed" and "b-k0.glb" in row.detail["error"]
    pairs = run_stage("mine-pairs", {"min_gap": 0.0}, inputs={"scored": [tmp_path / "sc"]}, outputs={"pairs": tmp_path / "p"})
    assert pairs.metrics["pairs/pairs"] == 1 and pairs.metrics["pairs/invalid_score"] == 1


def test_no_pairs_anywhere_is_an_error_with_the_reasons(tmp_path):
    make_samples(tmp_path / "s", {"a": [[box(0.0), box(1.0)], [box(0.0), box(1.0)]]})  # both score 0: a tie
    run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": tmp_path / "s"}, outputs={"scored": tmp_path / "sc"})
    with pytest.raises(NoPairsError, match=r"no pairs from 1 scored shard.*'ties': 1"):
        run_stage("mine-pairs", {}, inputs={"scored": [tmp_path / "sc"]}, outputs={"pairs": tmp_path / "p"})
    assert not (tmp_path / "p").exists()


def test_nan_score_is_rejected_with_file_and_line(tmp_path):
    make_samples(tmp_path / "s", {"a": [[box(0.0), box(0.5)], [box(0.0), box(1.0)]]})
    run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": tmp_path / "s"}, outputs={"scored": tmp_path / "sc"})
    path = tmp_path / "sc" / "scored.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    row["score"] = float("nan")
    path.write_text("\n".join([lines[0], json.dumps(row)]) + "\n")
    with pytest.raises(RecordError, match=r"scored.jsonl:2: score"):
        run_stage("mine-pairs", {}, inputs={"scored": [tmp_path / "sc"]}, outputs={"pairs": tmp_path / "p"})


def test_wrong_artifact_kind_is_named(tmp_path, prepared):
    with pytest.raises(ArtifactError, match="kind is 'conditions', expected one of \\['samples'\\]"):
        run_stage("score-samples", {}, inputs={"samples": prepared / "cond"}, outputs={"scored": tmp_path / "sc"})


def test_adapter_of_another_base_is_refused_before_evaluation(prepared, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "genalign.json").write_text(json.dumps({"kind": "adapter", "base_model": "elsewhere", "base_model_sha256": "0" * 64}))
    (adapter / "adapter_config.json").write_text("{}")
    write_manifest(adapter, kind="adapter")
    model = prepared / "model"
    from genalign.models.refs import resolve

    base = resolve(json.loads((model / "genalign.json").read_text())["ref"])
    with pytest.raises(ArtifactError, match="was trained on base model 'elsewhere'"):
        run_stage("evaluate-parts", {}, inputs={"model": base, "adapter": adapter, "conditions": prepared / "eval"},
                  outputs={"report": tmp_path / "report"})
    assert not (tmp_path / "report").exists()
