"""An SDXL U-Net's LoRA / DoRA adapter in the two formats people load it with.

    save_peft_adapter(peft_unet, "out/peft")          # PeftModel.from_pretrained(pipe.unet, dir)
    save_diffusers_lora(peft_unet, "out/diffusers")   # pipe.load_lora_weights(dir)

`peft_unet` is the `PeftModel` that `peft.get_peft_model(pipe.unet, LoraConfig(...))`
returns (genalign.trainers.image_dspo trains one), with its one adapter "default".

peft format: peft's own `save_pretrained` directory, adapter_config.json and
adapter_model.safetensors (keys "base_model.model.<module>.lora_A.weight", ...), which
`PeftModel.from_pretrained(unet, dir)` injects into any UNet2DConditionModel of the same
architecture.

diffusers format: one file `pytorch_lora_weights.safetensors`, the file diffusers' SDXL
training scripts write and `StableDiffusionXLPipeline.load_lora_weights(dir)` reads. It is
written by diffusers itself, `StableDiffusionXLPipeline.save_lora_weights(dir,
unet_lora_layers=..., unet_lora_adapter_metadata=...)`, with these tensors:

    unet.<module>.lora_A.weight            [r, in]
    unet.<module>.lora_B.weight            [out, r]
    unet.<module>.lora_magnitude_vector    [out]      DoRA only

and the adapter's LoraConfig as JSON under the safetensors header key
"lora_adapter_metadata" ({"unet.r": 32, "unet.lora_alpha": 32.0, "unet.use_dora": true,
"unet.target_modules": [...], ...}). Why these names (diffusers 0.42, the pinned version):

- "unet." prefix: `load_lora_weights` hands the state dict to
  `UNet2DConditionModel.load_lora_adapter(prefix="unet")`, which keeps the keys that start
  with "unet." and strips it; the text encoders' loaders look for "text_encoder." and
  "text_encoder_2." and find nothing, as intended.
- peft names lora_A / lora_B, not the older diffusers lora.down / lora.up:
  `load_lora_adapter` converts (convert_unet_state_dict_to_peft) only when its first key
  lacks "lora_A", so peft names are loaded as they are.
- "lora_magnitude_vector", peft's name of DoRA's magnitude: diffusers' `get_peft_kwargs`
  (utils/peft_utils.py) sets use_dora when a key contains it, and peft's
  `set_peft_model_state_dict` loads it. Kohya's name "dora_scale" is never written:
  `StableDiffusionXLLoraLoaderMixin.lora_state_dict` filters every "dora_scale" key out
  with a warning ("...a DoRA checkpoint that is not compatible in Diffusers..."), which
  would silently load a plain LoRA.
- the metadata: with it diffusers builds `LoraConfig(**metadata)`; without it
  `get_peft_kwargs` infers r from lora_B's shape and sets lora_alpha = r (scale 1), so an
  adapter with alpha != rank would load with the wrong scale.
- lora_dropout is written as 0: `load_lora_weights` injects the adapter layers into a
  U-Net that is in eval mode, but their new nn.Dropout modules start in training mode,
  so with p > 0 the loaded pipeline drops activations at inference (on the tiny SDXL the
  images changed by ~0.3 until `unet.eval()`). Dropout is no part of the trained
  function; with 0 peft builds nn.Identity and the file loads the same in either mode.

Run: `pytest tests/integration/test_sdxl_adapter_formats.py`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig, PeftModel

ADAPTER_NAME = "default"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
# diffusers' LORA_WEIGHT_NAME_SAFE.
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
# StableDiffusionXLLoraLoaderMixin.unet_name.
UNET_PREFIX = "unet"
# Where get_peft_model_state_dict(PeftModel) puts the wrapped model's modules.
PEFT_MODEL_PREFIX = "base_model.model."
# The parameter names of a LoRA / DoRA layer in a peft state dict.
LORA_A, LORA_B, MAGNITUDE = "lora_A.weight", "lora_B.weight", "lora_magnitude_vector"


def adapter_config(peft_unet: PeftModel) -> LoraConfig:
    """The LoraConfig of `peft_unet`'s one adapter; TypeError unless it is a peft model
    over a diffusers UNet2DConditionModel with a LoRA/DoRA adapter, ValueError unless that
    adapter is the one named "default"."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, PeftModel

    if not isinstance(peft_unet, PeftModel):
        raise TypeError(
            f"expected a peft PeftModel (get_peft_model(pipe.unet, ...)), got {type(peft_unet).__name__}"
        )
    base = peft_unet.get_base_model()
    if not isinstance(base, UNet2DConditionModel):
        raise TypeError(f"expected a PeftModel over a UNet2DConditionModel, got {type(base).__name__}")
    if list(peft_unet.peft_config) != [ADAPTER_NAME]:
        raise ValueError(
            f"expected one adapter named {ADAPTER_NAME!r}, got {list(peft_unet.peft_config)}"
        )
    config = peft_unet.peft_config[ADAPTER_NAME]
    if not isinstance(config, LoraConfig):
        raise TypeError(f"expected a LoRA/DoRA adapter, got {type(config).__name__}")
    return config


def _write_into(directory: Path, write) -> Path:
    """Run `write(tmp)` on a temporary sibling inside `directory`, then rename each file it
    wrote into `directory`: a reader sees an old file or a whole new one, and files
    already there (a model card, other formats) stay."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".export.", suffix=".tmp"))
    try:
        write(tmp)
        for f in tmp.iterdir():
            os.replace(f, directory / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def save_peft_adapter(peft_unet: PeftModel, directory: Path | str) -> Path:
    """Write `peft_unet`'s adapter as a peft directory (adapter_config.json,
    adapter_model.safetensors, peft's README.md) into `directory`; returns it.

    Load: `PeftModel.from_pretrained(pipe.unet, directory)` on a U-Net of the same
    architecture; the adapter's training config (dropout included) is kept, so the
    directory can also seed further training (`is_trainable=True`).
    """
    adapter_config(peft_unet)
    return _write_into(Path(directory), lambda tmp: peft_unet.save_pretrained(str(tmp)))


def diffusers_lora_state_dict(peft_unet: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed by U-Net module path, without the "unet." prefix that
    `save_lora_weights` adds: "<module>.lora_A.weight", "<module>.lora_B.weight" and, for
    DoRA, "<module>.lora_magnitude_vector" (see the module doc)."""
    from peft.utils import get_peft_model_state_dict

    config = adapter_config(peft_unet)
    state = get_peft_model_state_dict(peft_unet, adapter_name=ADAPTER_NAME)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(PEFT_MODEL_PREFIX) or not key.endswith((LORA_A, LORA_B, MAGNITUDE)):
            raise ValueError(
                f"adapter tensor {key!r}: expected '{PEFT_MODEL_PREFIX}<module>.' + one of "
                f"{[LORA_A, LORA_B, MAGNITUDE]} (a LoRA/DoRA adapter without bias or extra modules)"
            )
        out[key.removeprefix(PEFT_MODEL_PREFIX)] = tensor.detach().cpu().contiguous()
    modules = {k.rsplit(".lora_", 1)[0] for k in out}
    expected = {LORA_A, LORA_B} | ({MAGNITUDE} if config.use_dora else set())
    for module in sorted(modules):
        missing = sorted(p for p in expected if f"{module}.{p}" not in out)
        if missing:
            raise ValueError(f"adapter layer {module}: missing {missing} (use_dora={config.use_dora})")
    return out


def diffusers_lora_metadata(peft_unet: PeftModel) -> dict[str, Any]:
    """The `unet_lora_adapter_metadata` diffusers stores with the tensors: the adapter's
    LoraConfig as a dict (what diffusers' training scripts store, `_collate_lora_metadata`),
    with lora_dropout 0 for inference (see the module doc)."""
    meta = adapter_config(peft_unet).to_dict()
    meta["lora_dropout"] = 0.0
    return meta


def save_diffusers_lora(peft_unet: PeftModel, directory: Path | str) -> Path:
    """Write `peft_unet`'s adapter as diffusers' `pytorch_lora_weights.safetensors` into
    `directory` through `StableDiffusionXLPipeline.save_lora_weights`; returns it.

    Load: `pipe.load_lora_weights(directory)` on an SDXL pipeline of the same U-Net
    architecture. DoRA magnitude vectors are kept (keys and metadata in the module doc).
    """
    from diffusers import StableDiffusionXLPipeline

    layers = diffusers_lora_state_dict(peft_unet)
    meta = diffusers_lora_metadata(peft_unet)

    def write(tmp: Path) -> None:
        StableDiffusionXLPipeline.save_lora_weights(
            str(tmp),
            unet_lora_layers=layers,
            unet_lora_adapter_metadata=meta,
            safe_serialization=True,
        )

    return _write_into(Path(directory), write)
