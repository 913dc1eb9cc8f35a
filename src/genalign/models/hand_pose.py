"""Hand-pose transformer: the 21 joints of a hand and the pose of the object it grasps,
from one hand-centred crop and the crop's intrinsics.

Joints are in DexYCB/MANO order: 0 wrist; 1-4 thumb; 5-8 index; 9-12 middle; 13-16 ring;
17-20 little (each finger from its base to its tip).

    model = HandPoseModel(HandPoseModelConfig())          # tiny: no hub, no download
    out = model(images, K)   # images float [B, 3, S, S] in [0, 1]; K [B, 3, 3] crop px
    save_hand_pose(model, cfg, out_dir); model, cfg = load_hand_pose(out_dir)

Architecture (the recipe of the Advanced Manipulation Transformer on DexYCB):

- backbone: a transformers `Dinov2Model` (DINOv2, Oquab et al. 2023, "DINOv2: Learning
  Robust Visual Features without Supervision"); its `last_hidden_state` patch tokens
  [B, T, C] (CLS dropped) are projected to the decoder width W, plus a learned position
  embedding, plus one camera token made from the crop intrinsics (below). Images are
  normalised with the ImageNet mean/std inside the model, as DINOv2's preprocessor does.
- hand: 21 learned joint queries, DETR-style (Carion et al. 2020, "End-to-End Object
  Detection with Transformers"), decoded by pre-norm transformer decoder layers
  (self-attention among the queries, cross-attention to the image and camera tokens).
  Per-joint heads give the root-relative 3D joints, the 2D joints and, from the wrist's
  query, the root depth.
- stochastic head (stochastic_head=True): the mean of the joint features parametrises a
  Gaussian latent (mu, logvar); z = mu + sigma * eps in training, z = mu in eval, and a
  linear map of z is added to every joint feature. `kl` is KL(N(mu, sigma²) ‖ N(0, I)),
  summed over latent dims and averaged over the batch. This is a VAE-style head for
  ambiguous poses, NOT Apple's σReparam (that is `sigma_reparam`, below).
- object (object_branch=True): one learned object query in its own decoder, whose memory
  is the image and camera tokens plus the 21 joint features (so the object sees the
  hand); heads give the object centre relative to the wrist (mm, camera axes) and a 6D
  rotation turned into a matrix by Gram-Schmidt (Zhou et al. 2019, "On the Continuity
  of Rotation Representations in Neural Networks").
- refine (refine_steps N > 0): pixel-aligned refinement. At step k the backbone's patch
  feature map [B, C, S/p, S/p] is sampled bilinearly at the current 2D joints; the
  sample, the joint feature and the current 3D and 2D estimates go through one MLP
  (shared across steps) that predicts deltas of the 3D and 2D joints, applied with step
  size refine_step_size * 0.5**k.

Units and conventions:
- 3D joints are root-relative (the wrist is exactly 0) in millimetres, camera axes.
  Heads predict decimetres (`JOINT_UNIT_MM`): hand joints lie within ~200 mm of the
  wrist, so outputs and their gradients are O(1) at the default initialisation.
- 2D joints: pixel centres are at integers and a crop of side S spans [-0.5, S - 0.5]
  (OpenCV's convention, the one K uses). Internally a joint is in normalised crop
  coordinates x_n = (2u + 1) / S - 1 in [-1, 1], exactly the grid of `F.grid_sample`
  with align_corners=False, so sampling needs no further conversion; u = ((x_n + 1) S - 1) / 2.
- Root depth: a crop cut around the hand and resized to S px has focal f (px) growing
  with the hand's distance: at wrist depth Z the crop spans E = Z S / f millimetres,
  about the hand's size times the crop margin, whatever Z. So the wrist's query predicts
  d = log(E / E0) (E0 = `CROP_EXTENT_PRIOR_MM`), identifiable from the image alone, and
  Z = (f / S) E0 exp(d), with f = sqrt(fx fy) (fx for square pixels). The camera token,
  from (log fx/S, log fy/S, principal point in normalised coordinates), also enters the
  depth head, so the perspective of an off-centre or non-square crop is known.
- `joints_cam`: the wrist back-projected from joints2d[:, 0] at root_depth through K
  (Z · K⁻¹ [u, v, 1]ᵀ), plus refined3d. Its wrist projects back to joints2d[:, 0].
- Mixed precision: the weights are float32; under bf16 autocast the backbone and the
  decoders run in bf16, while the heads, the refinement and the camera geometry run with
  autocast off, so every output is float32.

σReparam (sigma_reparam=True): after the model is built (and a pretrained backbone
loaded), every `nn.Linear` of the backbone, the decoders and the heads becomes a
`SigmaReparamLinear` (Zhai et al. 2023; `genalign.models.sigma_reparam`) with the same
weights. The decoders' attention uses separate nn.Linear q/k/v/o projections rather than
`nn.MultiheadAttention` so that the conversion reaches them.

`parameter_groups()` gives "backbone", "hand" (which includes the shared token
projection and the camera token), "object" and "refine": disjoint, covering all
parameters, for per-phase training and learning rates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genalign.config.base import ConfigError
from genalign.config.hand_pose_model import TINY_BACKBONE, HandPoseModelConfig
from genalign.models.sigma_reparam import convert_to_sigma_reparam
from genalign.models.vision import IMAGENET_MEAN, IMAGENET_STD
from genalign.storage import ArtifactError, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Written only for a pretrained backbone: its transformers Dinov2Config, so that loading
# rebuilds the architecture without the hub (the weights are in model.safetensors).
BACKBONE_CONFIG_NAME = "backbone_config.json"

NUM_JOINTS = 21
# Heads predict decimetres: root-relative hand joints are within ~200 mm of the wrist.
JOINT_UNIT_MM = 100.0
# Metric side of a hand crop at the wrist's depth: a ~190 mm hand (wrist to middle tip)
# in a crop ~1.5x its size. Only the starting point: the depth head's bias learns the
# data's value.
CROP_EXTENT_PRIOR_MM = 300.0
# The camera token's inputs: log fx/S, log fy/S, principal point (x, y) normalised.
CAMERA_FEATURES = 4
# MLP width of the decoder layers, as a multiple of the width (DETR, ViT: 4).
MLP_RATIO = 4
# The 6D rotation of the identity (the first two columns of I, Zhou et al. 2019).
_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# The refinement MLP's output layer starts at 1% of the default init: refinement starts
# close to the decoder's estimate, yet every refine weight gets a gradient from the first
# step (an exactly zero layer would block those before it, and σReparam refuses it).
_REFINE_OUT_INIT_SCALE = 0.01


class HandPoseOutput(NamedTuple):
    """The model's outputs; millimetres and crop pixels throughout."""

    joints3d: Tensor  # [B, 21, 3] root-relative mm (wrist = 0), before refinement
    # [B, 21, 3] root-relative mm after refinement (== joints3d when refine_steps == 0)
    refined3d: Tensor
    joints2d: Tensor  # [B, 21, 2] crop pixels (u, v), after refinement
    root_depth: Tensor  # [B] mm, camera-frame Z of the wrist
    joints_cam: Tensor  # [B, 21, 3] mm camera frame: back-projected wrist + refined3d
    # [B, 3] mm, object centre minus wrist, camera axes (zeros without the object branch)
    object_translation: Tensor
    # [B, 3, 3] object-to-camera rotation (identity without the object branch)
    object_rotation: Tensor
    kl: Tensor  # scalar, KL of the stochastic head (0 without it)
    joint_features: Tensor  # [B, 21, W] decoder features of the joints (diagnostics)


def _rotation_6d(x: Tensor) -> Tensor:
    """6D rotation [..., 6] -> matrix [..., 3, 3] by Gram-Schmidt (Zhou et al. 2019, sec. 4.2).

    The columns are b1 = a1/|a1|, b2 = the normalised part of a2 orthogonal to b1, and
    b3 = b1 x b2 (pytorch3d's `rotation_6d_to_matrix` stacks them as rows instead).
    Kept here rather than in genalign.losses so the model depends on no loss module.
    """
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def _full_precision(x: Tensor) -> torch.autocast:
    """Autocast off, for the regression heads and the refinement (float32 in, float32 out):
    in bf16 a 224 px coordinate is quantised to ~1 px, joints to ~0.5 mm, and small
    refinement deltas vanish when added to the estimate. The heads are a few small matmuls."""
    return torch.autocast(x.device.type, enabled=False)


def camera_features(K: Tensor, image_size: int) -> Tensor:
    """The camera token's inputs [B, 4] from crop intrinsics K [B, 3, 3]:
    log(fx / S), log(fy / S) (= log of depth over the crop's metric extent, O(1)) and the
    principal point in normalised crop coordinates (0 at the centre of the crop)."""
    s = float(image_size)
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    return torch.stack(
        [torch.log(fx / s), torch.log(fy / s), (2 * cx + 1) / s - 1, (2 * cy + 1) / s - 1], dim=-1
    )


def root_depth_from_log_extent(log_extent: Tensor, K: Tensor, image_size: int) -> Tensor:
    """Z [B] mm from the head's d [B]: Z = (f / S) E0 exp(d), f = sqrt(fx fy) px."""
    f = torch.sqrt(K[:, 0, 0] * K[:, 1, 1])
    return f / image_size * CROP_EXTENT_PRIOR_MM * torch.exp(log_extent)


def log_extent_from_root_depth(root_depth: Tensor, K: Tensor, image_size: int) -> Tensor:
    """The inverse: d = log(Z S / (f E0)), the depth head's own unit, for a depth loss
    that weighs near and far hands alike."""
    f = torch.sqrt(K[:, 0, 0] * K[:, 1, 1])
    return torch.log(root_depth * image_size / (f * CROP_EXTENT_PRIOR_MM))


def pixels_to_normalised(uv: Tensor, image_size: int) -> Tensor:
    """Crop pixels (centres at integers) -> grid_sample coordinates (align_corners=False)."""
    return (2 * uv + 1) / image_size - 1


def normalised_to_pixels(xy: Tensor, image_size: int) -> Tensor:
    """grid_sample coordinates (align_corners=False) -> crop pixels (centres at integers)."""
    return ((xy + 1) * image_size - 1) / 2


class _Attention(nn.Module):
    """Multi-head attention with separate nn.Linear q/k/v/o projections (σReparam targets)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x [B, L, W] attends to context [B, M, W] -> [B, L, W]."""
        b, n, w = x.shape
        m = context.shape[1]
        q = self.q_proj(x).view(b, n, self.heads, -1).transpose(1, 2)  # [B, h, L, W/h]
        k = self.k_proj(context).view(b, m, self.heads, -1).transpose(1, 2)  # [B, h, M, W/h]
        v = self.v_proj(context).view(b, m, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, L, W/h]
        return self.o_proj(out.transpose(1, 2).reshape(b, n, w))


class _DecoderLayer(nn.Module):
    """The layer of `nn.TransformerDecoderLayer(norm_first=True, batch_first=True,
    dropout=0, activation="gelu")`: x += SelfAttn(LN x); x += CrossAttn(LN x, memory);
    x += MLP(LN x). Written out because nn.MultiheadAttention packs q/k/v into one
    parameter that σReparam cannot convert."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = _Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = _Attention(width, heads)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, MLP_RATIO * width), nn.GELU(), nn.Linear(MLP_RATIO * width, width)
        )

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """x [B, L, W] queries; memory [B, M, W]."""
        y = self.norm1(x)
        x = x + self.self_attn(y, y)
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.mlp(self.norm3(x))


class _Decoder(nn.Module):
    """Pre-norm decoder layers and the final LayerNorm that pre-norm stacks need."""

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_DecoderLayer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory)
        return self.norm(x)


class _HandBranch(nn.Module):
    """Image/camera tokens -> joint features, root-relative 3D (dm), 2D (normalised) and
    the root's log crop extent; with the stochastic head, its KL."""

    def __init__(self, cfg: HandPoseModelConfig, backbone_hidden: int, tokens: int) -> None:
        super().__init__()
        w = cfg.width
        self.token_proj = nn.Linear(backbone_hidden, w)
        # DINOv2's tokens carry its own position embedding; this one is the decoder's,
        # learned at the decoder's width (DETR adds positional encodings to the memory).
        self.position = nn.Parameter(torch.randn(1, tokens, w) * 0.02)
        self.camera = nn.Sequential(nn.Linear(CAMERA_FEATURES, w), nn.GELU(), nn.Linear(w, w))
        # DETR's learned object queries: nn.Embedding, N(0, 1).
        self.queries = nn.Parameter(torch.randn(NUM_JOINTS, w))
        self.decoder = _Decoder(w, cfg.heads, cfg.decoder_layers)
        self.stochastic = cfg.stochastic_head
        if cfg.stochastic_head:
            self.to_latent = nn.Linear(w, 2 * cfg.latent_dim)
            self.from_latent = nn.Linear(cfg.latent_dim, w)
        self.head3d = nn.Linear(w, 3)
        self.head2d = nn.Linear(w, 2)
        self.depth = nn.Linear(w + CAMERA_FEATURES, 1)

    def forward(
        self, tokens: Tensor, camera: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """tokens [B, T, C]; camera [B, 4] ->
        memory [B, T+1, W], features [B, 21, W], 3D [B, 21, 3] dm (wrist 0),
        2D [B, 21, 2] normalised, log extent [B], kl scalar."""
        b = tokens.shape[0]
        camera_token = self.camera(camera)[:, None]  # [B, 1, W]
        memory = torch.cat([self.token_proj(tokens) + self.position, camera_token], dim=1)
        h = self.decoder(self.queries.expand(b, -1, -1), memory)  # [B, 21, W]
        with _full_precision(h):
            h = h.float()
            kl = h.new_zeros(())
            if self.stochastic:
                mu, logvar = self.to_latent(h.mean(dim=1)).chunk(2, dim=-1)  # [B, L] each
                z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
                h = h + self.from_latent(z)[:, None]
                # KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum(sigma^2 + mu^2 - 1 - log sigma^2)
                kl = 0.5 * (logvar.exp() + mu.square() - 1 - logvar).sum(dim=-1).mean()
            j3d = self.head3d(h)  # [B, 21, 3] dm
            j3d = torch.cat([torch.zeros_like(j3d[:, :1]), j3d[:, 1:]], dim=1)  # the root is 0
            xy = self.head2d(h)  # [B, 21, 2] normalised
            log_extent = self.depth(torch.cat([h[:, 0], camera.float()], dim=-1))[:, 0]  # [B]
        return memory, h, j3d, xy, log_extent, kl


class _ObjectBranch(nn.Module):
    """One object query decoded against the image/camera tokens and the joint features."""

    def __init__(self, cfg: HandPoseModelConfig) -> None:
        super().__init__()
        w = cfg.width
        self.query = nn.Parameter(torch.randn(1, w))
        self.decoder = _Decoder(w, cfg.heads, cfg.decoder_layers)
        self.translation = nn.Linear(w, 3)
        self.rotation = nn.Linear(w, 6)
        with torch.no_grad():
            # Start near the identity rotation rather than a random one.
            self.rotation.bias.copy_(torch.tensor(_IDENTITY_6D))

    def forward(self, memory: Tensor, joint_features: Tensor) -> tuple[Tensor, Tensor]:
        """memory [B, M, W]; joint_features [B, 21, W] -> translation [B, 3] mm, R [B, 3, 3]."""
        b = memory.shape[0]
        context = torch.cat([memory, joint_features], dim=1)  # [B, M+21, W]
        o = self.decoder(self.query.expand(b, -1, -1), context)[:, 0]  # [B, W]
        with _full_precision(o):
            o = o.float()
            return self.translation(o) * JOINT_UNIT_MM, _rotation_6d(self.rotation(o))


class _Refiner(nn.Module):
    """Pixel-aligned refinement: one MLP, shared across steps, on [sampled feature, joint
    feature, 3D (dm), 2D (normalised)] -> deltas of the 3D (dm) and 2D (normalised)."""

    def __init__(self, cfg: HandPoseModelConfig, backbone_hidden: int) -> None:
        super().__init__()
        w = cfg.width
        self.steps = cfg.refine_steps
        self.step_size = cfg.refine_step_size
        self.mlp = nn.Sequential(
            nn.Linear(backbone_hidden + w + 5, w),
            nn.GELU(),
            nn.Linear(w, w),
            nn.GELU(),
            nn.Linear(w, 5),
        )
        with torch.no_grad():
            self.mlp[-1].weight.mul_(_REFINE_OUT_INIT_SCALE)
            self.mlp[-1].bias.zero_()

    def forward(
        self, feature_map: Tensor, h: Tensor, j3d: Tensor, xy: Tensor
    ) -> tuple[Tensor, Tensor]:
        """feature_map [B, C, S/p, S/p]; h [B, 21, W]; j3d [B, 21, 3] dm; xy [B, 21, 2]
        normalised -> refined (j3d, xy)."""
        with _full_precision(h):
            feature_map = feature_map.float()
            for k in range(self.steps):
                # The sampling location is detached, as in iterative refinement with sampled
                # features (RAFT, Teed & Deng 2020): the bilinear weights' derivative in the
                # location is piecewise constant per cell, a poor signal for the 2D head.
                grid = xy.detach()[:, :, None, :]  # [B, 21, 1, 2] (x, y)
                # Border padding: a joint outside the crop reads the nearest edge feature.
                sampled = F.grid_sample(
                    feature_map, grid, mode="bilinear", padding_mode="border", align_corners=False
                )  # [B, C, 21, 1]
                sampled = sampled[..., 0].transpose(1, 2)  # [B, 21, C]
                delta = self.mlp(torch.cat([sampled, h, j3d, xy], dim=-1))  # [B, 21, 5]
                step = self.step_size * 0.5**k
                # The root stays at 0.
                d3 = torch.cat([torch.zeros_like(delta[:, :1, :3]), delta[:, 1:, :3]], dim=1)
                j3d = j3d + step * d3
                xy = xy + step * delta[..., 3:]
        return j3d, xy


class HandPoseModel(nn.Module):
    """`forward(images [B, 3, S, S] in [0, 1], K [B, 3, 3]) -> HandPoseOutput` (module docstring).

    `backbone_dir`: for a config whose backbone is not "tiny", the local directory the
    reference resolves to (`genalign.models.refs.resolve`), loaded with
    `Dinov2Model.from_pretrained`. `backbone_config` (used by `load_hand_pose`): a saved
    Dinov2Config as a dict, to build the pretrained architecture with untrained weights
    that a state dict then fills. The initialisation is seeded by `cfg.seed` in a private
    RNG stream; the caller's global RNG is left as it was.
    """

    def __init__(
        self,
        cfg: HandPoseModelConfig,
        backbone_dir: Path | None = None,
        *,
        backbone_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.backbone = _build_backbone(cfg, backbone_dir, backbone_config)
            hidden = self.backbone.config.hidden_size
            patch = self.backbone.config.patch_size
            if patch != cfg.patch_size:
                raise ValueError(
                    f"HandPoseModelConfig.patch_size is {cfg.patch_size} but the backbone "
                    f"{cfg.backbone!r} has patch_size {patch}; set patch_size to {patch} "
                    f"(and image_size to a multiple of it)"
                )
            self.grid = cfg.image_size // cfg.patch_size
            self.hand = _HandBranch(cfg, hidden, self.grid * self.grid)
            self.object = _ObjectBranch(cfg) if cfg.object_branch else None
            self.refine = _Refiner(cfg, hidden) if cfg.refine_steps else None
        if cfg.gradient_checkpointing:
            # Non-reentrant: reentrant checkpointing drops the parameters' gradients when
            # no input of the layer requires grad, and the images never do.
            self.backbone.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )
        # After building and loading: the converted layers keep the (pretrained) weights.
        self.sigma_reparam_layers = convert_to_sigma_reparam(self) if cfg.sigma_reparam else 0

    def forward(self, images: Tensor, K: Tensor) -> HandPoseOutput:
        self._check_inputs(images, K)
        b, s = images.shape[0], self.cfg.image_size
        x = (images - self.pixel_mean) / self.pixel_std
        tokens = self.backbone(pixel_values=x).last_hidden_state[:, 1:]  # [B, T, C], no CLS
        # Dinov2's patch tokens are row-major (flatten of the patch conv's [H/p, W/p]).
        # [B, C, S/p, S/p]
        feature_map = tokens.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        camera = camera_features(K.float(), s)  # [B, 4]
        memory, h, j3d, xy, log_extent, kl = self.hand(tokens, camera)
        joints3d = j3d * JOINT_UNIT_MM  # [B, 21, 3] mm
        if self.refine is not None:
            j3d, xy = self.refine(feature_map, h, j3d, xy)
        refined3d = j3d * JOINT_UNIT_MM
        joints2d = normalised_to_pixels(xy, s)  # [B, 21, 2] px
        # Camera geometry in float32: a bf16 depth or back-projection is off by millimetres.
        root_depth = root_depth_from_log_extent(log_extent.float(), K.float(), s)  # [B]
        uv1 = F.pad(joints2d[:, 0].float(), (0, 1), value=1.0)  # [B, 3]
        ray = torch.linalg.solve(K.float(), uv1)  # [B, 3], K^-1 [u, v, 1]
        root = ray / ray[:, 2:] * root_depth[:, None]  # [B, 3], Z = root_depth
        joints_cam = root[:, None] + refined3d  # [B, 21, 3]
        if self.object is not None:
            translation, rotation = self.object(memory, h)
        else:
            translation = refined3d.new_zeros(b, 3)
            rotation = torch.eye(3, dtype=refined3d.dtype, device=refined3d.device).expand(b, 3, 3)
        return HandPoseOutput(
            joints3d=joints3d,
            refined3d=refined3d,
            joints2d=joints2d,
            root_depth=root_depth,
            joints_cam=joints_cam,
            object_translation=translation,
            object_rotation=rotation,
            kl=kl,
            joint_features=h,
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"backbone", "hand", "object", "refine"} -> parameters: disjoint, all of them.
        "hand" includes the token projection and camera token the object branch shares;
        "object" and "refine" are empty when their branch is off."""
        return {
            "backbone": list(self.backbone.parameters()),
            "hand": list(self.hand.parameters()),
            "object": [] if self.object is None else list(self.object.parameters()),
            "refine": [] if self.refine is None else list(self.refine.parameters()),
        }

    def _check_inputs(self, images: Tensor, K: Tensor) -> None:
        s = self.cfg.image_size
        if images.ndim != 4 or images.shape[1:] != (3, s, s) or not images.is_floating_point():
            raise ValueError(
                f"HandPoseModel: images must be float [B, 3, {s}, {s}] in [0, 1], "
                f"got {images.dtype} {list(images.shape)}"
            )
        if K.shape != (images.shape[0], 3, 3):
            raise ValueError(
                f"HandPoseModel: K must be [B, 3, 3] = [{images.shape[0]}, 3, 3] crop "
                f"intrinsics in pixels, got {list(K.shape)}"
            )


def _build_backbone(
    cfg: HandPoseModelConfig, backbone_dir: Path | None, backbone_config: dict | None
) -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    if cfg.backbone == TINY_BACKBONE:
        if backbone_dir is not None or backbone_config is not None:
            raise ValueError(
                "HandPoseModel: backbone is 'tiny' (built from the config); "
                "backbone_dir and backbone_config must be None"
            )
        config = Dinov2Config(
            hidden_size=cfg.backbone_hidden,
            num_hidden_layers=cfg.backbone_layers,
            num_attention_heads=cfg.backbone_heads,
            patch_size=cfg.patch_size,
            image_size=cfg.image_size,
        )
        return Dinov2Model(config)
    if (backbone_dir is None) == (backbone_config is None):
        raise ValueError(
            f"HandPoseModel: backbone {cfg.backbone!r} is pretrained; pass exactly one of "
            "backbone_dir (the local directory the reference resolves to, "
            "genalign.models.refs.resolve) or backbone_config (load_hand_pose)"
        )
    if backbone_config is not None:
        return Dinov2Model(Dinov2Config.from_dict(backbone_config))
    directory = Path(backbone_dir)
    if not (directory / "config.json").is_file():
        raise ArtifactError(
            f"{directory / 'config.json'}: missing; backbone_dir for {cfg.backbone!r} must be "
            "a saved transformers Dinov2Model"
        )
    # float32 like the heads; transformers would otherwise keep the checkpoint's dtype.
    return Dinov2Model.from_pretrained(directory, dtype=torch.float32)


def save_hand_pose(model: HandPoseModel, cfg: HandPoseModelConfig, out_dir: Path) -> Path:
    """Write `model.safetensors` (the state dict, buffers included: σReparam's u, v) and
    `config.json` (`cfg.to_dict()`) into `out_dir`, each file renamed into place from a
    temporary sibling; for a pretrained backbone also `backbone_config.json`, its
    Dinov2Config. Other files in `out_dir` stay (a trainer's checkpoints, an adapter)."""
    from safetensors.torch import save_file

    if model.cfg != cfg:
        changed = sorted(k for k, v in cfg.to_dict().items() if model.cfg.to_dict()[k] != v)
        raise ValueError(f"save_hand_pose: cfg differs from the model's config in {changed}")
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(partial), metadata={"format": "pt"})
    os.replace(partial, out_dir / WEIGHTS_NAME)
    if cfg.backbone != TINY_BACKBONE:
        atomic_write_json(out_dir / BACKBONE_CONFIG_NAME, model.backbone.config.to_dict())
    atomic_write_json(out_dir / CONFIG_NAME, cfg.to_dict())  # last: a directory with it is complete
    return out_dir


def load_hand_pose(
    directory: Path, *, device: torch.device | str = "cpu"
) -> tuple[HandPoseModel, HandPoseModelConfig]:
    """(model in eval mode, config) from a `save_hand_pose` directory; never needs a hub.
    Errors name the file (and the tensors that do not match)."""
    from genalign.models.weights import load_checked

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; not a hand-pose model (save_hand_pose writes it)")
    try:
        cfg = HandPoseModelConfig.from_dict(_read_json(config_path), where=str(config_path))
    except ConfigError as e:
        raise ArtifactError(str(e)) from e
    backbone_config = None
    if cfg.backbone != TINY_BACKBONE:
        path = directory / BACKBONE_CONFIG_NAME
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; a pretrained backbone's model needs its Dinov2Config")
        backbone_config = _read_json(path)
    model = HandPoseModel(cfg, backbone_config=backbone_config)
    load_checked(model, weights_path, config_path.name)
    return model.to(device).eval(), cfg


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
