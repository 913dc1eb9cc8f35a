"""Planner rollouts: K sampled plans per spatial question from a Qwen-VL planner.

    from genalign.config.planner import PlannerSamplingConfig
    from genalign.models.vlm import load_vlm
    model, processor = load_vlm(model_dir)
    sampler = PlannerSampler(model, processor, PlannerSamplingConfig(k=8))
    plans = sampler.sample(rows, root=dataset_dir)  # plans[i][j]: rollout j of rows[i]

A row is a spatial-QA sample ({id, images, question, options, ...}); its images are read
from `root / path`. The prompt (`genalign.data.planner_prompt`) shows the images, the
question and its options, and asks for `<thinking>...</thinking><instructions>
<instruction>...</instruction>...</instructions>`. Returned texts are the raw
generations (cut at the end-of-turn token); `genalign.generators.plan_format.parse_plan`
checks their format.

Determinism: rollout j of row `id` samples with its own torch.Generator, seeded from
(seed, id, j). The rollouts of one row share the prompt, so they are batched without
padding, and each row is generated on its own: a rollout's text depends on its seed only,
not on the other rows or on the batch size.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genalign.config.planner import PlannerSamplingConfig
from genalign.data.planner_prompt import planner_prompt

if TYPE_CHECKING:
    import torch
    from PIL import Image


class MissingImageError(FileNotFoundError):
    """A dataset row names an image file that does not exist."""


def load_images(row: dict, root: Path | str | None = None) -> list[Image.Image]:
    """The row's images as RGB PIL images, read from `root / path`."""
    from PIL import Image

    root = Path(root) if root is not None else Path()
    images = []
    for rel in row["images"]:
        path = root / rel
        if not path.is_file():
            raise MissingImageError(f"row {row.get('id')!r}: image {path} does not exist")
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return images


def rollout_seed(seed: int, row_id: str, j: int) -> int:
    """The sampling seed of rollout j of a row: a function of (seed, id, j) only."""
    import numpy as np

    # crc32: a stable hash of the id (Python's hash() changes between processes).
    state = np.random.SeedSequence([seed, zlib.crc32(str(row_id).encode()), j])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> 1)


class PlannerSampler:
    """Samples plans from a Qwen-VL planner (`load_vlm`'s model and processor)."""

    def __init__(self, model: Any, processor: Any, cfg: PlannerSamplingConfig) -> None:
        self.model = model
        self.processor = processor
        self.cfg = cfg
        eos = model.generation_config.eos_token_id
        if eos is None:
            raise ValueError("PlannerSampler: the model's generation_config has no eos_token_id")
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos)
        pad = model.generation_config.pad_token_id
        self.pad_id = pad if pad is not None else processor.tokenizer.pad_token_id

    def sample(
        self,
        rows: list[dict],
        k: int | None = None,
        seed: int | None = None,
        *,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        root: Path | str | None = None,
    ) -> list[list[str]]:
        """K plans per row (arguments left None come from the config); `[len(rows)][k]`."""
        k = self.cfg.k if k is None else k
        seed = self.cfg.seed if seed is None else seed
        temperature = self.cfg.temperature if temperature is None else temperature
        max_new_tokens = self.cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        if k < 1:
            raise ValueError(f"k: expected an integer >= 1, got {k}")
        out = []
        for i, row in enumerate(rows):
            for key in ("id", "images", "question"):
                if key not in row:
                    raise KeyError(f"row {i}: missing key {key!r}")
            seeds = [rollout_seed(seed, row["id"], j) for j in range(k)]
            out.append(self._sample_row(row, seeds, temperature, max_new_tokens, root))
        return out

    def _sample_row(
        self,
        row: dict,
        seeds: list[int],
        temperature: float,
        max_new_tokens: int,
        root: Path | str | None,
    ) -> list[str]:
        import torch

        from genalign.models.vlm import chat_inputs

        images = load_images(row, root)
        prompt = chat_inputs(self.processor, images, planner_prompt(row)).inputs
        device = self.model.device
        texts = []
        for start in range(0, len(seeds), self.cfg.batch_size):
            chunk = seeds[start : start + self.cfg.batch_size]
            inputs = {k: _repeat(v, len(chunk)).to(device) for k, v in prompt.items()}
            generators = [torch.Generator(device=device).manual_seed(s) for s in chunk]
            with torch.no_grad():
                ids = self._generate(inputs, generators, temperature, max_new_tokens)
            new = ids[:, prompt["input_ids"].shape[1] :]  # [B, T_new]
            texts.extend(self._decode(row_tokens) for row_tokens in new.tolist())
        return texts

    def _generate(
        self,
        inputs: dict[str, torch.Tensor],
        generators: list[torch.Generator],
        temperature: float,
        max_new_tokens: int,
    ) -> torch.Tensor:
        from transformers import GenerationConfig, LogitsProcessorList

        # Greedy search over logits that our processor has reduced to one allowed token
        # per row: generate keeps its cache and M-RoPE handling, the draw stays per row.
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        processors = LogitsProcessorList(
            [_PerRowSampling(generators, temperature)] if temperature > 0 else []
        )
        return self.model.generate(**inputs, generation_config=config, logits_processor=processors)

    def _decode(self, tokens: list[int]) -> str:
        for n, t in enumerate(tokens):
            if t in self.eos_ids:
                tokens = tokens[:n]
                break
        # Special tokens (image placeholders a weak model may emit) are dropped: a plan
        # is text, and a stray <|image_pad|> would break the processor downstream.
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    """Batch-of-one inputs to a batch of n: the rows of a 2-D [1, L] tensor, or the
    stacked patches / grids of one sample's images ([P, D], [I, 3]) n times."""
    return x.repeat(n, *([1] * (x.dim() - 1)))


class _PerRowSampling:
    """Logits processor: draws each row's next token from softmax(scores / T) with that
    row's own generator and leaves only that token allowed."""

    def __init__(self, generators: list[torch.Generator], temperature: float) -> None:
        self.generators = generators
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # [B, V]
        picks = torch.stack(
            [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)]
        )  # [B, 1]
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picks, 0.0)
