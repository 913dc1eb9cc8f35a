"""Planner pairs: from Pair rows, the trl and Qwen-VL-Series-Finetune formats, their round
trips, the <image> token count, weak-pair subsampling and the errors that name a pair."""

import json

import pytest
from PIL import Image

from genalign.data.planner_pairs import (
    IMAGE_TOKEN,
    PlannerPair,
    PlannerPairError,
    from_qwen_row,
    planner_pairs,
    read_qwen_json,
    read_trl_jsonl,
    to_qwen_row,
    to_trl_row,
    trl_dataset,
    weight_weak_pairs,
    write_qwen_json,
    write_trl_jsonl,
)
from genalign.data.planner_prompt import planner_prompt
from genalign.records import Pair, Sample

CHOSEN = (
    "<thinking>The blue sphere may be behind the red cube.</thinking><instructions>"
    "<instruction>view from the left</instruction></instructions>"
)
REJECTED = "<thinking></thinking><instructions></instructions>"


def _pair(pid="c0:a>b", *, cond="c0", extra=None, weak=False):
    return Pair(
        pair_id=pid,
        cond_id=cond,
        chosen="a",
        rejected="b",
        chosen_score=3.0,
        rejected_score=1.0,
        gap=2.0,
        iteration=0,
        weak=weak,
        extra=extra if extra is not None else {},
    )


def _extra(n_images=1):
    return {
        "prompt": "Question: Which object is behind the red cube?",
        "chosen_text": CHOSEN,
        "rejected_text": REJECTED,
        "images": [f"scenes/c0_{i}.png" for i in range(n_images)],
    }


def _planner(pid, n_images=1, weak=False):
    return PlannerPair(
        pair_id=pid,
        prompt="Question: What is directly above the green cylinder?\nA. red cube\nB. nothing",
        chosen=CHOSEN,
        rejected=REJECTED,
        images=tuple(f"scenes/{pid}_{i}.png" for i in range(n_images)),
        weak=weak,
    )


def test_from_pair_extra():
    (p,) = planner_pairs([_pair(extra=_extra(2), weak=True)])
    assert p.prompt == _extra()["prompt"]
    assert (p.chosen, p.rejected) == (CHOSEN, REJECTED)
    assert p.images == ("scenes/c0_0.png", "scenes/c0_1.png")
    assert p.weak


def test_from_samples_and_dataset_rows():
    row = {
        "id": "c0",
        "images": ["scenes/c0_0.png"],
        "question": "Which object is behind the red cube?",
        "options": ["A. blue sphere", "B. green cylinder"],
        "answer": "A",
    }
    samples = [
        Sample(sample_id=s, cond_id="c0", seed=0, iteration=0, output=text, status="ok")
        for s, text in (("a", CHOSEN), ("b", REJECTED))
    ]
    (p,) = planner_pairs([_pair()], samples=samples, rows=[row])
    assert p.prompt == planner_prompt(row)
    assert p.images == ("scenes/c0_0.png",)
    assert (p.chosen, p.rejected) == (CHOSEN, REJECTED)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"chosen_text": None}, "no chosen text"),
        ({"rejected_text": None}, "no rejected text"),
        ({"prompt": None}, "no prompt"),
        ({"chosen_text": ""}, "chosen text is missing or empty"),
        ({"rejected_text": "   "}, "rejected text is missing or empty"),
        ({"prompt": f"{IMAGE_TOKEN} what?"}, "reserves for images"),
        ({"images": "one.png"}, "images must be a list"),
    ],
)
def test_invalid_pair_names_the_pair(change, message):
    extra = _extra()
    for k, v in change.items():
        if v is None:
            del extra[k]
        else:
            extra[k] = v
    with pytest.raises(PlannerPairError, match=message) as e:
        planner_pairs([_pair("c9:x>y", extra=extra)])
    assert "'c9:x>y'" in str(e.value)


def test_non_text_sample_output_is_an_error():
    samples = [
        Sample(sample_id="a", cond_id="c0", seed=0, iteration=0, output={"n": 1}, status="ok"),
        Sample(sample_id="b", cond_id="c0", seed=0, iteration=0, output=REJECTED, status="ok"),
    ]
    extra = {k: v for k, v in _extra().items() if k not in ("chosen_text", "rejected_text")}
    with pytest.raises(PlannerPairError, match="'c0:a>b'.*not plan text"):
        planner_pairs([_pair(extra=extra)], samples=samples)


def test_duplicate_pair_ids_are_an_error():
    with pytest.raises(PlannerPairError, match="appears twice"):
        planner_pairs([_pair(extra=_extra()), _pair(extra=_extra())])


def test_trl_row_layout():
    row = to_trl_row(_planner("p0", n_images=2))
    assert set(row) == {"id", "prompt", "chosen", "rejected", "images"}
    (user,) = row["prompt"]
    assert user["role"] == "user"
    assert [c["type"] for c in user["content"]] == ["image", "image", "text"]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": CHOSEN}]}]
    assert row["rejected"][0]["content"][0]["text"] == REJECTED
    assert row["images"] == ["scenes/p0_0.png", "scenes/p0_1.png"]


@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_qwen_row_has_one_image_token_per_image(n_images):
    row = to_qwen_row(_planner("p0", n_images=n_images))
    assert row["prompt"].count(IMAGE_TOKEN) == n_images
    assert row["prompt"].startswith(f"{IMAGE_TOKEN}\n" * n_images)
    if n_images:
        assert row["image"] == [f"scenes/p0_{i}.png" for i in range(n_images)]
    else:
        assert "image" not in row  # the loader's text-only branch
    assert (row["chosen"], row["rejected"]) == (CHOSEN, REJECTED)


def test_round_trips(tmp_path):
    pairs = [_planner(f"p{i}", n_images=i % 3) for i in range(5)]
    write_trl_jsonl(tmp_path / "pairs.trl.jsonl", pairs)
    write_qwen_json(tmp_path / "pairs.qwen.json", pairs)
    assert read_trl_jsonl(tmp_path / "pairs.trl.jsonl") == pairs
    assert read_qwen_json(tmp_path / "pairs.qwen.json") == pairs
    items = json.loads((tmp_path / "pairs.qwen.json").read_text())
    for item, pair in zip(items, pairs):
        assert item["prompt"].count(IMAGE_TOKEN) == len(item.get("image", [])) == len(pair.images)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writers leave no temp files


def test_qwen_reader_checks_the_token_count(tmp_path):
    row = to_qwen_row(_planner("p7", n_images=2))
    row["image"] = row["image"][:1]
    (tmp_path / "bad.json").write_text(json.dumps([row]))
    with pytest.raises(PlannerPairError, match=r"bad.json\[0\]: pair 'p7': 2 <image> token"):
        read_qwen_json(tmp_path / "bad.json")
    with pytest.raises(PlannerPairError, match="must all come first"):
        from_qwen_row({**row, "image": ["a.png", "b.png"], "prompt": "x<image>\n<image>\n"})


def test_trl_reader_names_file_and_line(tmp_path):
    good = json.dumps(to_trl_row(_planner("p0")))
    bad = to_trl_row(_planner("p1"))
    bad["chosen"][0]["content"][0]["text"] = ""
    (tmp_path / "pairs.jsonl").write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(PlannerPairError, match=r"pairs.jsonl:2: pair 'p1': chosen text"):
        read_trl_jsonl(tmp_path / "pairs.jsonl")


def test_weak_pair_weight_subsamples_weak_pairs():
    pairs = [_planner(f"p{i}", weak=i % 2 == 0) for i in range(10)]  # 5 weak
    kept, counts = weight_weak_pairs(pairs, 1.0, seed=0)
    assert kept == pairs and counts == {"weak": 5, "weak_kept": 5, "weak_dropped": 0}
    kept, counts = weight_weak_pairs(pairs, 0.0, seed=0)
    assert kept == [p for p in pairs if not p.weak] and counts["weak_dropped"] == 5
    kept, counts = weight_weak_pairs(pairs, 0.4, seed=3)
    assert counts == {"weak": 5, "weak_kept": 2, "weak_dropped": 3}
    assert sum(p.weak for p in kept) == 2 and len(kept) == 7
    assert [p.pair_id for p in kept] == [p.pair_id for p in pairs if p in kept]  # order kept
    again, _ = weight_weak_pairs(list(reversed(pairs)), 0.4, seed=3)
    assert {p.pair_id for p in again} == {p.pair_id for p in kept}  # not order-dependent
    with pytest.raises(ValueError, match="weight"):
        weight_weak_pairs(pairs, 1.5, seed=0)


def test_trl_dataset_decodes_images(tmp_path):
    pairs = [_planner("p0", n_images=2), _planner("p1", n_images=1)]
    for p in pairs:
        for rel in p.images:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGBA", (32, 32), (200, 10, 10, 128)).save(tmp_path / rel)
    ds = trl_dataset(pairs, tmp_path)
    assert len(ds) == 2
    row = ds[0]
    assert [im.mode for im in row["images"]] == ["RGB", "RGB"]
    assert [c["type"] for c in row["prompt"][0]["content"]] == ["image", "image", "text"]
    assert row["chosen"][0]["content"][0]["text"] == CHOSEN


def test_trl_dataset_missing_image_names_the_pair(tmp_path):
    with pytest.raises(PlannerPairError, match=r"pair 'p0': image .*p0_0.png does not exist"):
        trl_dataset([_planner("p0")], tmp_path)
