"""The diffusers-edit executor on a tiny Flux.2 Klein pipeline built in code, on CPU.

The pipeline has the real classes (Flux2Transformer2DModel, AutoencoderKLFlux2, a Qwen3
text encoder and a Qwen2 tokenizer trained in-process) at toy sizes with random weights,
saved with `save_pretrained` and loaded by the executor through `from_pretrained`, as a
real checkpoint is.
"""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from genalign.config.base import ConfigError
from genalign.config.diffusers_edit import DiffusersEditConfig
from genalign.config.planner_world import ExecutorConfig
from genalign.executors import get_executor
from genalign.executors.diffusers_edit import (
    DiffusersEditExecutor,
    GPUUnavailableError,
    image_seed,
)

pytestmark = pytest.mark.integration

SIZE = 32


def build_tiny_flux2_klein(out):
    """A random-init Flux2KleinPipeline small enough for CPU, saved to `out`."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from genalign.models.tiny_qwen_vl import CHAT_TEMPLATE, corpus, train_tokenizer

    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=train_tokenizer(corpus(), vocab_size=320),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
    )
    # The pipeline stacks the hidden states of layers 9, 18 and 27 of the text encoder
    # (its default text_encoder_out_layers), so the encoder needs 27 layers; the
    # transformer's joint_attention_dim is 3 x the encoder's hidden size.
    hidden = 8
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=16,
            num_hidden_layers=27,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=4,
            max_position_embeddings=512,
        )
    )
    torch.manual_seed(1)
    # One VAE block: scale factor 1, so latents are the image's size, 2x2-patched.
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=2,
        sample_size=SIZE,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    torch.manual_seed(2)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * 2,  # 2x2 patches of the VAE's 2 latent channels
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=3 * hidden,
        timestep_guidance_channels=32,
        axes_dims_rope=(2, 2, 2, 2),  # sums to attention_head_dim
        guidance_embeds=False,
    )
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-flux2-klein")
    build_tiny_flux2_klein(out)
    return out


@pytest.fixture(scope="module")
def cfg(model_dir):
    return DiffusersEditConfig(
        model=str(model_dir), device="cpu", dtype="float32", size=SIZE, steps=2, timeout_s=60.0
    )


@pytest.fixture(scope="module")
def executor(cfg):
    return get_executor("diffusers-edit", cfg.to_dict())


@pytest.fixture(scope="module")
def row(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    (root / "images").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(72, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / "q0.png")
    data = {
        "id": "q0",
        "images": ["images/q0.png"],
        "question": "Is the mug behind the laptop?",
        "options": ["A. yes", "B. no"],
    }
    return {**data, "image_paths": [root / rel for rel in data["images"]]}


def test_edit_is_an_image_of_the_configured_size(executor, row):
    assert isinstance(executor, DiffusersEditExecutor)
    result = executor.execute(row, "view from the back at a high angle")
    assert result.status == "ok", result.error
    assert result.image.dtype == np.uint8 and result.image.shape == (SIZE, SIZE, 3)
    assert result.image.std() > 0  # random weights still give a non-constant image
    assert result.elapsed_s > 0


def test_seeded_per_row_and_instruction(executor, row):
    first = executor.execute(row, "view from the left").image
    again = executor.execute(row, "view from the left").image
    other = executor.execute(row, "view from the top").image
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # crc32, not the salted str hash: the same number in every process
    assert image_seed(0, "q0", "view from the left") == image_seed(0, "q0", "view from the left")
    assert image_seed(0, "q0", "view from the left") != image_seed(1, "q0", "view from the left")


def test_prompt_template(cfg, row):
    ex = DiffusersEditExecutor(cfg.replace(prompt_template="{question} Edit: {instruction}."))
    assert (
        ex.prompt(row, "zoom in on the mug")
        == "Is the mug behind the laptop? Edit: zoom in on the mug."
    )


def test_missing_input_image_fails_with_the_reason(executor, row, tmp_path):
    missing = tmp_path / "images" / "gone.png"
    result = executor.execute({**row, "image_paths": [missing]}, "view from the back")
    assert result.status == "failed" and result.image is None
    assert "cannot read the input image" in result.error and str(missing) in result.error
    result = executor.execute({**row, "image_paths": []}, "view from the back")
    assert result.status == "failed" and result.error == "row 'q0' has no input image"


def test_slow_generation_times_out_and_stops(cfg, row, monkeypatch):
    ex = DiffusersEditExecutor(cfg.replace(timeout_s=0.3, steps=4))
    transformer = ex.pipeline().transformer
    forward = transformer.forward
    calls = []

    def slow_forward(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)
        return forward(*args, **kwargs)

    monkeypatch.setattr(transformer, "forward", slow_forward)
    start = time.perf_counter()
    result = ex.execute(row, "view from the back")
    assert result.status == "timeout" and result.image is None
    assert "took longer than 0.3 s" in result.error
    assert time.perf_counter() - start < 0.45
    # The abandoned call is interrupted after its first step instead of running all 4.
    time.sleep(1.0)
    assert len(calls) == 1


def test_cuda_without_a_gpu_is_a_clear_error(model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(GPUUnavailableError, match="CUDA is not available"):
        get_executor("diffusers-edit", {"model": str(model_dir)})


def test_config_checks():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['image_size'\]"):
        get_executor("diffusers-edit", {"image_size": 32})
    with pytest.raises(
        ConfigError, match="takes a DiffusersEditConfig or a dict, got a ExecutorConfig"
    ):
        get_executor("diffusers-edit", ExecutorConfig())
    with pytest.raises(ConfigError, match="multiple of 16"):
        DiffusersEditConfig.from_dict({"size": 40})
    with pytest.raises(ConfigError, match=r"uses \['answer'\]"):
        DiffusersEditConfig.from_dict({"prompt_template": "{instruction} {answer}"})
    with pytest.raises(ConfigError, match="must contain"):
        DiffusersEditConfig.from_dict({"prompt_template": "{question}"})
    with pytest.raises(ConfigError, match="is not one of"):
        DiffusersEditConfig.from_dict({"device": "tpu"})


def test_unknown_pipeline_class(cfg):
    with pytest.raises(ValueError, match="no pipeline class 'NoSuchPipeline'"):
        DiffusersEditExecutor(cfg.replace(pipeline="NoSuchPipeline"))
    with pytest.raises(TypeError, match="AutoencoderKL is not a DiffusionPipeline class"):
        DiffusersEditExecutor(cfg.replace(pipeline="AutoencoderKL"))
