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

A trainer that takes the reference on every micro-batch uses an `AdapterSwitch` instead:
it finds the adapter layers once and toggles them with peft's public
`BaseTunerLayer.enable_adapters`, the call `disable_adapter()` makes on each of them after
walking every module of the model, and it leaves train/eval mode alone when no module of
the base model behaves differently in eval mode (no dropout, no batch norm):

    switch = AdapterSwitch(model)
    with switch.reference():
        ref_out = model(*inputs)          # the same numbers as reference_mode(model)

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


# Modules whose forward depends on `training`, found by class. A model whose own modules
# read `self.training` passes `eval_mode=True` to AdapterSwitch.
def _mode_dependent(module: torch.nn.Module) -> bool:
    import torch

    if isinstance(module, torch.nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, torch.nn.MultiheadAttention):
        return module.dropout > 0
    return isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm))


def mode_dependent_modules(model: torch.nn.Module) -> list[str]:
    """Names of the modules outside the adapter layers whose forward depends on
    train/eval mode (dropout with p > 0, batch and instance norm). The adapter's own
    dropout is left out: a disabled adapter does not run it."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    in_adapter: set[int] = set()
    for layer in model.modules():
        if isinstance(layer, BaseTunerLayer):
            for name in (*layer.adapter_layer_names, *layer.other_param_names):
                part = getattr(layer, name, None)
                if isinstance(part, torch.nn.Module):
                    in_adapter.update(id(m) for m in part.modules())
    return [
        name for name, m in model.named_modules() if id(m) not in in_adapter and _mode_dependent(m)
    ]


class AdapterSwitch:
    """The adapter layers of `model`, found once, switched off and on for the reference.

    `reference()` is `reference_mode(model)` without its per-call costs: peft's
    `disable_adapter()` walks every module of the model to find the adapter layers, and the
    eval()/train() pair walks it twice more. Both matter when the reference runs on every
    micro-batch (benchmarks/flow_dpo_step.py). The layers are toggled with the same public
    `enable_adapters(False/True)` that `disable_adapter()` calls, so the adapter's
    parameters end trainable as before. `eval_mode=None` switches to eval mode only when
    `mode_dependent_modules` finds a module that needs it.
    """

    def __init__(self, model: PeftModel, *, eval_mode: bool | None = None) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no adapter layers to switch off")
        self.eval_mode = bool(mode_dependent_modules(model)) if eval_mode is None else eval_mode

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The frozen base model: adapter layers off, no autograd graph, eval mode when
        `eval_mode`."""
        import torch

        was_training = self.model.training
        if self.eval_mode:
            self.model.eval()
        for layer in self.layers:
            layer.enable_adapters(False)
        try:
            with torch.no_grad():
                yield
        finally:
            for layer in self.layers:
                layer.enable_adapters(True)
            if self.eval_mode:
                self.model.train(was_training)


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
