"""LoRA / DoRA adapters with peft: the config, attaching it, the reference, saving.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685) and DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank
Adaptation", arXiv:2402.09353; peft's `use_dora`) from the fields every adapter trainer's
config has: `rank`, `alpha`, `dropout`, `adapter` ("lora" or "dora").

The DPO reference is the policy with its adapter switched off
(`PeftModel.disable_adapter()`), so one copy of the base weights serves both:

    model = attach_adapter(base, lora_config(cfg, cfg.target_modules))
    with reference_mode(model):
        ref_out = model(*inputs)          # the frozen base model, no autograd graph

peft is imported inside the functions that use it, torch inside `reference_mode`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig, PeftModel

ADAPTER_TYPES = ("lora", "dora")


class AdapterFields(Protocol):
    """The config fields `lora_config` reads (FlowDPOConfig, LMDPOConfig)."""

    rank: int
    alpha: float
    dropout: float
    adapter: str


def lora_config(cfg: AdapterFields, target_modules: Sequence[str]) -> LoraConfig:
    """peft `LoraConfig` for `cfg` on `target_modules` (module names or suffixes); DoRA when
    `cfg.adapter == "dora"`; no bias is trained."""
    from peft import LoraConfig

    if cfg.adapter not in ADAPTER_TYPES:
        raise ValueError(
            f"adapter: {cfg.adapter!r} has no peft adapter config; "
            f"expected one of {list(ADAPTER_TYPES)}"
        )
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(target_modules),
        use_dora=cfg.adapter == "dora",
        bias="none",
    )


def attach_adapter(model: torch.nn.Module, lora: LoraConfig) -> PeftModel:
    """Freeze `model` and wrap it with a fresh adapter (peft `get_peft_model`). lora_A is
    initialised from torch's global RNG: seed it first for a reproducible adapter."""
    from peft import get_peft_model

    return get_peft_model(model, lora)


@contextlib.contextmanager
def reference_mode(model: PeftModel) -> Iterator[None]:
    """The frozen base model: adapter off, eval mode, no autograd graph."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter():
            yield
    finally:
        model.train(was_training)


def save_adapter_dir(model: PeftModel, out_dir: Path) -> None:
    """Write the peft adapter (`save_pretrained`: adapter_config.json,
    adapter_model.safetensors, README.md) into `out_dir`, each file renamed into place from
    a temporary sibling, so a reader sees an old file or a whole new one. Files already in
    `out_dir` stay (checkpoints, the model card)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".adapter.", suffix=".tmp"))
    try:
        model.save_pretrained(str(tmp))
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
