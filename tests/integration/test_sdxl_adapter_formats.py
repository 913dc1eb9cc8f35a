"""The two export formats of an SDXL DoRA adapter (genalign.models.sdxl_adapters), on the
tiny SDXL at 32 px: a trained pipeline, a fresh one with the peft directory loaded by
`PeftModel.from_pretrained`, and a fresh one with diffusers' file loaded by
`load_lora_weights` make the same images, and not the base model's."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from genalign.config.image_dspo import TrainImageDSPOConfig
from genalign.models.sdxl import build_tiny_sdxl, load_sdxl
from genalign.models.sdxl_adapters import (
    DIFFUSERS_LORA_FILE,
    diffusers_lora_state_dict,
    save_diffusers_lora,
    save_peft_adapter,
)
from genalign.trainers.image_dspo import ImageDSPOTrainer, SDXLPairs

pytestmark = pytest.mark.integration

IMAGE = 32
PROMPT = ["a voxel castle on a hill"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def images(pipe) -> torch.Tensor:
    """[1, 3, 32, 32] in [0, 1]: three Euler steps from one seeded generator."""
    out = pipe(PROMPT, num_inference_steps=3, height=IMAGE, width=IMAGE,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    return out.images


def pairs(n: int = 4) -> SDXLPairs:
    g = torch.Generator().manual_seed(1)
    time_ids = torch.tensor([[IMAGE, IMAGE, 0, 0, IMAGE, IMAGE]], dtype=torch.float32).repeat(n, 1)
    return SDXLPairs(
        torch.randn(n, 4, IMAGE // 2, IMAGE // 2, generator=g),
        torch.randn(n, 4, IMAGE // 2, IMAGE // 2, generator=g),
        torch.randn(n, 77, 96, generator=g),
        torch.randn(n, 64, generator=g),
        time_ids,
        time_ids.clone(),
        torch.ones(n),
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A DoRA adapter trained 3 steps (rank 4, alpha 8, dropout 0.1) on an in-memory tiny
    SDXL, then exported in both formats into empty directories."""
    root = tmp_path_factory.mktemp("formats")
    pipe = build_tiny_sdxl(0, image_size=IMAGE)
    pipe.save_pretrained(root / "base")
    base_images = images(pipe)
    # lr 1e-2: three steps must move the images well past the 1e-5 tolerance.
    cfg = TrainImageDSPOConfig(steps=3, batch_pairs=2, grad_accumulation=1, checkpoint_every=0,
                               rank=4, alpha=8.0, lr=1e-2, gradient_checkpointing=False)
    trainer = ImageDSPOTrainer(cfg, pairs(), pipe, root / "run", base_model_ref="tiny://sdxl")
    trainer.setup()
    trainer.save(trainer.train())  # leaves the adapted U-Net in eval mode
    peft_dir = save_peft_adapter(trainer.model, root / "peft")
    diffusers_dir = save_diffusers_lora(trainer.model, root / "diffusers")
    return {"root": root, "pipe": pipe, "trainer": trainer, "base_images": base_images,
            "trained_images": images(pipe), "peft": peft_dir, "diffusers": diffusers_dir}


def test_three_ways_make_the_same_images(exported):
    from peft import PeftModel

    root = exported["root"]
    assert sorted(p.name for p in exported["peft"].iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in exported["diffusers"].iterdir()) == [DIFFUSERS_LORA_FILE]

    via_peft = load_sdxl(root / "base")
    PeftModel.from_pretrained(via_peft.unet, str(exported["peft"]))
    via_diffusers = load_sdxl(root / "base")
    via_diffusers.load_lora_weights(str(exported["diffusers"]), use_safetensors=True)
    # Still in the mode load_lora_weights left it: no adapter dropout is live.
    trained = exported["trained_images"]
    torch.testing.assert_close(images(via_peft), trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(images(via_diffusers), trained, rtol=0, atol=1e-5)
    assert (trained - exported["base_images"]).abs().max() > 1e-3
    assert via_diffusers.unet.peft_config["default_0"].use_dora


def test_diffusers_file_layout(exported):
    """peft-named keys under "unet.", DoRA magnitudes kept, the config in the header; the
    trainer's own out/diffusers holds the same tensors."""
    file = exported["diffusers"] / DIFFUSERS_LORA_FILE
    with safe_open(str(file), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert all(k.startswith("unet.") for k in keys)
    kinds = {k.rsplit(".lora_", 1)[1] for k in keys}
    assert kinds == {"A.weight", "B.weight", "magnitude_vector"}
    assert not any("dora_scale" in k for k in keys)
    assert (meta["unet.r"], meta["unet.lora_alpha"], meta["unet.use_dora"]) == (4, 8.0, True)
    assert meta["unet.lora_dropout"] == 0.0
    ours, trainers = (load_file(str(p)) for p in (file, exported["root"] / "run" / "diffusers" / DIFFUSERS_LORA_FILE))
    assert ours.keys() == trainers.keys() and all(torch.equal(ours[k], trainers[k]) for k in ours)


def test_alpha_needs_the_metadata(exported, tmp_path):
    """Without the header diffusers takes lora_alpha = r (scale 1, not 8 / 4 = 2), so the
    same tensors make other images: why the writer stores the metadata."""
    from diffusers import StableDiffusionXLPipeline

    layers = diffusers_lora_state_dict(exported["trainer"].model)
    StableDiffusionXLPipeline.save_lora_weights(str(tmp_path), unet_lora_layers=layers)
    pipe = load_sdxl(exported["root"] / "base")
    pipe.load_lora_weights(str(tmp_path), use_safetensors=True)
    pipe.unet.eval()
    assert pipe.unet.peft_config["default_0"].lora_alpha == 4
    assert (images(pipe) - exported["trained_images"]).abs().max() > 1e-3


def test_kohya_dora_scale_keys_are_dropped(exported):
    """diffusers 0.42 filters every "dora_scale" key out of an SDXL LoRA state dict with a
    warning, so a file that named the magnitudes so would load as a plain LoRA."""
    from diffusers import StableDiffusionXLPipeline

    state = load_file(str(exported["diffusers"] / DIFFUSERS_LORA_FILE))
    kohya = {k.replace("lora_magnitude_vector", "dora_scale"): v for k, v in state.items()}
    n_magnitudes = sum("dora_scale" in k for k in kohya)
    assert n_magnitudes > 0
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("diffusers.loaders.lora_pipeline")
    logger.addHandler(handler)
    try:
        kept, _ = StableDiffusionXLPipeline.lora_state_dict(kohya)
    finally:
        logger.removeHandler(handler)
    assert len(kept) == len(kohya) - n_magnitudes
    assert not any("dora_scale" in k for k in kept)
    assert any("dora_scale" in m for m in messages)


def test_export_refuses_a_model_without_peft(exported):
    with pytest.raises(TypeError, match="expected a peft PeftModel"):
        save_diffusers_lora(exported["pipe"].unet, Path(exported["root"]) / "never")
    assert not (exported["root"] / "never").exists()
