"""An exponential moving average (EMA) of a model's trainable parameters.

After each optimizer step, update k = 1, 2, ... moves every shadow tensor toward its
parameter:

    shadow <- d_k * shadow + (1 - d_k) * param

with the decay warmed up so that the early, random-init weights are forgotten quickly
(timm's `ModelEmaV3.get_decay` in `timm/utils/model_ema.py` of
huggingface/pytorch-image-models@7479d451a6dfd8af27f941b8e82a7402461fae80, after
K. Crowson's warm-up):

    d_1 = 0                                               (the shadow starts as the weights)
    d_k = clip(1 - (1 + (k - 1) / inv_gamma) ** -power, min_decay, decay)    with warmup
    d_k = decay                                                              without

inv_gamma = 1, power = 1 make the warm-up a plain running mean (d_k = 1 - 1/k); power
2/3 reaches 0.999 after about 31.6k updates, power 3/4 after about 10k. The defaults
inv_gamma = 1, power = 2/3 are timm's.

    ema = EMA(model, decay=0.999)
    for batch in data:
        ...; optimizer.step(); ema.update(model)
    with ema.apply_to(model):
        evaluate(model)                      # EMA weights in, the trained ones back after

Only parameters are averaged (those with requires_grad when the EMA is made: the
adapter of a peft model); buffers (BatchNorm statistics) are the model's own.
`state_dict()` is tensors only, so it goes into a checkpoint's safetensors as it is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

NUM_UPDATES = "num_updates"
_SHADOW = "shadow."


class EMA:
    """Shadow copies of `model`'s trainable parameters, averaged by `update(model)`."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        decay: float,
        warmup: bool = True,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
        min_decay: float = 0.0,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected 0 <= decay < 1, got {decay}")
        if not 0.0 <= min_decay <= decay:
            raise ValueError(
                f"min_decay: expected 0 <= min_decay <= decay ({decay}), got {min_decay}"
            )
        if not (inv_gamma > 0 and power > 0 and math.isfinite(inv_gamma) and math.isfinite(power)):
            raise ValueError(
                f"inv_gamma and power must be finite and > 0, got {inv_gamma}, {power}"
            )
        self.decay = decay
        self.warmup = warmup
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_decay = min_decay
        self.num_updates = 0
        with torch.no_grad():
            self.shadow = {
                n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
            }
        if not self.shadow:
            raise ValueError("EMA: the model has no trainable parameters")

    def decay_at(self, k: int) -> float:
        """The decay d_k of update number k (1-based)."""
        if k < 1:
            raise ValueError(f"decay_at: updates count from 1, got {k}")
        if k == 1:
            return 0.0
        if not self.warmup:
            return self.decay
        warm = 1.0 - (1.0 + (k - 1) / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(warm, self.decay))

    def _params(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        params = dict(model.named_parameters())
        missing = sorted(set(self.shadow) - set(params))
        if missing:
            raise ValueError(f"EMA: the model has no parameter(s) {missing[:5]}")
        return {n: params[n] for n in self.shadow}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> float:
        """Average `model`'s current parameters in; returns the decay used."""
        self.num_updates += 1
        d = self.decay_at(self.num_updates)
        for name, param in self._params(model).items():
            self.shadow[name].lerp_(param.detach().to(self.shadow[name].dtype), 1.0 - d)
        return d

    @contextlib.contextmanager
    def apply_to(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Within the block `model` holds the EMA weights; its own come back on exit (also
        on an exception)."""
        params = self._params(model)
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in params.items()}
            for name, param in params.items():
                param.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(saved[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"shadow.<param name>": tensor, "num_updates": int64 scalar}: tensors only."""
        state = {_SHADOW + n: t for n, t in self.shadow.items()}
        state[NUM_UPDATES] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned, for the same parameter names."""
        if NUM_UPDATES not in state:
            raise ValueError(f"EMA state has no {NUM_UPDATES!r} entry")
        names = {k[len(_SHADOW) :] for k in state if k.startswith(_SHADOW)}
        if names != set(self.shadow):
            missing, unexpected = sorted(set(self.shadow) - names), sorted(names - set(self.shadow))
            raise ValueError(
                f"EMA state does not match the model's parameters (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]})"
            )
        with torch.no_grad():
            for name, tensor in self.shadow.items():
                tensor.copy_(state[_SHADOW + name])
        self.num_updates = int(state[NUM_UPDATES])
