"""Part-aware flow DiT: a PartCrafter-style transformer over per-part latent tokens.

An object is `P` parts of `T` latent tokens of `D` numbers, `x [B, P, T, D]`, padded to
a common `P` with a bool `part_mask [B, P]` (True = real part). The model predicts the
flow-matching velocity u = x0 - eps at time t in [0, 1] (t = 1 is pure noise), given
image-feature tokens `cond [B, N, C]` from a frozen DINOv2.

Architecture (after PartCrafter, Lin et al. 2025, "PartCrafter: Structured 3D Mesh
Generation via Compositional Latent Diffusion Transformers"):

- every token gets a learned part-identity embedding (PartCrafter's `part_embedding`,
  one vector per part slot, N(0, 0.02) init) and a within-part token-position
  embedding (the codec's tokens are different quantities: position, size, ...);
- blocks alternate local attention, within one part (`[B*P, T, H]`), and global
  attention across all tokens of all parts (`[B, P*T, H]`, padded parts masked as
  keys). PartCrafter alternates the same two kinds block by block;
- each block also cross-attends to the conditioning tokens (PartCrafter's DiT blocks
  cross-attend to DINOv2 `last_hidden_state`);
- the timestep (t * 1000, sinusoidal) plus the mean conditioning token drive
  adaLN-Zero modulation of the self-attention and MLP (DiT, Peebles & Xie 2023), so
  each block starts as the identity and the zero-initialised output starts at u = 0.

Attention projections are `nn.Linear` modules named `to_q`, `to_k`, `to_v`, `to_out`:
the targets of LoRA/DoRA adapters. The config attribute is `dit_config` because peft
reads a model's `config` attribute as a transformers config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genalign.config.base import ConfigError
from genalign.config.part_dit import PartDiTConfig
from genalign.storage import ArtifactError, atomic_dir, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "genalign-part-dit"

# Diffusers' and PartCrafter's timestep embeddings take t in scheduler units [0, 1000].
TIME_SCALE = 1000.0
# Sinusoidal embedding max period (Vaswani et al. 2017; DiT, diffusers Timesteps).
MAX_PERIOD = 10_000.0


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding `[B, dim]` of t in [0, 1], scaled to [0, 1000]: [sin | cos]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(MAX_PERIOD) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = (t.float() * TIME_SCALE)[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x [B, L, H] with per-object shift, scale [B, 1, H]."""
    return torch.addcmul(shift, x, 1 + scale)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (the LoRA targets).

    Self-attention when `context` is None, cross-attention otherwise.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim or dim, dim)
        self.to_v = nn.Linear(context_dim or dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None
    ) -> Tensor:
        """x [B, L, H]; context [B, S, C] (default x); key_mask bool [B, S], True = attend."""
        context = x if context is None else context
        b, n, _ = x.shape
        s = context.shape[1]
        q = self.to_q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(context).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = self.to_v(context).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, S]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, L, hd]
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class PartDiTBlock(nn.Module):
    """Self-attention (local: within a part, or global: across parts), cross-attention to
    the conditioning tokens, MLP; adaLN-Zero modulation of self-attention and MLP."""

    def __init__(self, cfg: PartDiTConfig, scope: str) -> None:
        super().__init__()
        h = cfg.hidden
        self.scope = scope
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(h, cfg.heads)
        self.norm2 = nn.LayerNorm(h, eps=1e-6)
        self.cross_attn = Attention(h, cfg.heads, context_dim=cfg.cond_dim)
        self.norm3 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        inner = int(h * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(h, inner), nn.GELU(), nn.Linear(inner, h))
        # shift/scale/gate for self-attention and for the MLP; zero init = identity block.
        self.modulation = nn.Linear(h, 6 * h)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, c: Tensor, cond: Tensor, token_mask: Tensor, parts: int) -> Tensor:
        """x [B, P*T, H]; c [B, 1, H]; cond [B, N, C]; token_mask bool [B, P*T]; parts = P."""
        b, n, h = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c)).chunk(6, dim=-1)
        y = _modulate(self.norm1(x), shift1, scale1)
        if self.scope == "local":
            y = self.attn(y.reshape(b * parts, n // parts, h)).view(b, n, h)
        else:
            y = self.attn(y, key_mask=token_mask)
        x = torch.addcmul(x, gate1, y)
        # Cross-attention is per query token, so the [B, P*T] layout serves both scopes.
        x = x + self.cross_attn(self.norm2(x), cond)
        y = _modulate(self.norm3(x), shift2, scale2)
        return torch.addcmul(x, gate2, self.mlp(y))


class PartDiT(nn.Module):
    """`forward(x [B,P,T,D], t [B], cond [B,N,C], part_mask [B,P]) -> u [B,P,T,D]`."""

    def __init__(self, dit_config: PartDiTConfig) -> None:
        super().__init__()
        cfg = dit_config
        self.dit_config = cfg
        h = cfg.hidden
        self.proj_in = nn.Linear(cfg.token_dim, h)
        self.part_embedding = nn.Embedding(cfg.max_parts, h)
        self.token_embedding = nn.Embedding(cfg.tokens_per_part, h)
        nn.init.normal_(self.part_embedding.weight, std=0.02)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.time_mlp = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h))
        # The mean conditioning token joins the timestep in the modulation vector, as a
        # class embedding does in DiT; cross-attention carries the per-token detail.
        self.cond_pool = nn.Linear(cfg.cond_dim, h)
        self.blocks = nn.ModuleList(
            PartDiTBlock(cfg, "local" if i % 2 == 0 else "global") for i in range(cfg.depth)
        )
        self.norm_out = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(h, 2 * h)
        self.proj_out = nn.Linear(h, cfg.token_dim)
        for layer in (self.modulation_out, self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, part_mask: Tensor) -> Tensor:
        self._check_inputs(x, t, cond, part_mask)
        b, p, tokens, _ = x.shape
        parts = torch.arange(p, device=x.device)
        slots = torch.arange(tokens, device=x.device)
        h = self.proj_in(x)  # [B, P, T, H]
        h = (
            h
            + self.part_embedding(parts)[None, :, None, :]
            + self.token_embedding(slots)[None, None, :, :]
        )
        h = h.reshape(b, p * tokens, -1)  # [B, P*T, H], part-major
        c = self.time_mlp(timestep_embedding(t, self.dit_config.hidden).to(h.dtype))  # [B, H]
        c = (c + self.cond_pool(cond.mean(dim=1)))[:, None, :]  # [B, 1, H]
        token_mask = part_mask.repeat_interleave(tokens, dim=1)  # [B, P*T]
        for block in self.blocks:
            h = block(h, c, cond, token_mask, p)
        shift, scale = self.modulation_out(F.silu(c)).chunk(2, dim=-1)
        u = self.proj_out(_modulate(self.norm_out(h), shift, scale)).view(x.shape)  # [B, P, T, D]
        return u * part_mask[:, :, None, None].to(u.dtype)

    def _check_inputs(self, x: Tensor, t: Tensor, cond: Tensor, part_mask: Tensor) -> None:
        cfg = self.dit_config
        if x.ndim != 4 or x.shape[2:] != (cfg.tokens_per_part, cfg.token_dim):
            raise ValueError(
                f"PartDiT: x must be [B, P, {cfg.tokens_per_part}, {cfg.token_dim}], got {list(x.shape)}"
            )
        b, p = x.shape[:2]
        if not 1 <= p <= cfg.max_parts:
            raise ValueError(f"PartDiT: x has {p} part slots; the model has {cfg.max_parts}")
        if t.shape != (b,):
            raise ValueError(f"PartDiT: t must be [B] = [{b}], got {list(t.shape)}")
        if cond.ndim != 3 or cond.shape[0] != b or cond.shape[2] != cfg.cond_dim:
            raise ValueError(
                f"PartDiT: cond must be [{b}, N, {cfg.cond_dim}], got {list(cond.shape)}"
            )
        if part_mask.dtype != torch.bool or part_mask.shape != (b, p):
            raise ValueError(
                f"PartDiT: part_mask must be bool [{b}, {p}], got {part_mask.dtype} {list(part_mask.shape)}"
            )
        # An object with no real part has no key to attend to in global attention.
        empty = ~part_mask.any(dim=1)
        if bool(empty.any()):
            raise ValueError(
                f"PartDiT: objects {empty.nonzero().flatten().tolist()} have no real part"
            )

    def save_pretrained(self, directory: Path) -> Path:
        """Write `config.json` and `model.safetensors` into `directory`, atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_dir(directory) as tmp:
            atomic_write_json(
                tmp / CONFIG_NAME, {"model_type": MODEL_TYPE, **self.dit_config.to_dict()}
            )
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: torch.device | str = "cpu") -> PartDiT:
        """Load a model written by `save_pretrained`; errors name the file and the tensor."""
        from genalign.models.weights import load_checked

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ArtifactError(
                    f"{path}: missing; not a PartDiT directory (save_pretrained writes it)"
                )
        try:
            raw = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{config_path}: invalid JSON ({e})") from e
        model_type = raw.pop("model_type", None)
        if model_type != MODEL_TYPE:
            raise ArtifactError(
                f"{config_path}: model_type is {model_type!r}, expected {MODEL_TYPE!r}"
            )
        try:
            cfg = PartDiTConfig.from_dict(raw, where=str(config_path))
        except ConfigError as e:
            raise ArtifactError(str(e)) from e
        model = cls(cfg)
        load_checked(model, weights_path, "the config")
        return model.to(device).eval()
