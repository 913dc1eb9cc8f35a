"""Planner preference pairs in the two formats that train a Qwen-VL planner with DPO.

A `PlannerPair` is one resolved pair: the planner's user text, the chosen and the rejected
plan texts and the scene images (paths relative to an image root). `planner_pairs` builds
them from the generic `genalign.records.Pair` rows: from each pair's `extra` (`prompt`,
`chosen_text`, `rejected_text`, `images`) where present, else from the samples (the plan
text is a sample's `output`) and the dataset rows (`images`, and the prompt
`genalign.data.planner_prompt.planner_prompt(row)`), looked up by sample id and `cond_id`.
A pair that still lacks a text or has an empty one is an error naming the pair id.

trl's DPO format (`write_trl_jsonl` / `read_trl_jsonl`, `trl_dataset`), one JSON object a
line, conversational, with the images as placeholders in the user turn, images first and
then the text, as `genalign.models.vlm.messages` builds the planner's rollout prompt:

    {"id": "<pair_id>",
     "prompt": [{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": P}]}],
     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": C}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": R}]}],
     "images": ["scenes/q0_0.png", ...]}

trl's `DataCollatorForVisionPreference` fills the placeholders with the images in order and
renders the chat template, so training sees the same prompt as the rollouts. `trl_dataset`
turns rows into a `datasets.Dataset` whose `images` decode to RGB PIL images from the
image root.

Qwen-VL-Series-Finetune's DPO format (`write_qwen_json` / `read_qwen_json`; its README's
"Example for DPO dataset" and `src/dataset/dpo_dataset.py`): one JSON list,

    [{"id": "<pair_id>", "image": ["scenes/q0_0.png", ...],
      "prompt": "<image>\\n<image>\\nP", "chosen": C, "rejected": R}, ...]

with one `<image>` token per image, all before the text (that loader turns each
`<image>` and the newlines around it into Qwen's vision tokens, so the rendered prompt is
the chat template's). `image` is always a list; a pair without images has no `image` key
(the loader's text-only branch). Image paths are relative to its `--image_folder`.

A pair's `weak` flag is in neither format: weak pairs are weighted (`weight_weak_pairs`)
before the training set is built. Writers replace their file atomically
(`genalign.storage`).

    pairs = planner_pairs(read_jsonl(path, Pair), samples=samples, rows=dataset_rows)
    write_trl_jsonl(out / "pairs.trl.jsonl", pairs)
    write_qwen_json(out / "pairs.qwen.json", pairs)
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genalign.data.planner_prompt import planner_prompt
from genalign.records import Pair, Sample, ScoredSample
from genalign.storage import atomic_write_text

if TYPE_CHECKING:
    import datasets

IMAGE_TOKEN = "<image>"  # Qwen-VL-Series-Finetune's LLAVA_IMAGE_TOKEN
TRL_KEYS = ("id", "prompt", "chosen", "rejected", "images")
QWEN_KEYS = ("id", "image", "prompt", "chosen", "rejected")


class PlannerPairError(ValueError):
    """A pair that cannot be turned into a training row; the message names the pair id."""


@dataclasses.dataclass(frozen=True)
class PlannerPair:
    """One planner preference pair, ready for either format."""

    pair_id: str
    prompt: str  # the planner's user text (the images come before it)
    chosen: str  # the preferred plan text
    rejected: str
    images: tuple[str, ...]  # relative to the image root, in prompt order
    weak: bool = False  # below the miner's min_gap, kept as weak signal

    def __post_init__(self) -> None:
        where = f"pair {self.pair_id!r}"
        if not isinstance(self.pair_id, str) or not self.pair_id:
            raise PlannerPairError(f"pair {self.pair_id!r}: expected a non-empty pair id")
        for name in ("prompt", "chosen", "rejected"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise PlannerPairError(f"{where}: {name} text is missing or empty")
        if IMAGE_TOKEN in self.prompt:
            raise PlannerPairError(
                f"{where}: the prompt contains {IMAGE_TOKEN!r}, which the Qwen-VL-Series-Finetune "
                "format reserves for images"
            )
        if not isinstance(self.images, tuple) or not all(
            isinstance(p, str) and p for p in self.images
        ):
            raise PlannerPairError(f"{where}: images must be a tuple of non-empty paths")


# ---------------------------------------------------------------- from Pair rows


def planner_pairs(
    pairs: Iterable[Pair],
    *,
    samples: Iterable[Sample | ScoredSample] | Mapping[str, Sample | ScoredSample] | None = None,
    rows: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None,
) -> list[PlannerPair]:
    """Resolve `Pair` rows into `PlannerPair`s (see the module docstring for the lookup).

    `samples` by `sample_id`, `rows` (spatial-QA dataset rows) by `id` = the pair's
    `cond_id`; either may be a mapping or an iterable. Raises PlannerPairError naming the
    pair for anything missing.
    """
    by_sample = _index(samples, "sample_id")
    by_row = _index(rows, "id")
    out = []
    for pair in pairs:
        where = f"pair {pair.pair_id!r}"
        extra = pair.extra
        row = by_row.get(pair.cond_id)

        if "prompt" in extra:
            prompt = extra["prompt"]
        elif row is not None:
            prompt = planner_prompt(dict(row))
        else:
            raise PlannerPairError(
                f"{where}: no prompt (no extra.prompt and no dataset row {pair.cond_id!r})"
            )
        if "images" in extra:
            images = extra["images"]
        elif row is not None:
            images = row.get("images")
        else:
            raise PlannerPairError(
                f"{where}: no images (no extra.images and no dataset row {pair.cond_id!r})"
            )
        if not isinstance(images, (list, tuple)):
            raise PlannerPairError(f"{where}: images must be a list of paths, got {images!r}")
        texts = {}
        for side, sample_id in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            key = f"{side}_text"
            if key in extra:
                texts[side] = extra[key]
            elif sample_id in by_sample:
                texts[side] = by_sample[sample_id].output
            else:
                raise PlannerPairError(
                    f"{where}: no {side} text (no extra.{key} and no sample {sample_id!r})"
                )
            if not isinstance(texts[side], str):
                raise PlannerPairError(
                    f"{where}: the {side} output is not plan text: {texts[side]!r}"
                )
        out.append(
            PlannerPair(
                pair_id=pair.pair_id,
                prompt=prompt,
                chosen=texts["chosen"],
                rejected=texts["rejected"],
                images=tuple(images),
                weak=pair.weak,
            )
        )
    _check_unique(out)
    return out


def _index(items: Any, key: str) -> dict[str, Any]:
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    out = {}
    for item in items:
        out[item[key] if isinstance(item, Mapping) else getattr(item, key)] = item
    return out


def _check_unique(pairs: Sequence[PlannerPair]) -> None:
    seen: set[str] = set()
    for p in pairs:
        if p.pair_id in seen:
            raise PlannerPairError(f"pair {p.pair_id!r}: the id appears twice")
        seen.add(p.pair_id)


def weight_weak_pairs(
    pairs: Sequence[PlannerPair], weight: float, seed: int
) -> tuple[list[PlannerPair], dict[str, int]]:
    """Keep every strong pair and a seeded subset of round(weight * n_weak) weak pairs.

    trl's DPOTrainer averages the per-pair loss without per-pair weights, so down-weighting
    is done by subsampling: over an epoch the weak pairs' share of the loss is scaled by
    about `weight`. The subset depends only on the weak pairs' ids and the seed; the input
    order is kept. Returns the pairs and counts {weak, weak_kept, weak_dropped}.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight: expected a number in [0, 1], got {weight!r}")
    weak_ids = sorted(p.pair_id for p in pairs if p.weak)
    n_keep = round(weight * len(weak_ids))
    kept = set(random.Random(seed).sample(weak_ids, n_keep))
    out = [p for p in pairs if not p.weak or p.pair_id in kept]
    counts = {"weak": len(weak_ids), "weak_kept": n_keep, "weak_dropped": len(weak_ids) - n_keep}
    return out, counts


# ---------------------------------------------------------------- trl format


def to_trl_row(pair: PlannerPair) -> dict[str, Any]:
    """trl's conversational preference row for one pair (images as placeholders)."""
    content: list[dict[str, str]] = [{"type": "image"} for _ in pair.images]
    content.append({"type": "text", "text": pair.prompt})
    return {
        "id": pair.pair_id,
        "prompt": [{"role": "user", "content": content}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}],
        "images": list(pair.images),
    }


def from_trl_row(row: Any, where: str = "row") -> PlannerPair:
    """The pair of a trl row written by `to_trl_row` (checked: one user turn, images then
    text, one assistant text turn per side, as many placeholders as images)."""
    if not isinstance(row, dict):
        raise PlannerPairError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in TRL_KEYS if k not in row]
    if missing:
        raise PlannerPairError(f"{where}: missing key(s) {missing}; a trl row has {list(TRL_KEYS)}")
    loc, where = where, f"{where}: pair {row['id']!r}"
    images = row["images"]
    if not isinstance(images, list):
        raise PlannerPairError(f"{where}: images must be a list of paths")
    prompt = row["prompt"]
    if not (isinstance(prompt, list) and len(prompt) == 1 and _role(prompt[0]) == "user"):
        raise PlannerPairError(f"{where}: prompt must be one user message")
    parts = prompt[0].get("content")
    if not isinstance(parts, list) or not parts or not all(isinstance(x, dict) for x in parts):
        raise PlannerPairError(f"{where}: the user message has no list of content parts")
    n_placeholders = sum(1 for part in parts if part.get("type") == "image")
    if n_placeholders != len(images) or parts[-1].get("type") != "text":
        raise PlannerPairError(
            f"{where}: expected {len(images)} image placeholder(s) followed by the text, got "
            f"{[part.get('type') for part in parts]}"
        )
    texts = {}
    for side in ("chosen", "rejected"):
        turn = row[side]
        if not (isinstance(turn, list) and len(turn) == 1 and _role(turn[0]) == "assistant"):
            raise PlannerPairError(f"{where}: {side} must be one assistant message")
        content = turn[0].get("content")
        if not (
            isinstance(content, list)
            and len(content) == 1
            and isinstance(content[0], dict)
            and "text" in content[0]
        ):
            raise PlannerPairError(f"{where}: {side} must hold one text part")
        texts[side] = content[0]["text"]
    return _located(
        loc,
        pair_id=row["id"],
        prompt=parts[-1].get("text"),
        chosen=texts["chosen"],
        rejected=texts["rejected"],
        images=tuple(images),
    )


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


def write_trl_jsonl(path: Path | str, pairs: Iterable[PlannerPair]) -> None:
    """Write trl's rows as JSONL, replacing `path` atomically."""
    pairs = list(pairs)
    _check_unique(pairs)
    lines = [json.dumps(to_trl_row(p), ensure_ascii=False) + "\n" for p in pairs]
    atomic_write_text(Path(path), "".join(lines))


def read_trl_jsonl(path: Path | str) -> list[PlannerPair]:
    """Read and check a file written by `write_trl_jsonl`; errors name the file and line."""
    path = Path(path)
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlannerPairError(f"{where}: malformed JSON ({e.msg})") from None
        out.append(from_trl_row(row, where))
    _check_unique(out)
    return out


def trl_dataset(pairs: Sequence[PlannerPair], image_root: Path | str) -> datasets.Dataset:
    """A `datasets.Dataset` of trl rows whose `images` decode to RGB PIL images.

    The images are read lazily from `image_root / path`; a missing file is an error naming
    the pair and the path, raised here before training starts.
    """
    import datasets

    root = Path(image_root)
    rows = []
    for pair in pairs:
        row = to_trl_row(pair)
        resolved = []
        for rel in pair.images:
            path = root / rel
            if not path.is_file():
                raise PlannerPairError(f"pair {pair.pair_id!r}: image {path} does not exist")
            resolved.append(str(path.resolve()))
        row["images"] = resolved
        rows.append(row)
    if not rows:
        raise PlannerPairError("no pairs to train on")
    ds = datasets.Dataset.from_list(rows)
    return ds.cast_column("images", datasets.List(datasets.Image(mode="RGB")))


# ---------------------------------------------------------------- Qwen-VL-Series-Finetune


def to_qwen_row(pair: PlannerPair) -> dict[str, Any]:
    """Qwen-VL-Series-Finetune's DPO record for one pair."""
    row: dict[str, Any] = {"id": pair.pair_id}
    if pair.images:
        row["image"] = list(pair.images)
    row["prompt"] = f"{IMAGE_TOKEN}\n" * len(pair.images) + pair.prompt
    row["chosen"] = pair.chosen
    row["rejected"] = pair.rejected
    return row


def from_qwen_row(row: Any, where: str = "item") -> PlannerPair:
    """The pair of a record written by `to_qwen_row`; the `<image>` count must equal the
    number of images."""
    if not isinstance(row, dict):
        raise PlannerPairError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ("id", "prompt", "chosen", "rejected") if k not in row]
    if missing:
        raise PlannerPairError(f"{where}: missing key(s) {missing}")
    loc, where = where, f"{where}: pair {row['id']!r}"
    images = row.get("image", [])
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list):
        raise PlannerPairError(f"{where}: image must be a path or a list of paths")
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise PlannerPairError(f"{where}: prompt must be text")
    found = prompt.count(IMAGE_TOKEN)
    if found != len(images):
        raise PlannerPairError(
            f"{where}: {found} {IMAGE_TOKEN} token(s) for {len(images)} image(s)"
        )
    prefix = f"{IMAGE_TOKEN}\n" * len(images)
    if not prompt.startswith(prefix):
        raise PlannerPairError(f"{where}: the {IMAGE_TOKEN} tokens must all come first")
    return _located(
        loc,
        pair_id=row["id"],
        prompt=prompt[len(prefix) :],
        chosen=row["chosen"],
        rejected=row["rejected"],
        images=tuple(images),
    )


def _located(loc: str, **fields: Any) -> PlannerPair:
    """A PlannerPair whose construction errors are prefixed with the file location."""
    try:
        return PlannerPair(**fields)
    except PlannerPairError as e:
        raise PlannerPairError(f"{loc}: {e}") from None


def write_qwen_json(path: Path | str, pairs: Iterable[PlannerPair]) -> None:
    """Write the Qwen-VL-Series-Finetune JSON list, replacing `path` atomically."""
    pairs = list(pairs)
    _check_unique(pairs)
    text = json.dumps([to_qwen_row(p) for p in pairs], indent=2, ensure_ascii=False)
    atomic_write_text(Path(path), text + "\n")


def read_qwen_json(path: Path | str) -> list[PlannerPair]:
    """Read and check a Qwen-VL-Series-Finetune DPO file; errors name the file and item."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PlannerPairError(f"{path}: malformed JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(items, list):
        raise PlannerPairError(f"{path}: expected a JSON list of records")
    out = [from_qwen_row(item, f"{path}[{i}]") for i, item in enumerate(items)]
    _check_unique(out)
    return out
