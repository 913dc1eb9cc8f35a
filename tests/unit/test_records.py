"""Row schemas and JSONL I/O: round trips, and errors that name file, line and field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from genalign.records import (
    Condition,
    Pair,
    RecordError,
    Sample,
    ScoredSample,
    dumps_rows,
    read_jsonl,
    write_jsonl,
)


def _sample(sid: str = "s0", **kw) -> Sample:
    base = {
        "sample_id": sid,
        "cond_id": "c0",
        "seed": 7,
        "iteration": 0,
        "output": {"num_parts": 3},
        "files": {"latent": f"latents/{sid}.safetensors"},
        "status": "ok",
    }
    base.update(kw)
    return Sample(**base)


def _scored(sid: str = "s0", score: float | None = 0.25, **kw) -> ScoredSample:
    return ScoredSample.of(
        _sample(sid, **kw), score=score, scorer="penetration", detail={"pairs": [[0, 1, 0.25]]}
    )


def _pair(pid: str = "c0:a>b") -> Pair:
    return Pair(
        pair_id=pid,
        cond_id="c0",
        chosen="a",
        rejected="b",
        chosen_score=0.0,
        rejected_score=0.5,
        gap=0.5,
        iteration=1,
    )


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _scored_line(sid: str, score: str = "0.5") -> str:
    # Written by hand so non-standard tokens (NaN) can appear.
    return (
        f'{{"sample_id": "{sid}", "cond_id": "c0", "seed": 1, "iteration": 0, '
        f'"output": {{"num_parts": 2}}, "files": {{}}, "status": "ok", "error": null, '
        f'"score": {score}, "detail": {{}}, "scorer": "penetration"}}'
    )


# ---------------------------------------------------------------- round trips


def test_condition_class_key_round_trip(tmp_path):
    c = Condition(
        id="c0", image="images/c0.png", class_="chair", meta={"num_parts": 3, "gt": "gt/c0.json"}
    )
    d = c.to_dict()
    assert d == {
        "id": "c0",
        "prompt": None,
        "image": "images/c0.png",
        "class": "chair",
        "meta": {"num_parts": 3, "gt": "gt/c0.json"},
        "files": {},
    }
    assert Condition.from_dict(d) == c
    write_jsonl(tmp_path / "conditions.jsonl", [c])
    line = (tmp_path / "conditions.jsonl").read_text()
    assert json.loads(line)["class"] == "chair"
    assert read_jsonl(tmp_path / "conditions.jsonl", Condition) == [c]


def test_all_row_types_round_trip(tmp_path):
    for rows, row_type in [
        ([_sample("a"), _sample("b", status="failed", error="boom", output={})], Sample),
        ([_scored("a"), _scored("b", score=None, status="failed")], ScoredSample),
        (
            [
                _pair("p1"),
                Pair(
                    pair_id="p2",
                    cond_id="c1",
                    chosen="x",
                    rejected="y",
                    chosen_score=9.0,
                    rejected_score=2.0,
                    gap=7.0,
                    iteration=0,
                    weak=True,
                    extra={
                        "prompt": "draw",
                        "chosen_text": "<i>a</i>",
                        "rejected_text": "<i>b</i>",
                        "images": ["images/c1.png"],
                    },
                ),
            ],
            Pair,
        ),
    ]:
        path = tmp_path / f"{row_type.__name__}.jsonl"
        write_jsonl(path, rows)
        assert read_jsonl(path, row_type) == rows


def test_text_output_allowed():
    s = _sample(output="<thinking>..</thinking><instructions>a cat</instructions>")
    assert Sample.from_dict(s.to_dict()) == s


def test_scored_of_carries_sample_fields_and_valid():
    s = _scored("a")
    assert s.files == {"latent": "latents/a.safetensors"} and s.seed == 7 and s.valid
    assert not _scored("b", score=None).valid
    # A scorer may give a failure a real score (a planner's -1): still not rankable here.
    assert not _scored("c", score=-1.0, status="failed").valid


def test_empty_file_reads_as_no_rows(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [])
    assert (tmp_path / "p.jsonl").read_text() == ""
    assert read_jsonl(tmp_path / "p.jsonl", Pair) == []


# ---------------------------------------------------------------- constructor checks


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"seed": True}, "seed"),
        ({"iteration": -1}, "iteration"),
        ({"status": "done"}, "status"),
        ({"output": 3}, "output"),
        ({"files": {"latent": 3}}, "files"),
        ({"sample_id": ""}, "sample_id"),
        ({"output": {"x": float("inf")}}, "output"),
    ],
)
def test_sample_field_checks(kw, field):
    with pytest.raises(RecordError, match=rf"^{field}: expected"):
        _sample(**kw)


def test_scored_rejects_nonfinite_score():
    with pytest.raises(RecordError, match=r"^score: expected a finite number or null, got nan"):
        _scored(score=math.nan)


def test_pair_checks():
    with pytest.raises(RecordError, match=r"^gap: expected a finite number >= 0"):
        Pair(
            pair_id="p",
            cond_id="c",
            chosen="a",
            rejected="b",
            chosen_score=0.0,
            rejected_score=1.0,
            gap=-1.0,
            iteration=0,
        )
    with pytest.raises(RecordError, match=r"^rejected: expected a sample other than chosen"):
        Pair(
            pair_id="p",
            cond_id="c",
            chosen="a",
            rejected="a",
            chosen_score=0.0,
            rejected_score=1.0,
            gap=1.0,
            iteration=0,
        )


# ---------------------------------------------------------------- read errors, exact lines


def test_malformed_json_on_line_3(tmp_path):
    path = _write_lines(
        tmp_path / "s.jsonl", [_scored_line("a"), _scored_line("b"), '{"sample_id": ']
    )
    with pytest.raises(RecordError) as e:
        read_jsonl(path, ScoredSample)
    assert str(e.value).startswith(f"{path}:3: expected one JSON object, got malformed JSON")


def test_missing_field(tmp_path):
    d = _sample("a").to_dict()
    del d["seed"]
    path = _write_lines(tmp_path / "s.jsonl", [json.dumps(_sample("z").to_dict()), json.dumps(d)])
    with pytest.raises(RecordError) as e:
        read_jsonl(path, Sample)
    assert str(e.value) == f"{path}:2: seed: required field of Sample is missing"


def test_optional_fields_default(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl", ['{"id": "c0", "image": "images/c0.png"}'])
    assert read_jsonl(path, Condition) == [Condition(id="c0", image="images/c0.png")]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_score_token(tmp_path, token):
    path = _write_lines(tmp_path / "s.jsonl", [_scored_line("a"), _scored_line("b", token)])
    with pytest.raises(RecordError) as e:
        read_jsonl(path, ScoredSample)
    assert str(e.value).startswith(f"{path}:2: score: expected a finite number or null, got ")


def test_nan_inside_free_form_detail(tmp_path):
    line = _scored_line("a").replace('"detail": {}', '"detail": {"vol": [1.0, NaN]}')
    path = _write_lines(tmp_path / "s.jsonl", [line])
    with pytest.raises(
        RecordError, match=r":1: detail: expected finite numbers only, got nan at \['vol'\]\[1\]"
    ):
        read_jsonl(path, ScoredSample)


def test_null_score_is_fine(tmp_path):
    path = _write_lines(tmp_path / "s.jsonl", [_scored_line("a", "null")])
    assert read_jsonl(path, ScoredSample)[0].score is None


def test_unknown_field(tmp_path):
    d = _pair().to_dict() | {"margin": 0.1}
    path = _write_lines(tmp_path / "p.jsonl", [json.dumps(d)])
    with pytest.raises(RecordError) as e:
        read_jsonl(path, Pair)
    assert str(e.value).startswith(f"{path}:1: margin: unknown field for Pair; valid fields are")


def test_wrong_type(tmp_path):
    d = _pair().to_dict() | {"weak": "yes"}
    path = _write_lines(tmp_path / "p.jsonl", [json.dumps(d)])
    with pytest.raises(RecordError) as e:
        read_jsonl(path, Pair)
    assert str(e.value) == f'{path}:1: weak: expected true or false, got "yes"'


def test_duplicate_ids_name_both_lines(tmp_path):
    lines = [_scored_line("a"), _scored_line("b"), _scored_line("c"), _scored_line("b")]
    path = _write_lines(tmp_path / "s.jsonl", lines)
    with pytest.raises(RecordError) as e:
        read_jsonl(path, ScoredSample)
    assert str(e.value) == f"{path}:4: sample_id: expected a unique id, 'b' is already on line 2"


def test_duplicate_key_in_object(tmp_path):
    path = _write_lines(
        tmp_path / "s.jsonl", [_scored_line("a").replace('"seed": 1', '"seed": 1, "seed": 2')]
    )
    with pytest.raises(RecordError, match=r":1: seed: expected each key once"):
        read_jsonl(path, ScoredSample)


def test_blank_line_rejected_with_number(tmp_path):
    path = _write_lines(tmp_path / "s.jsonl", [_scored_line("a"), "", _scored_line("b")])
    with pytest.raises(RecordError) as e:
        read_jsonl(path, ScoredSample)
    assert str(e.value) == f"{path}:2: expected a JSON object, got a blank line"


def test_non_object_line(tmp_path):
    path = _write_lines(tmp_path / "s.jsonl", ["[1, 2]"])
    with pytest.raises(RecordError, match=r":1: expected a JSON object, got \[1, 2\]"):
        read_jsonl(path, ScoredSample)


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl", Pair)


# ---------------------------------------------------------------- writing


def test_write_is_atomic_on_unserialisable_row(tmp_path):
    path = tmp_path / "s.jsonl"
    bad = _sample("b", output={"num_parts": object()})  # passes the checks, not json.dumps
    with pytest.raises(RecordError, match=r"^rows\[1\]: expected JSON-serialisable"):
        write_jsonl(path, [_sample("a"), bad])
    assert list(tmp_path.iterdir()) == []


def test_write_keeps_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [_pair("old")])
    before = path.read_text()

    def exploding_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr("genalign.storage.os.replace", exploding_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_jsonl(path, [_pair("new")])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # no temporary left


def test_write_rejects_duplicates_and_mixed_types(tmp_path):
    with pytest.raises(
        RecordError, match=r"rows\[1\]: pair_id: expected a unique id, 'p' is already rows\[0\]"
    ):
        dumps_rows([_pair("p"), _pair("p")])
    with pytest.raises(RecordError, match=r"rows\[1\]: expected a Pair, got Sample"):
        dumps_rows([_pair("p"), _sample("a")])


def test_write_rejects_nan_created_behind_the_checks(tmp_path):
    # Rows are frozen but their dicts are not; allow_nan=False is the last guard.
    s = _sample("a")
    s.output["num_parts"] = float("nan")
    with pytest.raises(RecordError, match="JSON-serialisable"):
        write_jsonl(tmp_path / "s.jsonl", [s])
    assert not (tmp_path / "s.jsonl").exists()
