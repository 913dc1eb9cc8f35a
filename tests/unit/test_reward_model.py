"""The multi-head reward model (genalign.models.reward_model) and its configs, on the tiny CLIP
built in code: shapes, CLIP's normalisation, the prompt padding mask, the backbone modes,
save/load into a fresh object, and the errors."""

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from genalign.config.base import ConfigError
from genalign.config.reward_model import HEADS, RewardModelConfig, TrainRewardModelConfig
from genalign.models.reward_model import OPENAI_CLIP_MEAN as MEAN
from genalign.models.reward_model import OPENAI_CLIP_STD as STD
from genalign.models.reward_model import (
    build_reward_model,
    build_tiny_clip,
    load_reward_model,
    overall,
    save_reward_model,
    tiny_tokenizer,
)

PROMPTS = ["a red square on the left", "a blue square"]


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def perturb(model, seed=1):
    """Move every trainable weight (lora_B starts at 0, so an adapter would change nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_tiny_clip_is_a_clip_model_of_the_documented_size():
    clip = build_tiny_clip(seed=0, image_size=32)
    assert isinstance(clip, CLIPModel)
    v, t = clip.config.vision_config, clip.config.text_config
    assert (v.image_size, v.patch_size, v.hidden_size, v.num_hidden_layers) == (32, 4, 32, 2)
    assert (t.hidden_size, t.num_hidden_layers, t.vocab_size) == (32, 2, len(tiny_tokenizer()))
    again = build_tiny_clip(seed=0, image_size=32)
    assert all(torch.equal(a, b) for a, b in zip(clip.state_dict().values(), again.state_dict().values()))
    assert build_tiny_clip(seed=0, image_size=64).config.vision_config.patch_size == 8
    with pytest.raises(ValueError, match="multiple of 8"):
        build_tiny_clip(image_size=36)


def test_normalisation_constants_are_clips():
    assert list(MEAN) == list(OPENAI_CLIP_MEAN) and list(STD) == list(OPENAI_CLIP_STD)


def test_pixel_values_normalise_and_resize():
    """A constant 0.5 image becomes (0.5 - mean) / std per channel, whatever its size: a
    64 x 48 image is resized on its shortest edge to 32 and centre-cropped."""
    model = build_reward_model(RewardModelConfig(backbone_mode="frozen"))
    expected = (0.5 - torch.tensor(MEAN)) / torch.tensor(STD)
    for h, w in ((32, 32), (64, 48)):
        px = model.pixel_values(torch.full((1, 3, h, w), 0.5))
        assert px.shape == (1, 3, 32, 32)
        assert torch.allclose(px[0, :, 5, 7], expected, atol=1e-5)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        model.pixel_values(torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match="float \\[B, 3, H, W\\]"):
        model.pixel_values(torch.zeros(1, 1, 32, 32))


def test_scores_are_per_head_probabilities():
    model = build_reward_model(RewardModelConfig(backbone_mode="frozen")).eval()
    probs = model.score(images(), PROMPTS)
    assert probs.shape == (2, len(HEADS)) and bool(((probs > 0) & (probs < 1)).all())
    assert torch.allclose(probs, torch.sigmoid(model.logits(images(), PROMPTS)))
    with pytest.raises(ValueError, match="2 images and 1 prompts"):
        model.score(images(), PROMPTS[:1])


def test_prompt_padding_does_not_change_a_score():
    """key_padding_mask: a short prompt scores the same alone and padded beside a long one."""
    model = build_reward_model(RewardModelConfig(backbone_mode="frozen")).eval()
    x = images()
    alone = model.score(x[:1], ["a cube"])
    padded = model.score(x, ["a cube", "a much longer prompt that pads the first one"])[:1]
    assert torch.allclose(alone, padded, atol=1e-6)
    assert not torch.allclose(model.score(x[:1], ["a sphere"]), alone)  # the prompt is read


def test_overall_is_a_weighted_mean():
    """[0.2, 0.4, 0.6, 0.8, 1.0]: equal weights 3.0 / 5 = 0.6; weights (1, 0, 0, 0, 3):
    (0.2 + 3.0) / 4 = 0.8."""
    probs = torch.tensor([[0.2, 0.4, 0.6, 0.8, 1.0]])
    assert overall(probs).item() == pytest.approx(0.6)
    assert overall(probs, [1, 0, 0, 0, 3]).item() == pytest.approx(0.8)
    with pytest.raises(ValueError, match="5 non-negative numbers"):
        overall(probs, [1, 1])


@pytest.mark.parametrize("mode", ["frozen", "lora", "dora", "full"])
def test_backbone_modes_decide_what_trains(mode):
    model = build_reward_model(RewardModelConfig(backbone_mode=mode))
    groups = model.parameter_groups()
    assert groups["fusion"] and groups["heads"]
    names = {id(p): n for n, p in model.backbone.named_parameters()}
    backbone = [names[id(p)] for p in groups["backbone"]]
    if mode == "frozen":
        assert backbone == []
    elif mode in ("lora", "dora"):
        assert backbone and all("lora_" in n for n in backbone)
        targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in backbone}
        assert targets == {"q_proj", "k_proj", "v_proj", "out_proj"}
        assert any("vision_model" in n for n in backbone) and any("text_model" in n for n in backbone)
        assert any("lora_magnitude_vector" in n for n in backbone) == (mode == "dora")
    else:
        assert len(backbone) == len(names) - 5  # logit_scale, 2 projections (no bias), post_layernorm w + b
        assert not any(n.startswith(("visual_projection", "text_projection", "logit_scale")) for n in backbone)


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
def test_save_load_gives_the_same_scores_in_a_fresh_object(mode, tmp_path):
    model = perturb(build_reward_model(RewardModelConfig(backbone_mode=mode, fusion_width=32))).eval()
    before = model.score(images(), PROMPTS)
    save_reward_model(model, tmp_path / "rm")
    files = {p.name for p in (tmp_path / "rm").iterdir()}
    assert {"reward_model.json", "heads.safetensors", "tokenizer"} <= files
    assert ("backbone" in files) == (mode == "full") and ("adapter" in files) == (mode == "lora")
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded is not model and not loaded.training
    assert torch.equal(loaded.score(images(), PROMPTS), before)
    fresh = build_reward_model(RewardModelConfig(backbone_mode=mode, fusion_width=32)).eval()
    assert not torch.allclose(fresh.score(images(), PROMPTS), before)


def test_load_refuses_other_heads(tmp_path):
    save_reward_model(build_reward_model(RewardModelConfig(backbone_mode="frozen")), tmp_path)
    with pytest.raises(ValueError) as e:
        load_reward_model(tmp_path, heads=("spatial", "style"))
    message = str(e.value)
    assert "reward_model.json" in message and str(list(HEADS)) in message and "['spatial', 'style']" in message


def test_a_local_backbone_directory_loads_with_from_pretrained(tmp_path):
    """The path of a real checkpoint: CLIPModel + CLIPTokenizer saved in one directory."""
    build_tiny_clip(seed=5).save_pretrained(tmp_path / "clip")
    tiny_tokenizer().save_pretrained(tmp_path / "clip")
    cfg = RewardModelConfig(backbone="hf://openai/clip-vit-large-patch14-336", backbone_mode="frozen")
    model = build_reward_model(cfg, backbone_dir=tmp_path / "clip")
    assert isinstance(model.tokenizer, CLIPTokenizer)
    assert torch.equal(model.backbone.text_model.embeddings.token_embedding.weight,
                       build_tiny_clip(seed=5).text_model.embeddings.token_embedding.weight)
    with pytest.raises(ValueError, match="pass backbone_dir"):
        build_reward_model(cfg)
    with pytest.raises(ValueError, match="sees 32 px"):
        build_reward_model(cfg.replace(image_size=64), backbone_dir=tmp_path / "clip")
    save_reward_model(perturb(model), tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm", backbone_dir=tmp_path / "clip")
    assert torch.equal(loaded.score(images(), PROMPTS), model.eval().score(images(), PROMPTS))


def test_image_embedding_is_the_frozen_backbones():
    """With a trained adapter the embedding is still the base CLIP's get_image_features."""
    lora = perturb(build_reward_model(RewardModelConfig(backbone_mode="lora"))).eval()
    clip = build_tiny_clip(seed=0)
    x = images()
    emb = lora.image_embedding(x)
    assert emb.shape == (2, clip.config.projection_dim)
    assert torch.allclose(emb, clip.get_image_features(pixel_values=lora.pixel_values(x)).pooler_output, atol=1e-6)


def test_configs_check_their_fields():
    with pytest.raises(ValueError, match="does not divide"):
        RewardModelConfig(fusion_width=30, fusion_heads=4)
    with pytest.raises(ValueError, match="distinct"):
        RewardModelConfig(heads=("style", "style"))
    with pytest.raises(ConfigError, match="valid keys are"):
        RewardModelConfig.from_dict({"fusion_widht": 32})
    with pytest.raises(ConfigError, match="backbone_mode"):
        RewardModelConfig.from_dict({"backbone_mode": "partial"})
    with pytest.raises(ValueError, match="overall_weights: 2 weights"):
        TrainRewardModelConfig(overall_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="lr_backbone: 0"):
        TrainRewardModelConfig(lr_backbone=0.0)
    cfg = TrainRewardModelConfig.from_dict({"model": {"backbone_mode": "frozen"}, "lr_backbone": 0.0})
    assert cfg.model.heads == HEADS and cfg.focal_gamma == 2.0 and cfg.focal_alpha == 0.25
    assert TrainRewardModelConfig.from_dict(cfg.to_dict()) == cfg
