"""The tiny part generator's pretrained base: a tiny DINOv2 and a PartDiT pretrained with
flow matching (`genalign.trainers.flow_matching`) on procedural objects, and its loss on
held-out ones.

prepare-parts builds it when `prepare.base_model` is `pretrain` (cached by config and torch
thread count); the release command builds the same directory from a preset's `prepare`
section (`pretrain`, `image_size`, `seed`), as the committed
`tiny://part-generator-pretrained` (`genalign/models/released/part-generator-pretrained/`)
was built:

    python -m genalign.trainers.part_base --preset configs/part-dpo/tiny.yaml \\
        --out src/genalign/models/released/part-generator-pretrained --threads 1

Three disjoint sets of objects (`genalign.data.parts.make_objects`, one seed each): the
conditions (`prepare.seed`), the pretraining objects (`prepare.seed + PRETRAIN_SEED_OFFSET`)
and the held-out objects of `pretrain/heldout_loss` (`heldout_seed`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genalign.artifacts import ModelCard, write_model_card
from genalign.config.base import ConfigError, load_yaml
from genalign.config.part_dit import PartDiTConfig
from genalign.config.part_dpo import PreparePartsConfig
from genalign.data.parts import ObjectSpec, make_objects
from genalign.models.part_codec import MAX_PARTS, PART_TOKENS, TOKEN_DIM, encode_object
from genalign.models.part_dit import PartDiT
from genalign.models.part_generator import COMPONENTS, KIND
from genalign.models.vision import VisionEncoder, build_tiny_vision
from genalign.render.parts_image import render_object
from genalign.storage import atomic_dir
from genalign.tracking import NullTracker, Tracker
from genalign.trainers.flow_matching import heldout_loss, pretrain
from genalign.training.numerics import numerics_key
from genalign.training.seeds import derive_seed

PRETRAIN_SEED_OFFSET = 7919  # keeps pretraining objects disjoint from the conditions
HELDOUT_METRIC = "pretrain/heldout_loss"
COMMAND = "python -m genalign.trainers.part_base"


def heldout_seed(cfg: PreparePartsConfig) -> int:
    """The seed of the held-out objects; it also seeds their (t, noise) draws."""
    return derive_seed(cfg.seed, "pretrain-heldout")


def encode_objects(
    objects: Sequence[ObjectSpec], vision: VisionEncoder, image_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Part latents [N, MAX_PARTS, T, D], the real-part mask [N, MAX_PARTS] (real parts first)
    and the conditioning tokens of each object's rendered image [N, Nc, C]."""
    from tqdm.auto import tqdm

    latents = torch.zeros(len(objects), MAX_PARTS, PART_TOKENS, TOKEN_DIM)
    mask = torch.zeros(len(objects), MAX_PARTS, dtype=torch.bool)
    images = []
    for i, obj in enumerate(tqdm(objects, desc="render", disable=None)):
        enc = torch.from_numpy(np.asarray(encode_object(list(obj.parts))))
        latents[i, : len(obj.parts)] = enc
        mask[i, : len(obj.parts)] = True
        images.append(render_object(list(obj.parts), size=image_size))
    cond = torch.cat([vision.encode(images[i : i + 256]) for i in range(0, len(images), 256)])
    return latents, mask, cond


def base_heldout_loss(cfg: PreparePartsConfig, generator_dir: Path) -> float:
    """`pretrain/heldout_loss` of the generator in `generator_dir` (dit/ + vision/): the
    flow-matching loss on `cfg.pretrain.heldout_objects` held-out objects, at
    `heldout_draws` (t, noise) draws each from `heldout_seed(cfg)`."""
    p = cfg.pretrain
    vision = VisionEncoder.from_pretrained(Path(generator_dir) / "vision")
    objects = make_objects(p.heldout_objects, seed=heldout_seed(cfg))
    latents, mask, cond = encode_objects(objects, vision, cfg.image_size)
    dit = PartDiT.from_pretrained(Path(generator_dir) / "dit")
    return heldout_loss(dit, latents, mask, cond, draws=p.heldout_draws, seed=heldout_seed(cfg),
                        timestep_scheme=p.training.timestep_scheme)


def build_part_base(
    cfg: PreparePartsConfig, out: Path, tracker: Tracker, *, extra: dict | None = None
) -> dict[str, float]:
    """Write the pretrained generator directory `out` (vision/, dit/, genalign.json) for
    `cfg.pretrain`, `cfg.image_size` and `cfg.seed`; return its `pretrain/*` metrics, the
    held-out loss included. The card records them, the config and the torch thread count
    (the weights depend on it: `genalign.training.numerics`), plus `extra`."""
    out = Path(out)
    p = cfg.pretrain
    objects = make_objects(p.objects, seed=cfg.seed + PRETRAIN_SEED_OFFSET)
    build_tiny_vision(out / "vision", seed=p.training.seed, image_size=cfg.image_size)
    vision = VisionEncoder.from_pretrained(out / "vision")
    latents, mask, cond = encode_objects(objects, vision, cfg.image_size)
    model_cfg = PartDiTConfig(
        token_dim=TOKEN_DIM, tokens_per_part=PART_TOKENS, max_parts=MAX_PARTS,
        hidden=p.hidden, depth=p.depth, heads=p.heads, cond_dim=cond.shape[-1],
    )
    metrics = pretrain(p.training, model_cfg, latents, mask, cond, out / "dit", tracker)
    metrics = {f"pretrain/{k}" if "/" not in k else k: float(v) for k, v in metrics.items()}
    metrics[HELDOUT_METRIC] = base_heldout_loss(cfg, out)
    write_model_card(out, ModelCard(
        kind="model", arch=KIND, method="flow_matching", components=dict(COMPONENTS),
        config={"pretrain": p.to_dict(), "image_size": cfg.image_size, "seed": cfg.seed},
        metrics=metrics, extra={**numerics_key(), **(extra or {})},
    ))  # fmt: skip
    return metrics


def release(cfg: PreparePartsConfig, out: Path, *, command: str) -> dict[str, float]:
    """`build_part_base` into `out`, replaced atomically, with a README.md that gives the
    command, the config and the held-out loss; `command` is recorded in the card too."""
    with atomic_dir(Path(out)) as tmp:
        metrics = build_part_base(cfg, tmp, NullTracker(), extra={"command": command})
        (tmp / "README.md").write_text(_readme(cfg, metrics, command))
    return metrics


def _readme(cfg: PreparePartsConfig, metrics: dict[str, float], command: str) -> str:
    config = {"pretrain": cfg.pretrain.to_dict(), "image_size": cfg.image_size, "seed": cfg.seed}
    return f"""# The tiny part generator, pretrained

A tiny DINOv2 (`vision/`) and a part DiT (`dit/`) pretrained with flow matching on
{cfg.pretrain.objects} procedural objects: the base of the part-dpo tiny preset, resolved by
the model reference `tiny://part-generator-pretrained`. Built from the preset's `prepare`
section with `torch.set_num_threads({torch.get_num_threads()})` by

    {command}

(another thread count rounds differently and trains other weights, with about the same
held-out loss: `genalign.training.numerics`).

Config (`genalign.json` records it, with all metrics):

```json
{json.dumps(config, indent=2, sort_keys=True)}
```

Held-out loss (`{HELDOUT_METRIC}`: the flow-matching loss on {cfg.pretrain.heldout_objects}
held-out objects x {cfg.pretrain.heldout_draws} seeded (t, noise) draws): {metrics[HELDOUT_METRIC]:.6f}.
Final training loss (`pretrain/loss`, the mean over the last logging window):
{metrics["pretrain/loss"]:.6f}.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Build a pretrained base from a preset's `prepare` section and print its metrics."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Build the tiny part generator's pretrained base from a preset, as prepare-parts "
        "does with base_model: pretrain.",
    )
    parser.add_argument("--preset", required=True, type=Path,
                        help="a preset YAML whose prepare section (pretrain, image_size, seed) says what to build")
    parser.add_argument("--out", required=True, type=Path, help="the directory to write (replaced atomically)")
    # `genalign run` gives every task one thread (OMP_NUM_THREADS=1 unless set).
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; the weights depend on it (default 1, as in `genalign run`)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        cfg = PreparePartsConfig.from_dict(load_yaml(args.preset).get("prepare"), where=f"{args.preset}: prepare")
    except ConfigError as e:
        parser.error(str(e))
    torch.set_num_threads(args.threads)
    metrics = release(cfg, args.out, command=shlex.join([*COMMAND.split(), *argv]))
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
