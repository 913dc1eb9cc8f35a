"""A multi-head image reward model: a CLIP backbone whose image patch tokens cross-attend to
the prompt's tokens, pooled into one logit per rating head (spatial, iconographic, style,
fidelity, material: genalign.config.reward_model.HEADS).

    model = build_reward_model(RewardModelConfig(backbone_mode="lora"))   # tiny CLIP, in code
    probs = model.score(images, ["a red cube on the left", ...])          # [B, 5] in (0, 1)
    reward = overall(probs)                                               # [B] equal weights
    save_reward_model(model, out)
    model = load_reward_model(out)                                        # the same scores

Architecture (all shapes for B images of side S, P = (S / patch)^2 patches, T prompt tokens):

    images [B, 3, S, S] in [0, 1] -> CLIP normalisation -> vision_model.last_hidden_state
        [B, 1 + P, Dv] (CLS + every patch) -> Linear -> [B, 1 + P, d]
    prompts -> CLIPTokenizer -> text_model.last_hidden_state [B, T, Dt] -> Linear -> [B, T, d]
    fusion: x = LayerNorm(img + MultiheadAttention(img, txt, txt, key_padding_mask = the pads))
            x = LayerNorm(x + MLP(x))                                      # [B, 1 + P, d]
    mean over the 1 + P tokens -> [B, d] -> Linear(d, K): one linear head per row -> logits [B, K]

The image tokens query the prompt, as the image-text fusion of ImageReward (Xu et al. 2023,
"ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation",
arXiv:2304.05977), where BLIP's text tokens cross-attend to the image; here the direction is
reversed so every head pools over image regions conditioned on what the prompt asks for.

Backbone modes (`RewardModelConfig.backbone_mode`): `frozen` (no backbone weight trains),
`lora` / `dora` (a peft adapter, Hu et al. 2021 arXiv:2106.09685 / Liu et al. 2024
arXiv:2402.09353, on the CLIP attention projections q_proj, k_proj, v_proj, out_proj of both
towers), `full` (every backbone weight on the scoring path trains; the contrastive head,
logit_scale, text_projection, visual_projection and the vision tower's post_layernorm, is
not on it and stays frozen). The adapter's LoraConfig is built here, with the fields
`genalign.training.adapters.lora_config` reads, because models sit below training.

Images are normalised inside the model with CLIP's statistics (OPENAI_CLIP_MEAN / STD:
transformers' `image_utils`, the defaults of CLIPImageProcessor, from openai/CLIP
`clip/clip.py` `_transform`) after the processor's geometry: the shortest edge resized to
S (bicubic, antialiased), then the centre S x S crop. `image_embedding` is the frozen
backbone's projected image embedding (`CLIPModel.get_image_features`, the adapter switched
off), the input of the linear-probe baseline.

A saved model (`save_reward_model`) is a directory:

    reward_model.json      {"heads": [...], "config": RewardModelConfig, "backbone_files": ...}
    heads.safetensors      the projections, the fusion block and the heads
    tokenizer/             the CLIPTokenizer (save_pretrained: JSON and text)
    backbone/              full: the trained CLIPModel (save_pretrained, safetensors)
    adapter/               lora / dora: the peft adapter (save_pretrained)

A frozen backbone, and the base under an adapter, are not copied: they come from the
reference (`tiny` is rebuilt from its seed; anything else is the `backbone_dir` the caller
resolves). The real checkpoint openai/clip-vit-large-patch14-336 loads from a local
directory with the same code (`load_clip`).

Run: `pytest tests/unit/test_reward_model.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genalign.config.base import ConfigError
from genalign.config.reward_model import HEADS, TINY_BACKBONE, RewardModelConfig
from genalign.storage import ArtifactError, atomic_dir, atomic_write_json

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import CLIPModel, CLIPTokenizer

CONFIG_NAME = "reward_model.json"
WEIGHTS_NAME = "heads.safetensors"
TOKENIZER_DIR = "tokenizer"
BACKBONE_DIR = "backbone"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1

# CLIPImageProcessor's defaults (transformers.image_utils OPENAI_CLIP_MEAN / OPENAI_CLIP_STD,
# the Normalize of openai/CLIP clip/clip.py `_transform`).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The CLIP attention projections the adapter wraps (CLIPAttention in transformers 5), in the
# text and the vision tower alike.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# CLIPModel parameters off the scoring path (the contrastive head and the vision tower's
# pooled-output norm): `full` mode leaves them frozen, as they never get a gradient.
OFF_SCORE_PATH = ("logit_scale", "text_projection.", "visual_projection.", "vision_model.post_layernorm.")

# Tiny CLIP (`build_tiny_clip`): both towers 2 layers of width 32 with 4 heads, as
# genalign.models.sdxl's tiny CLIP text encoder; an 8 x 8 patch grid (patch 4 on 32 px).
TINY_WIDTH = 32
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_INTERMEDIATE = 37  # diffusers' dummy CLIP configs use 37
TINY_GRID = 8
TINY_PROJECTION = 32


class RatedTensors(NamedTuple):
    """Rated images: ratings in [0, 1] per head (>= 0.5 counts as positive), NaN = unrated."""

    images: Tensor  # [N, 3, H, W] float in [0, 1]
    prompts: list[str]  # N prompts
    ratings: Tensor  # [N, K] float, NaN where a head is unrated


class PairTensors(NamedTuple):
    """Preference pairs of two images for one prompt each."""

    images_a: Tensor  # [P, 3, H, W] float in [0, 1]
    images_b: Tensor  # [P, 3, H, W]
    prompts: list[str]  # P prompts
    preferred: Tensor  # [P] P(a preferred): 1 a, 0 b, 0.5 a tie


# ---------------------------------------------------------------------------- backbone
def build_tiny_clip(seed: int = 0, image_size: int = 32) -> CLIPModel:
    """A random-init `CLIPModel` from `CLIPConfig(text_config=..., vision_config=...)` in
    code: both towers 2 layers of width 32 (4 heads, MLP 37, quick-GELU as CLIP ViT-L), a
    vision patch of image_size / 8 (an 8 x 8 grid: 4 px on 32 px images), projection 32, and
    the vocabulary of `genalign.models.sdxl.build_tiny_tokenizers` (CLIP's byte-level symbols,
    no merges). Deterministic: initialised from `seed` on a private RNG stream."""
    from transformers import CLIPConfig, CLIPModel

    if image_size % TINY_GRID:
        raise ValueError(f"build_tiny_clip: image_size must be a multiple of {TINY_GRID}, got {image_size}")
    tokenizer = tiny_tokenizer()
    common = {"hidden_size": TINY_WIDTH, "intermediate_size": TINY_INTERMEDIATE,
              "num_hidden_layers": TINY_LAYERS, "num_attention_heads": TINY_HEADS}
    config = CLIPConfig(
        text_config={
            **common, "vocab_size": len(tokenizer), "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**common, "image_size": image_size, "patch_size": image_size // TINY_GRID},
        projection_dim=TINY_PROJECTION,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config).eval()


def tiny_tokenizer() -> CLIPTokenizer:
    """The tiny CLIP's tokenizer: SDXL's first tiny tokenizer (pads with <|endoftext|>, 77 tokens)."""
    from genalign.models.sdxl import build_tiny_tokenizers

    return build_tiny_tokenizers()[0]


def load_clip(directory: Path) -> tuple[CLIPModel, CLIPTokenizer]:
    """A `CLIPModel` (float32) and its `CLIPTokenizer` from a local directory: a hub snapshot of
    openai/clip-vit-large-patch14-336, or `save_pretrained` of both. Never reads a hub."""
    from transformers import CLIPModel, CLIPTokenizer

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ArtifactError(f"{directory / 'config.json'}: missing; not a saved transformers CLIPModel")
    model = CLIPModel.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    return model.eval(), tokenizer


def backbone_lora_config(cfg: RewardModelConfig) -> LoraConfig:
    """peft `LoraConfig` of the backbone adapter: rank, alpha and dropout from `cfg`, DoRA for
    backbone_mode "dora", no bias, on LORA_TARGETS (the convention of
    genalign.training.adapters.lora_config)."""
    from peft import LoraConfig

    if cfg.backbone_mode not in ("lora", "dora"):
        raise ValueError(f"backbone_lora_config: backbone_mode {cfg.backbone_mode!r} has no adapter")
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(LORA_TARGETS), use_dora=cfg.backbone_mode == "dora", bias="none")


def _base_backbone(cfg: RewardModelConfig, backbone_dir: Path | None) -> tuple[CLIPModel, CLIPTokenizer]:
    """The reference backbone: the tiny CLIP from its seed, or the local directory."""
    if cfg.backbone == TINY_BACKBONE:
        if backbone_dir is not None:
            raise ValueError("backbone is 'tiny' (built in code); backbone_dir must be None")
        return build_tiny_clip(cfg.seed, cfg.image_size), tiny_tokenizer()
    if backbone_dir is None:
        raise ValueError(
            f"backbone {cfg.backbone!r} is a model reference: pass backbone_dir, the local directory "
            "it resolves to (genalign.models.refs.resolve)"
        )
    clip, tokenizer = load_clip(Path(backbone_dir))
    size = clip.config.vision_config.image_size
    if size != cfg.image_size:
        raise ValueError(
            f"image_size: {cfg.image_size}, but the backbone in {backbone_dir} sees {size} px "
            "(its vision_config.image_size); set image_size to it"
        )
    return clip, tokenizer


def _set_mode(clip: nn.Module, mode: str) -> None:
    """frozen: no backbone weight trains; full: every weight on the scoring path does."""
    for name, p in clip.named_parameters():
        p.requires_grad_(mode == "full" and not name.startswith(OFF_SCORE_PATH))


# ---------------------------------------------------------------------------- the model
class FusionBlock(nn.Module):
    """Image tokens cross-attend to prompt tokens; residual + LayerNorm, MLP + LayerNorm."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.norm2 = nn.LayerNorm(width)

    def forward(self, image: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        # image [B, N, d], text [B, T, d], text_mask [B, T] bool (True: a token, False: a pad)
        attended, _ = self.attn(image, text, text, key_padding_mask=~text_mask, need_weights=False)
        x = self.norm1(image + attended)  # [B, N, d]
        return self.norm2(x + self.mlp(x))


class RewardModel(nn.Module):
    """(images, prompt tokens) -> one logit per head; `score` gives probabilities.

    Built by `build_reward_model` or `load_reward_model`, which put the backbone into its mode
    (a peft model in lora / dora) before this constructor initialises the fusion block and the
    heads from `cfg.seed`."""

    def __init__(self, cfg: RewardModelConfig, backbone: nn.Module, tokenizer: CLIPTokenizer) -> None:
        super().__init__()
        from peft import PeftModel

        if isinstance(backbone, PeftModel) != (cfg.backbone_mode in ("lora", "dora")):
            raise ValueError(
                f"RewardModel: backbone_mode {cfg.backbone_mode!r} with a {type(backbone).__name__} "
                "backbone; lora / dora need the peft model, frozen / full the CLIPModel"
            )
        self.cfg = cfg
        self.heads_names = tuple(cfg.heads)
        self.backbone = backbone
        self.tokenizer = tokenizer
        clip_config = backbone.config
        self.image_size = int(clip_config.vision_config.image_size)
        d = cfg.fusion_width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.image_proj = nn.Linear(clip_config.vision_config.hidden_size, d)
            self.text_proj = nn.Linear(clip_config.text_config.hidden_size, d)
            self.fusion = FusionBlock(d, cfg.fusion_heads, cfg.fusion_mlp_ratio)
            self.heads = nn.Linear(d, len(cfg.heads))  # row k is head k's linear read-out
        self.register_buffer("mean", torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1), persistent=False)

    # --- inputs ---------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(input_ids [B, T], attention_mask [B, T] bool) padded to the longest prompt,
        truncated at the tokenizer's model_max_length (77 for CLIP)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"tokenize: prompts must be a list of str, got {prompts!r:.80}")
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        device = self.mean.device
        return enc.input_ids.to(device), enc.attention_mask.to(device).bool()

    def pixel_values(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> CLIP's input [B, 3, S, S]: shortest edge to S (bicubic,
        antialiased), centre crop, normalised with OPENAI_CLIP_MEAN / STD."""
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"RewardModel: images must be float [B, 3, H, W] in [0, 1], got {images.dtype} {list(images.shape)}"
            )
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"RewardModel: images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        s = self.image_size
        h, w = images.shape[-2:]
        if (h, w) != (s, s):
            scale = s / min(h, w)
            size = (max(s, round(h * scale)), max(s, round(w * scale)))
            images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
            top, left = (size[0] - s) // 2, (size[1] - s) // 2
            images = images[..., top:top + s, left:left + s].clamp(0.0, 1.0)
        return (images - self.mean) / self.std

    # --- forward ----------------------------------------------------------------------
    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits [B, K] of `images` [B, 3, H, W] in [0, 1] and their prompts' tokens [B, T]."""
        if input_ids.shape[0] != images.shape[0] or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"RewardModel: {images.shape[0]} images with input_ids {list(input_ids.shape)} and "
                f"attention_mask {list(attention_mask.shape)}; expected one prompt per image"
            )
        mask = attention_mask.bool()
        vision = self.backbone.vision_model(pixel_values=self.pixel_values(images)).last_hidden_state  # [B, 1+P, Dv]
        text = self.backbone.text_model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state  # [B, T, Dt]
        x = self.fusion(self.image_proj(vision), self.text_proj(text), mask)  # [B, 1+P, d]
        return self.heads(x.mean(dim=1))  # [B, K]

    def logits(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Logits [B, K] of `images` and their `prompts`, with gradient."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"RewardModel: {images.shape[0]} images and {len(prompts)} prompts")
        return self(images, *self.tokenize(prompts))

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Per-head probabilities [B, K] (sigmoid of the logits), without gradient."""
        return torch.sigmoid(self.logits(images, prompts))

    @torch.no_grad()
    def image_embedding(self, images: Tensor) -> Tensor:
        """The frozen backbone's projected image embedding [B, projection_dim]
        (`CLIPModel.get_image_features`), with any adapter switched off."""
        from peft import PeftModel

        pixels = self.pixel_values(images)
        if isinstance(self.backbone, PeftModel):
            with self.backbone.disable_adapter():
                return self.backbone.get_image_features(pixel_values=pixels).pooler_output
        return self.backbone.get_image_features(pixel_values=pixels).pooler_output

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters of each part: backbone (its adapter in lora / dora; none
        when frozen), fusion (the two projections and the fusion block), heads."""
        fusion = [*self.image_proj.parameters(), *self.text_proj.parameters(), *self.fusion.parameters()]
        return {
            "backbone": [p for p in self.backbone.parameters() if p.requires_grad],
            "fusion": [p for p in fusion if p.requires_grad],
            "heads": [p for p in self.heads.parameters() if p.requires_grad],
        }

    def head_state(self) -> dict[str, Tensor]:
        """The state of everything but the backbone: what heads.safetensors holds."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def overall(probs: Tensor, weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """The weighted mean over heads of `probs` [..., K] (or of logits): sum_k w_k x_k / sum_k w_k.
    weights: K non-negative numbers with a positive sum; None: equal weights. -> [...]"""
    k = probs.shape[-1]
    if weights is None:
        return probs.mean(dim=-1)
    w = torch.as_tensor(weights, dtype=probs.dtype, device=probs.device)
    if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"overall: weights must be {k} non-negative numbers with a positive sum, got {weights}")
    return (probs * w).sum(dim=-1) / w.sum()


class LinearProbe(nn.Module):
    """The baseline: logistic regression per head on the L2-normalised `backbone.image_embedding` (the LAION
    aesthetic predictor's design, github.com/LAION-AI/aesthetic-predictor: a linear model on a
    frozen CLIP image embedding). The prompt is not read. `backbone` is a RewardModel whose
    backbone is the reference (its adapter is switched off; a `full` model's backbone is
    trained, so pass an untrained one)."""

    def __init__(self, backbone: RewardModel, heads: Sequence[str] = HEADS) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads_names = tuple(heads)
        self.linear = nn.Linear(backbone.backbone.config.projection_dim, len(heads))

    def forward(self, embeddings: Tensor) -> Tensor:
        # [B, E] -> logits [B, K]; unit-norm embeddings, as the aesthetic predictor feeds its MLP
        return self.linear(F.normalize(embeddings, dim=-1))

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str] | None = None) -> Tensor:
        """Per-head probabilities [B, K] of `images`; `prompts` are ignored."""
        return torch.sigmoid(self(self.backbone.image_embedding(images)))


# ---------------------------------------------------------------------------- build, save, load
def build_reward_model(cfg: RewardModelConfig, *, backbone_dir: Path | None = None) -> RewardModel:
    """A fresh reward model: the reference backbone in `cfg.backbone_mode` (a new adapter,
    initialised from `cfg.seed`, in lora / dora), a new fusion block and heads."""
    from peft import get_peft_model

    clip, tokenizer = _base_backbone(cfg, backbone_dir)
    if cfg.backbone_mode in ("lora", "dora"):
        with torch.random.fork_rng(devices=[]):  # lora_A is drawn from the global stream
            torch.manual_seed(cfg.seed)
            backbone = get_peft_model(clip, backbone_lora_config(cfg))
    else:
        _set_mode(clip, cfg.backbone_mode)
        backbone = clip
    return RewardModel(cfg, backbone, tokenizer)


def save_reward_model(model: RewardModel, directory: Path) -> Path:
    """Write `model` into `directory` (layout in the module docstring). Each file or folder is
    renamed into place from a temporary sibling and reward_model.json comes last, so a
    directory with it is complete; other files there stay (a trainer's checkpoints)."""
    from safetensors.torch import save_file

    cfg = model.cfg
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{WEIGHTS_NAME}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head_state().items()}, str(partial),
              metadata={"format": "pt"})
    os.replace(partial, directory / WEIGHTS_NAME)
    with atomic_dir(directory / TOKENIZER_DIR) as tmp:
        model.tokenizer.save_pretrained(str(tmp))
    files = None
    if cfg.backbone_mode == "full":
        files = BACKBONE_DIR
        with atomic_dir(directory / BACKBONE_DIR) as tmp:
            model.backbone.save_pretrained(str(tmp))
    elif cfg.backbone_mode in ("lora", "dora"):
        files = ADAPTER_DIR
        with atomic_dir(directory / ADAPTER_DIR) as tmp:
            model.backbone.save_pretrained(str(tmp))
    atomic_write_json(directory / CONFIG_NAME, {
        "format_version": FORMAT_VERSION, "heads": list(cfg.heads), "config": cfg.to_dict(),
        "backbone_files": files,
    })
    return directory


def read_reward_model_config(directory: Path, heads: Sequence[str] = HEADS) -> RewardModelConfig:
    """The RewardModelConfig in `directory`/reward_model.json, after checking its heads are
    `heads` (same names, same order)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; not a reward model directory (save_reward_model writes it)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: invalid JSON ({e})") from e
    for key in ("format_version", "heads", "config"):
        if not isinstance(data, dict) or key not in data:
            raise ArtifactError(f"{path}: expected a JSON object with {key!r}")
    if data["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {data['format_version']}, this code reads {FORMAT_VERSION}")
    if list(data["heads"]) != list(heads):
        raise ValueError(f"{path}: the model's heads {list(data['heads'])} differ from the expected heads {list(heads)}")
    try:
        cfg = RewardModelConfig.from_dict(data["config"], where=f"{path}: config")
    except ConfigError as e:
        raise ArtifactError(str(e)) from e
    if list(cfg.heads) != list(data["heads"]):
        raise ArtifactError(f"{path}: heads {data['heads']} and config.heads {list(cfg.heads)} differ")
    return cfg


def load_reward_model(
    directory: Path, *, heads: Sequence[str] = HEADS, backbone_dir: Path | None = None,
    device: torch.device | str = "cpu",
) -> RewardModel:
    """The model `save_reward_model` wrote into `directory`, in eval mode, with the trainable
    layout of its backbone mode. `heads` are the heads the caller expects (a ValueError naming
    the file and both lists otherwise); `backbone_dir` is the resolved reference backbone of a
    frozen or adapter model on a pretrained backbone (a `full` one carries its own)."""
    from peft import PeftModel

    directory = Path(directory)
    cfg = read_reward_model_config(directory, heads)
    for name in (WEIGHTS_NAME, TOKENIZER_DIR):
        if not (directory / name).exists():
            raise ArtifactError(f"{directory / name}: missing; written by save_reward_model with {CONFIG_NAME}")
    if cfg.backbone_mode == "full":
        trained = directory / BACKBONE_DIR
        if not (trained / "config.json").is_file():
            raise ArtifactError(f"{trained / 'config.json'}: missing; a full model's trained backbone")
        from transformers import CLIPModel

        backbone = CLIPModel.from_pretrained(str(trained), dtype=torch.float32, local_files_only=True)
        _set_mode(backbone, "full")
    else:
        backbone, _ = _base_backbone(cfg, backbone_dir)
        if cfg.backbone_mode == "frozen":
            _set_mode(backbone, "frozen")
        else:
            adapter = directory / ADAPTER_DIR
            if not (adapter / "adapter_config.json").is_file():
                raise ArtifactError(f"{adapter / 'adapter_config.json'}: missing; a {cfg.backbone_mode} model's adapter")
            backbone = PeftModel.from_pretrained(backbone, str(adapter), is_trainable=True)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(directory / TOKENIZER_DIR), local_files_only=True)
    model = RewardModel(cfg, backbone, tokenizer)
    _load_heads(model, directory / WEIGHTS_NAME)
    return model.to(device).eval()


def _load_heads(model: RewardModel, path: Path) -> None:
    """heads.safetensors into everything but the backbone; names and shapes checked first."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = model.head_state()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{path}: tensors do not match {CONFIG_NAME}; missing {missing}, unexpected {unexpected}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ArtifactError(f"{path}: tensor {name!r} has shape {list(tensor.shape)}, "
                                f"{CONFIG_NAME} gives {list(expected[name].shape)}")
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(state[name])
