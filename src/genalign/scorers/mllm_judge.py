"""The MLLM judge: a Qwen-VL critic that scores how much generated images help answer a
spatial question (the critic of planner-dpo).

    from genalign.config.judge import JudgeConfig
    from genalign.scorers.mllm_judge import JudgeSample, MLLMJudge
    judge = MLLMJudge(critic_dir, JudgeConfig(method="both"))
    sample = JudgeSample.from_row(row, generated_images=[view_png], root=dataset_dir)
    score, detail = judge.score_plan(sample, "ok")      # or "failed" / "empty"

Methods (`JudgeConfig.method`), all deterministic (eval mode, no sampling):

- confidence: the critic sees the original images, then the generated ones, then the
  question (`JudgeConfig.confidence_prompt`), and the reference answer is teacher-forced
  after the assistant header. With answer tokens a_1..a_n at positions p_1..p_n,

      confidence_logprob = 1/n * sum_i log softmax(logits[p_i - 1])[a_i]

  and the score is exp(confidence_logprob): the geometric mean of the answer's token
  probabilities, in (0, 1].
- explicit: the critic is asked how much the generated images help answer the question
  (`JudgeConfig.explicit_prompt`) and answers greedily; the first integer in 1..10 of its
  answer is the rating s (echoes of the scale such as "1-10", "/10", "out of 10" do not
  count, so "7/10" and "Score: 7" give 7), and the score is (s - 1) / 9 in [0, 1]. An answer
  with no number, or with no integer in 1..10, is a counted failure: score None and
  detail["explicit_error"] = "unparseable: <answer[:80]>" or "out of range: <answer[:80]>".
- both: weight * confidence + (1 - weight) * explicit on that common [0, 1] scale; when
  explicit fails the sample fails too (None), with both methods' details.

Plans (DESIGN.md): a failed generation (the plan did not parse, so nothing was generated)
scores -1.0 and an empty instruction list 0.0 without running the critic (`score_plan`);
on the common scale that is below, and at the bottom of, every valid score.

A sample whose image file is missing, or that has no reference answer when confidence
needs one, fails (None, detail["error"]) and the rest of the batch is scored. Batches:
`JudgeConfig.batch_size` samples per forward pass (right-padded, so the positions and
causal attention of the real tokens are those of the sample alone) or per generate call
(left-padded).

Through the scorer table, `get_scorer("mllm-judge", {"model": ref, ...JudgeConfig keys})`
gives a `Scorer` whose `score_files` reads one JSON request per path ({images, generated,
question, options, answer, plan_status}; image paths relative to the JSON file).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from genalign.config.judge import JudgeConfig
from genalign.generators.planner import MissingImageError
from genalign.models.vlm import model_type
from genalign.scorers.base import ObjectScore

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    ImageLike = np.ndarray | str | Path | Image.Image

PlanStatus = Literal["ok", "failed", "empty"]

# A plan that failed to parse, and a plan with nothing to execute (DESIGN.md).
FAILED_SCORE = -1.0
EMPTY_SCORE = 0.0
PLAN_STATUSES = ("ok", "failed", "empty")

# Explicit ratings live on 1..10 (the planner-dpo issue).
EXPLICIT_MIN, EXPLICIT_MAX = 1, 10
# The scale repeated back ("on a scale of 1-10", "1 to 10", "7/10", "7 out of 10") is not a
# rating; it is removed before the first number is read.
_SCALE_ECHO = re.compile(r"\b1\s*(?:-|–|to)\s*10\b|(?:/|\bout\s+of)\s*10\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# Processor outputs that run along the token sequence (padded in a batch); the others hold
# the images' patches and grids, concatenated along their first axis.
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
_IMAGE_KEYS = ("pixel_values", "image_grid_thw")


class ExplicitParseError(ValueError):
    """A critic's explicit answer without a usable 1-10 rating; str() is the detail text."""


def parse_explicit(text: str) -> int:
    """The first integer in 1..10 of a critic's answer, ignoring echoes of the scale.

    Raises ExplicitParseError("unparseable: ...") when the answer holds no number and
    ExplicitParseError("out of range: ...") when none of its numbers is an integer in 1..10.
    """
    numbers = _NUMBER.findall(_SCALE_ECHO.sub(" ", text))
    for number in numbers:
        if "." not in number and EXPLICIT_MIN <= int(number) <= EXPLICIT_MAX:
            return int(number)
    reason = "out of range" if numbers else "unparseable"
    raise ExplicitParseError(f"{reason}: {text[:80]}")


def confidence_to_unit(mean_logprob: float) -> float:
    """exp(mean token log-probability): the geometric-mean token probability, in (0, 1]."""
    if not math.isfinite(mean_logprob) or mean_logprob > 1e-6:
        raise ValueError(f"a mean log-probability must be finite and <= 0, got {mean_logprob}")
    return math.exp(min(mean_logprob, 0.0))


def explicit_to_unit(rating: int) -> float:
    """A 1..10 rating on [0, 1]: (s - 1) / 9."""
    if not EXPLICIT_MIN <= rating <= EXPLICIT_MAX:
        raise ValueError(f"an explicit rating must be in 1..10, got {rating}")
    return (rating - EXPLICIT_MIN) / (EXPLICIT_MAX - EXPLICIT_MIN)


def combine(
    cfg: JudgeConfig,
    confidence: tuple[float, int] | None = None,
    explicit_answer: str | None = None,
) -> tuple[float | None, dict[str, Any]]:
    """(score, detail) of one sample from what the critic produced for `cfg.method`.

    `confidence`: (mean log-probability, answer token count); `explicit_answer`: the
    critic's text. Score None exactly when the explicit answer has no usable rating.
    """
    detail: dict[str, Any] = {"method": cfg.method}
    parts: dict[str, float] = {}
    if cfg.method in ("confidence", "both"):
        if confidence is None:
            raise ValueError(f"combine: method {cfg.method!r} needs the confidence")
        logprob, n_tokens = confidence
        parts["confidence"] = confidence_to_unit(logprob)
        detail.update(
            confidence_logprob=logprob, confidence=parts["confidence"], answer_tokens=n_tokens
        )
    if cfg.method in ("explicit", "both"):
        if explicit_answer is None:
            raise ValueError(f"combine: method {cfg.method!r} needs the explicit answer")
        detail["explicit_answer"] = explicit_answer[:200]
        try:
            rating = parse_explicit(explicit_answer)
        except ExplicitParseError as e:
            detail["explicit_error"] = str(e)
            return None, detail
        parts["explicit"] = explicit_to_unit(rating)
        detail.update(explicit_rating=rating, explicit=parts["explicit"])
    if cfg.method == "both":
        detail["weight"] = cfg.weight
        return cfg.weight * parts["confidence"] + (1.0 - cfg.weight) * parts["explicit"], detail
    return parts[cfg.method], detail


def plan_score(plan_status: str) -> tuple[float, dict[str, Any]] | None:
    """The fixed score of a plan that ran nothing: -1.0 failed, 0.0 empty; None for "ok"."""
    if plan_status not in PLAN_STATUSES:
        raise ValueError(f"plan_status {plan_status!r}: valid are {list(PLAN_STATUSES)}")
    if plan_status == "failed":
        return FAILED_SCORE, {"outcome": "failed"}
    if plan_status == "empty":
        return EMPTY_SCORE, {"outcome": "empty"}
    return None


@dataclasses.dataclass(frozen=True)
class JudgeSample:
    """What the critic sees for one rollout. Images: uint8 arrays [H, W, 3] (or [H, W],
    [H, W, 4]), PIL images, or paths to image files."""

    original_images: Sequence[ImageLike]
    generated_images: Sequence[ImageLike]
    question: str
    options: Sequence[str] = ()
    answer: str = ""  # the reference answer text, teacher-forced by the confidence method
    id: str | None = None

    @classmethod
    def from_row(
        cls,
        row: dict[str, Any],
        generated_images: Sequence[ImageLike] = (),
        root: Path | str | None = None,
    ) -> JudgeSample:
        """A spatial-QA row ({id, images, question, options, answer}); its relative image
        paths are read from `root`."""
        root = Path(root) if root is not None else Path()
        return cls(
            original_images=[root / p for p in row["images"]],
            generated_images=list(generated_images),
            question=row["question"],
            options=list(row.get("options") or []),
            answer=row.get("answer") or "",
            id=row.get("id"),
        )


def prompt_text(template: str, sample: JudgeSample) -> str:
    """A prompt template filled in for `sample` (placeholders: config.judge.PLACEHOLDERS)."""
    options = "".join(f"{o}\n" for o in sample.options)
    return template.format(
        question=sample.question,
        options=f"Options:\n{options}" if options else "",
        answer=sample.answer,
        n_original=len(sample.original_images),
        n_generated=len(sample.generated_images),
    )


def to_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from an array, a PIL image or a path (MissingImageError if absent)."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"image array: expected uint8 [H, W] or [H, W, C], got {image.dtype} {image.shape}"
            )
        return Image.fromarray(image).convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise MissingImageError(f"image {path} does not exist")
    with Image.open(path) as im:
        return im.convert("RGB")


def collate(
    items: list[dict[str, torch.Tensor]], pad_id: int, side: str
) -> dict[str, torch.Tensor]:
    """One batch from batch-size-1 processor outputs: sequence tensors padded on `side`
    (input_ids with `pad_id`, the rest with 0), image tensors concatenated in order."""
    import torch

    if len(items) == 1:
        return dict(items[0])
    length = max(it["input_ids"].shape[1] for it in items)
    batch: dict[str, torch.Tensor] = {}
    for key in dict.fromkeys(k for it in items for k in it):
        if key in _IMAGE_KEYS:
            batch[key] = torch.cat([it[key] for it in items if key in it], dim=0)
            continue
        if key not in _SEQUENCE_KEYS:
            raise ValueError(f"collate: unknown processor output {key!r}")
        rows = []
        for it in items:
            seq = it[key]  # [1, L]
            pad = seq.new_full((1, length - seq.shape[1]), pad_id if key == "input_ids" else 0)
            rows.append(torch.cat([seq, pad] if side == "right" else [pad, seq], dim=1))
        batch[key] = torch.cat(rows, dim=0)  # [B, length]
    return batch


class MLLMJudge:
    """The critic MLLM as a scorer (higher is better). The model loads on first use."""

    name = "mllm-judge"
    higher_is_better = True

    def __init__(
        self,
        model_dir: Path | str,
        cfg: JudgeConfig | None = None,
        *,
        adapter_dir: Path | str | None = None,
        device: str = "cpu",
    ) -> None:
        self.model_dir = Path(model_dir)
        model_type(self.model_dir)  # an unknown or missing model fails here, not mid-run
        self.cfg = cfg or JudgeConfig()
        self.adapter_dir = adapter_dir
        self.device = device
        self._loaded: tuple[Any, Any] | None = None

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> MLLMJudge:
        """From the scorer table's config: "model" (a model reference, `models.refs`), an
        optional "adapter" directory and "device", the rest `JudgeConfig` keys."""
        from genalign.models.refs import resolve

        cfg = dict(cfg)
        if "model" not in cfg:
            raise ValueError(
                "mllm-judge: the config needs 'model', a model reference "
                "(a directory, tiny://, s3://, mlflow:// or hf://)"
            )
        model = resolve(cfg.pop("model"))
        adapter, device = cfg.pop("adapter", None), cfg.pop("device", "cpu")
        return cls(model, JudgeConfig.from_dict(cfg), adapter_dir=adapter, device=device)

    @property
    def model(self) -> Any:
        return self._load()[0]

    @property
    def processor(self) -> Any:
        return self._load()[1]

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from genalign.models.vlm import load_vlm

            self._loaded = load_vlm(
                self.model_dir, adapter_dir=self.adapter_dir, device=self.device
            )
        return self._loaded

    def score(self, sample: JudgeSample) -> tuple[float | None, dict[str, Any]]:
        """(score on [0, 1] or None for a counted failure, detail) of one sample."""
        return self.score_many([sample])[0]

    def score_plan(
        self, sample: JudgeSample, plan_status: PlanStatus
    ) -> tuple[float | None, dict[str, Any]]:
        """`score`, except that a failed plan scores -1.0 and an empty one 0.0 unjudged."""
        return self.score_plans([sample], [plan_status])[0]

    def score_plans(
        self, samples: Sequence[JudgeSample], plan_statuses: Sequence[str]
    ) -> list[tuple[float | None, dict[str, Any]]]:
        """`score_plan` for many samples; only the "ok" ones go to the critic, in batches."""
        if len(samples) != len(plan_statuses):
            raise ValueError(f"score_plans: {len(samples)} samples, {len(plan_statuses)} statuses")
        fixed = [plan_score(s) for s in plan_statuses]
        judged = iter(self.score_many([s for s, f in zip(samples, fixed) if f is None]))
        results = []
        for f in fixed:
            if f is None:
                score, detail = next(judged)
                f = (score, {"outcome": "ok", **detail})
            results.append(f)
        return results

    def score_many(
        self, samples: Sequence[JudgeSample]
    ) -> list[tuple[float | None, dict[str, Any]]]:
        """`score` for many samples, `cfg.batch_size` at a time."""
        method = self.cfg.method
        results: list[tuple[float | None, dict[str, Any]] | None] = [None] * len(samples)
        images: dict[int, list[Image.Image]] = {}
        for i, s in enumerate(samples):
            try:
                images[i] = [to_image(x) for x in (*s.original_images, *s.generated_images)]
            except MissingImageError as e:
                results[i] = (None, {"method": method, "error": f"sample {s.id!r}: {e}"})
                continue
            if method != "explicit" and not s.answer:
                results[i] = (None, {"method": method, "error": f"sample {s.id!r}: no answer"})
                del images[i]
            elif method != "confidence" and not s.generated_images:
                # Nothing to rate: the question "how much do the new images help" has no
                # answer, and a made-up rating would be a wrong score.
                results[i] = (None, {"method": method, "explicit_error": "no generated images"})
                del images[i]
        todo = sorted(images)
        confidence: dict[int, tuple[float, int]] = {}
        explicit: dict[int, str] = {}
        if todo and method in ("confidence", "both"):
            confidence = self._confidence({i: (samples[i], images[i]) for i in todo})
        if todo and method in ("explicit", "both"):
            explicit = self._explicit({i: (samples[i], images[i]) for i in todo})
        for i in todo:
            results[i] = combine(self.cfg, confidence.get(i), explicit.get(i))
        return results  # type: ignore[return-value]

    def answer(self, samples: Sequence[JudgeSample]) -> list[str]:
        """The critic's answer to each sample's question: the option letter whose
        teacher-forced log-probability after the confidence prompt is highest."""
        from genalign.data.mmsi import LETTERS

        work, keys = {}, []
        for i, s in enumerate(samples):
            if not s.options:
                raise ValueError(f"answer: sample {s.id!r} has no options to choose from")
            imgs = [to_image(x) for x in (*s.original_images, *s.generated_images)]
            for letter in LETTERS[: len(s.options)]:
                keys.append((i, letter))
                work[len(keys) - 1] = (dataclasses.replace(s, answer=letter), imgs)
        logps = self._confidence(work)
        best: dict[int, tuple[float, str]] = {}
        for k, (i, letter) in enumerate(keys):
            if i not in best or logps[k][0] > best[i][0]:
                best[i] = (logps[k][0], letter)
        return [best[i][1] for i in range(len(samples))]

    def _batches(self, work: dict[int, Any]) -> list[list[int]]:
        keys = list(work)
        size = self.cfg.batch_size
        return [keys[j : j + size] for j in range(0, len(keys), size)]

    def _confidence(
        self, work: dict[int, tuple[JudgeSample, list[Image.Image]]]
    ) -> dict[int, tuple[float, int]]:
        """Mean log-probability and token count of each sample's teacher-forced answer."""
        import torch

        from genalign.models.vlm import chat_inputs

        model, processor = self._load()
        out: dict[int, tuple[float, int]] = {}
        for keys in self._batches(work):
            items = []
            for i in keys:
                sample, imgs = work[i]
                text = prompt_text(self.cfg.confidence_prompt, sample)
                items.append(chat_inputs(processor, imgs, text, answer=sample.answer))
            # Right padding: each sample's tokens keep the positions they have alone.
            batch = collate([it.inputs for it in items], processor.tokenizer.pad_token_id, "right")
            with torch.inference_mode():
                logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits
            for row, (i, it) in enumerate(zip(keys, items)):
                pos = it.answer_positions  # [A]
                targets = batch["input_ids"][row, pos].to(logits.device)  # [A]
                logp = torch.log_softmax(logits[row, pos - 1].float(), dim=-1)  # [A, V]
                token_logp = logp.gather(-1, targets[:, None])[:, 0]  # [A]
                out[i] = (float(token_logp.mean()), len(pos))
        return out

    def _explicit(self, work: dict[int, tuple[JudgeSample, list[Image.Image]]]) -> dict[int, str]:
        """Each sample's greedy answer to the explicit 1-10 question (special tokens dropped)."""
        import torch

        from genalign.models.vlm import chat_inputs

        model, processor = self._load()
        pad_id = processor.tokenizer.pad_token_id
        out: dict[int, str] = {}
        for keys in self._batches(work):
            items = []
            for i in keys:
                sample, imgs = work[i]
                text = prompt_text(self.cfg.explicit_prompt, sample)
                items.append(chat_inputs(processor, imgs, text).inputs)
            # Left padding: generation continues every row from its last real token.
            batch = collate(items, pad_id, "left")
            with torch.inference_mode():
                generated = model.generate(
                    **{k: v.to(model.device) for k, v in batch.items()},
                    do_sample=False,
                    max_new_tokens=self.cfg.max_new_tokens,
                    pad_token_id=pad_id,
                )
            new = generated[:, batch["input_ids"].shape[1] :]  # [B, T]
            texts = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
            out.update(zip(keys, (t.strip() for t in texts)))
        return out

    def score_files(self, paths: list[Path]) -> list[ObjectScore]:
        """The Scorer protocol: one JSON request per path ({images, generated, question,
        options, answer, plan_status ("ok" by default)}, image paths relative to the file).
        A request that does not read, or a counted failure, gives a failed ObjectScore."""
        samples: list[JudgeSample] = []
        statuses: list[str] = []
        bad: dict[int, str] = {}
        for n, path in enumerate(map(Path, paths)):
            try:
                request = json.loads(path.read_text())
                generated = [path.parent / p for p in request.get("generated", [])]
                sample = JudgeSample.from_row(request, generated, path.parent)
                status = request.get("plan_status", "ok")
                plan_score(status)
            # One unreadable request is that request's failure, not the batch's.
            except (OSError, ValueError, KeyError, TypeError) as e:
                bad[n] = f"{path}: {type(e).__name__}: {e}"
                sample, status = JudgeSample([], [], ""), "failed"
            samples.append(sample)
            statuses.append(status)
        results = []
        for n, (score, detail) in enumerate(self.score_plans(samples, statuses)):
            numbers = {
                k: v
                for k, v in detail.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            if n in bad:
                results.append(ObjectScore.failed(bad[n]))
            elif score is None:
                error = detail.get("explicit_error") or detail.get("error")
                results.append(ObjectScore(None, numbers, "failed", f"{paths[n]}: {error}"))
            else:
                results.append(ObjectScore(score, numbers))
        return results
