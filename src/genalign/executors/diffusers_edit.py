"""The real-data executor: a diffusers image generator edits the input image as instructed.

For each planner instruction ("view from the back at a high angle") the pipeline named in
`DiffusersEditConfig.pipeline` (Flux.2 Klein by default) is conditioned on the row's first
input image and prompted with `prompt_template` filled with the instruction (and the
row's question); the result is a `size` x `size` uint8 image.

    >>> from genalign.executors import get_executor
    >>> ex = get_executor("diffusers-edit", {"model": "/models/flux2-klein-4b"})
    >>> row = {**dataset_row, "image_paths": [dataset / rel for rel in dataset_row["images"]]}
    >>> ex.execute(row, "view from the back").image.shape
    (512, 512, 3)

Outcomes. An instruction whose input image cannot be read, or whose generation raises, is
status "failed" with the reason; one slower than `timeout_s` is "timeout" (the call runs
in a daemon thread and is asked to stop at its next denoising step). What no instruction
could survive is raised instead, so the stage fails before counting every instruction as
failed: `GPUUnavailableError` at construction for device "cuda" on a machine without
CUDA, and the model's load error (an unresolvable reference, a directory that is not a
pipeline) at the first `execute`, where the pipeline is loaded.

Each image's generator is seeded with crc32(seed, row id, instruction), so a rerun, or
another process, reproduces it, and two instructions of one row start from different noise.
"""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genalign.config.diffusers_edit import DiffusersEditConfig
from genalign.executors.base import ExecutionResult

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class GPUUnavailableError(RuntimeError):
    """The config asks for a CUDA device and this machine has none."""


def image_seed(seed: int, row_id: str, instruction: str) -> int:
    """The generator seed of one (row, instruction): stable across processes and machines
    (Python's `hash` of a str is salted per process, crc32 is not)."""
    return zlib.crc32(f"{seed}\x00{row_id}\x00{instruction}".encode())


class DiffusersEditExecutor:
    """Edits a dataset row's first input image with a diffusers pipeline, one instruction
    at a time. The pipeline is loaded on the first `execute`."""

    name = "diffusers-edit"

    def __init__(self, cfg: DiffusersEditConfig):
        import diffusers
        import torch

        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise GPUUnavailableError(
                f"executor diffusers-edit is configured with device 'cuda' to run {cfg.model} "
                "but CUDA is not available on this machine: run the stage on a GPU node, or "
                "set device 'cpu' (tiny models only)"
            )
        try:
            pipeline_class = getattr(diffusers, cfg.pipeline)
        except AttributeError:
            raise ValueError(
                f"diffusers {diffusers.__version__} has no pipeline class {cfg.pipeline!r}"
            ) from None
        if not (
            isinstance(pipeline_class, type)
            and issubclass(pipeline_class, diffusers.DiffusionPipeline)
        ):
            raise TypeError(f"diffusers.{cfg.pipeline} is not a DiffusionPipeline class")
        self.cfg = cfg
        self._pipeline_class = pipeline_class
        self._pipe: DiffusionPipeline | None = None
        # One generation at a time: an abandoned (timed-out) call still holds the pipeline
        # and its scheduler state until it stops at its next step.
        self._lock = threading.Lock()

    def pipeline(self) -> DiffusionPipeline:
        """The loaded pipeline (loads it on the first call)."""
        if self._pipe is None:
            import torch

            from genalign.models.refs import resolve

            pipe = self._pipeline_class.from_pretrained(
                resolve(self.cfg.model), dtype=getattr(torch, self.cfg.dtype)
            )
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe.to(self.cfg.device)
        return self._pipe

    def prompt(self, scene: dict[str, Any], instruction: str) -> str:
        return self.cfg.prompt_template.format(
            instruction=instruction, question=scene.get("question", "")
        )

    def execute(self, scene: dict[str, Any], instruction: str) -> ExecutionResult:
        """Edit `scene["image_paths"][0]` as `instruction` asks. `scene` is a dataset row
        (id, question, ...) with "image_paths", the absolute paths of its images."""
        import torch
        from PIL import Image

        pipe = self.pipeline()
        start = time.perf_counter()
        paths = scene["image_paths"]
        if not paths:
            return ExecutionResult(
                "failed", error=f"row {scene['id']!r} has no input image", elapsed_s=0.0
            )
        try:
            with Image.open(Path(paths[0])) as f:
                image = f.convert("RGB")
        except OSError as e:
            return ExecutionResult(
                "failed",
                error=f"cannot read the input image {paths[0]}: {type(e).__name__}: {e}",
                elapsed_s=time.perf_counter() - start,
            )
        prompt = self.prompt(scene, instruction)
        generator = torch.Generator("cpu").manual_seed(
            image_seed(self.cfg.seed, scene["id"], instruction)
        )
        deadline = start + self.cfg.timeout_s
        box: dict[str, Any] = {}

        def stop_past_deadline(p: Any, step: int, timestep: Any, kwargs: dict) -> dict:
            # diffusers' documented way to end a generation early: the loop skips the
            # remaining steps once `_interrupt` is set.
            if time.perf_counter() > deadline:
                p._interrupt = True
            return kwargs

        def work() -> None:
            try:
                with self._lock:
                    out = pipe(
                        image=image,
                        prompt=prompt,
                        height=self.cfg.size,
                        width=self.cfg.size,
                        num_inference_steps=self.cfg.steps,
                        guidance_scale=self.cfg.guidance_scale,
                        generator=generator,
                        output_type="pil",
                        callback_on_step_end=stop_past_deadline,
                    )
                box["image"] = np.asarray(out.images[0].convert("RGB"), dtype=np.uint8)
            except Exception as e:  # noqa: BLE001 -- reported as a failed execution, never raised
                box["error"] = f"{type(e).__name__}: {e}"

        thread = threading.Thread(target=work, name=f"diffusers-edit {scene['id']}", daemon=True)
        thread.start()
        thread.join(self.cfg.timeout_s)
        elapsed = time.perf_counter() - start
        if thread.is_alive():
            return ExecutionResult(
                "timeout",
                error=f"editing row {scene['id']!r} with {instruction!r} took longer than "
                f"{self.cfg.timeout_s} s",
                elapsed_s=elapsed,
            )
        if "error" in box:
            return ExecutionResult("failed", error=box["error"], elapsed_s=elapsed)
        return ExecutionResult("ok", image=box["image"], elapsed_s=elapsed)
