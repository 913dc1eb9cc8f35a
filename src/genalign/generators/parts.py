"""Part generator: the part DiT (optionally with a peft adapter) plus its frozen image
encoder, sampled with Euler steps of the flow ODE and classifier-free guidance.

A generator directory holds

    genalign.json   model card: kind "model", arch "part-generator",
                    components {"dit": "dit", "vision": "vision"}
    dit/            PartDiT.save_pretrained
    vision/         a Dinov2Model + preprocessor_config.json (genalign.models.vision)

(`genalign.models.part_generator.build_tiny_generator` writes a random-init one.)
`generator_from_ref` opens such a directory, an adapter directory over one (its card's
`base_model` resolved), or a PartCrafter checkpoint (see `genalign.generators.partcrafter`),
behind one interface: `encode_images`, `sample`, `decode`.

Sampling (PartCrafter's convention, t = 1 is noise): x_t = (1 - t) x0 + t eps, the DiT
predicts u = x0 - eps, and an Euler step from t to t - dt is x_{t-dt} = x_t + dt * u.
With guidance g, u = u(zeros) + g * (u(cond) - u(zeros)), both halves in one batch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from genalign.artifacts import MODEL, ModelCard, read_model_card
from genalign.config.part_dit import PartDiTConfig
from genalign.models.part_dit import PartDiT
from genalign.models.part_generator import KIND, META_NAME
from genalign.models.vision import VisionEncoder
from genalign.records import Condition
from genalign.storage import ArtifactError

if TYPE_CHECKING:
    import trimesh


def read_meta(model_dir: Path) -> ModelCard:
    """The model card of a generator directory (`genalign.artifacts.read_model_card`)."""
    path = Path(model_dir) / META_NAME
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; not a generator directory")
    return read_model_card(model_dir)


class PartGenerator:
    """Samples part latents `[P, T, D]` from image features with a (possibly adapted) PartDiT."""

    def __init__(
        self, dit: torch.nn.Module, vision: VisionEncoder, *, device: torch.device | str = "cpu"
    ) -> None:
        self.dit = dit.to(device).eval()
        self.vision = vision
        self.device = torch.device(device)
        # A PeftModel forwards attribute reads to the PartDiT it wraps.
        self.dit_config: PartDiTConfig = dit.dit_config

    @classmethod
    def load(
        cls, model_dir: Path, adapter_dir: Path | None = None, *, device: torch.device | str = "cpu"
    ) -> PartGenerator:
        """Open a generator directory; with `adapter_dir`, wrap the DiT in that peft adapter."""
        model_dir = Path(model_dir)
        card = read_meta(model_dir)
        if card.kind != "model" or card.arch != KIND:
            raise ArtifactError(
                f"{model_dir / META_NAME}: kind {card.kind!r} arch {card.arch!r}, expected a "
                f"'model' of arch {KIND!r}"
            )
        parts = {"dit": "dit", "vision": "vision", **card.components}
        dit: torch.nn.Module = PartDiT.from_pretrained(model_dir / parts["dit"])
        if adapter_dir is not None:
            from peft import PeftModel

            adapter_dir = Path(adapter_dir)
            if not (adapter_dir / "adapter_config.json").is_file():
                raise ArtifactError(
                    f"{adapter_dir}: no adapter_config.json; not a peft adapter directory"
                )
            dit = PeftModel.from_pretrained(dit, adapter_dir)
        vision = VisionEncoder.from_pretrained(model_dir / parts["vision"], device=device)
        return cls(dit, vision, device=device)

    def encode_images(self, images: list[np.ndarray]) -> Tensor:
        """uint8 HxWx3 images -> conditioning tokens `[B, N, C]`."""
        return self.vision.encode(images)

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        num_parts: list[int],
        seeds: list[int],
        *,
        steps: int = 20,
        guidance: float = 2.0,
    ) -> list[Tensor]:
        """Euler-integrate the flow from noise (t=1) to data (t=0): one `[P_i, T, D]` per row.

        Sample i starts from noise drawn by a torch.Generator seeded with seeds[i], on the
        CPU, so its result does not depend on the batch it is in or on the device.
        """
        cfg = self.dit_config
        b = cond.shape[0]
        if cond.ndim != 3 or cond.shape[2] != cfg.cond_dim:
            raise ValueError(f"sample: cond must be [B, N, {cfg.cond_dim}], got {list(cond.shape)}")
        if len(num_parts) != b or len(seeds) != b:
            raise ValueError(
                f"sample: {b} conditions but {len(num_parts)} num_parts and {len(seeds)} seeds"
            )
        bad = [n for n in num_parts if not 1 <= n <= cfg.max_parts]
        if bad:
            raise ValueError(f"sample: num_parts must be in [1, {cfg.max_parts}], got {bad}")
        if steps < 1:
            raise ValueError(f"sample: steps must be >= 1, got {steps}")
        p = max(num_parts)
        shape = (cfg.tokens_per_part, cfg.token_dim)
        x = torch.zeros(b, p, *shape)
        for i, (n, seed) in enumerate(zip(num_parts, seeds)):
            x[i, :n] = torch.randn(n, *shape, generator=torch.Generator().manual_seed(int(seed)))
        x = x.to(self.device)  # [B, P, T, D]
        mask = (torch.arange(p)[None, :] < torch.tensor(num_parts)[:, None]).to(
            self.device
        )  # [B, P]
        cond = cond.to(self.device, torch.float32)
        guided = guidance != 1.0
        if guided:
            cond_in = torch.cat([torch.zeros_like(cond), cond])  # uncond first, as PartCrafter
            mask_in = torch.cat([mask, mask])
        else:
            cond_in, mask_in = cond, mask
        times = torch.linspace(1.0, 0.0, steps + 1)
        for k in range(steps):
            t, dt = times[k], times[k] - times[k + 1]
            x_in = torch.cat([x, x]) if guided else x
            u = self.dit(x_in, t.expand(x_in.shape[0]).to(self.device), cond_in, mask_in)
            if guided:
                u_uncond, u_cond = u.chunk(2)
                u = u_uncond + guidance * (u_cond - u_uncond)
            x = x + dt * u
        x = x.cpu()
        return [x[i, :n].clone() for i, n in enumerate(num_parts)]

    def decode(self, latent: Tensor) -> list[trimesh.Trimesh]:
        """One object's latent `[P, T, D]` -> its part meshes (genalign.models.part_codec)."""
        from genalign.models.part_codec import decode_object

        return decode_object(latent.detach().cpu().numpy())


def generator_from_ref(model_dir: Path, adapter_dir: Path | None = None):
    """The generator in `model_dir`, by its model card.

    Cards: kind "model" of arch "part-generator" (this module); kind "partcrafter" (`ref`:
    the model reference of a PartCrafter checkpoint); kind "adapter" (a registered or
    trained adapter: its `base_model` is resolved and the adapter put on it; `adapter_dir`
    must then be None); kind "ref" (resolved first). A directory without genalign.json
    that holds a diffusers `model_index.json` of a PartCrafterPipeline (a snapshot of
    wgsxm/PartCrafter) opens as PartCrafter too.
    """
    from genalign.generators.partcrafter import PartCrafterGenerator, is_partcrafter_checkpoint

    model_dir = Path(model_dir)
    if not (model_dir / META_NAME).is_file() and is_partcrafter_checkpoint(model_dir):
        return PartCrafterGenerator.load(model_dir, adapter_dir)
    card = read_meta(model_dir)
    if card.kind in ("ref", "adapter"):
        from genalign.models.refs import base_and_adapter

        base, own_adapter = base_and_adapter(model_dir)
        if own_adapter is not None and adapter_dir is not None:
            raise ArtifactError(f"{model_dir}: an adapter directory; pass its base as the model to add {adapter_dir}")
        return generator_from_ref(base, adapter_dir=own_adapter or adapter_dir)
    if card.kind == "model" and card.arch == KIND:
        return PartGenerator.load(model_dir, adapter_dir)
    if card.kind == "partcrafter":
        from genalign.models.refs import resolve

        return PartCrafterGenerator.load(resolve(card.ref), adapter_dir)
    raise ArtifactError(
        f"{model_dir / META_NAME}: kind {card.kind!r} arch {card.arch!r} is not a part generator; expected "
        f"a 'model' of arch {KIND!r}, a 'partcrafter' or an 'adapter' over one"
    )


def save_merged(adapter: Path, out: Path, *, base_model: str) -> None:
    """Fold the adapter directory `adapter` (kind "adapter" over a part generator) into its
    base and write the result as a generator directory into `out`: the merged DiT, the
    base's image encoder, and a card (method "merge") whose `base_model` is `base_model`,
    the reference the adapter was reached by."""
    import shutil

    from genalign.artifacts import write_model_card
    from genalign.models.part_generator import COMPONENTS
    from genalign.models.refs import base_and_adapter

    base, adapter_dir = base_and_adapter(adapter)
    if adapter_dir is None:
        raise ArtifactError(f"{adapter}: not an adapter directory")
    gen = generator_from_ref(base, adapter_dir=adapter_dir)
    if not isinstance(gen, PartGenerator):
        raise ArtifactError(f"{adapter}: only adapters over a {KIND!r} model can be merged here")
    out = Path(out)
    gen.dit.merge_and_unload().save_pretrained(out / COMPONENTS["dit"])
    card = read_meta(base)
    shutil.copytree(base / {"vision": "vision", **card.components}["vision"], out / COMPONENTS["vision"])
    adapter_card = read_meta(adapter_dir)
    write_model_card(out, ModelCard(
        kind=MODEL, arch=KIND, method="merge", base_model=base_model, components=dict(COMPONENTS),
        extra={"adapter_base_model": adapter_card.base_model, "adapter_method": adapter_card.method},
    ))


def load_generator(model: Path, adapter_dir: Path | None = None):
    """The part generator of a model artifact (a card that is a reference is resolved
    first), with `adapter_dir` on it if given."""
    from genalign.models.refs import model_dir

    return generator_from_ref(model_dir(model), adapter_dir=adapter_dir)


def sample_seed(base: int, cond_id: str, k: int) -> int:
    digest = hashlib.sha256(f"{base}:{cond_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def generate(gen, conditions: list[Condition], cond_dir: Path, *, k: int, seed: int, steps: int,
             guidance: float, batch_size: int, adapter_tag: str = ""):
    """Sample `k` latents per condition.

    Returns ([(condition, k, seed, latent [P, T, D])], image features [C, N, Cdim]).
    """
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    images = [np.asarray(Image.open(cond_dir / c.image).convert("RGB")) for c in conditions]
    features = gen.encode_images(images)  # [C, N, Cdim]
    jobs = [(i, j, sample_seed(seed, c.id, j)) for i, c in enumerate(conditions) for j in range(k)]
    out = []
    for start in tqdm(range(0, len(jobs), batch_size), desc=f"sampling{adapter_tag}", unit="batch", disable=None):
        batch = jobs[start : start + batch_size]
        latents = gen.sample(
            features[[i for i, _, _ in batch]],
            [int(conditions[i].meta["num_parts"]) for i, _, _ in batch],
            [s for _, _, s in batch],
            steps=steps, guidance=guidance,
        )
        out.extend((conditions[i], j, s, lat) for (i, j, s), lat in zip(batch, latents))
    return out, features
