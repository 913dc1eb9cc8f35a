"""The tiny voxel prior and the SDS optimiser, on a world small enough for CPU seconds:
the prior trains and reloads through the SDXL loader with its measured scaling factor,
a run resumed from a checkpoint ends where an uninterrupted run ends, gradients reach
voxels that are empty at the start, and the exported map reloads and renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genalign.config.voxel_sds import OptimiseVoxelsConfig, TinyPriorConfig
from genalign.data.voxel_map import initial_map, read_map, write_map
from genalign.models.sdxl import load_sdxl, vae_scaling_factor
from genalign.render.cameras import orbit_cameras
from genalign.trainers.voxel_prior import read_prior_info, train_tiny_prior
from genalign.trainers.voxel_sds import final_renders, load_prior, optimise_world

DIMS = (8, 8, 8)
TINY = TinyPriorConfig(structures_per_class=1, views_per_structure=2, vae_channels=[8, 16], unet_channels=[16, 32],
                       vae_steps=3, vae_batch=2, unet_steps=3, unet_batch=2)


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prior") / "prior"
    cams = orbit_cameras(8, DIMS, world_scale=2.0, size=16, seed=0, zoom=2.0)
    train_tiny_prior(TINY, dims=DIMS, world_scale=2.0, cameras=cams, out=out)
    return out


def _cfg(**over) -> OptimiseVoxelsConfig:
    base = {"steps": 6, "resolutions": [4, 8], "views_per_step": 1, "noise_samples": 2, "checkpoint_every": 2,
            "log_every": 1,
            "image_every": 100, "guidance_scale": 10.0}
    return OptimiseVoxelsConfig.from_dict({**base, **over})


def test_the_tiny_prior_reloads_with_its_measured_scaling_factor(prior_dir):
    info = read_prior_info(prior_dir)
    pipe = load_sdxl(prior_dir)
    assert info["model"] == "tiny" and set(info["prompts"]) == {"tower", "pyramid", "wall", "hill"}
    assert vae_scaling_factor(pipe.vae) == pytest.approx(info["metrics"]["scaling_factor"])
    assert vae_scaling_factor(pipe.vae) != 0.13025  # measured on its own latents, not SDXL's
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert 0.0 <= info["metrics"]["heldout_class_accuracy"] <= 1.0


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(prior_dir, tmp_path):
    prior = load_prior(prior_dir, device="cpu")
    start = initial_map("ground", DIMS)
    cams = orbit_cameras(8, DIMS, world_scale=2.0, size=16, seed=0, zoom=2.0)
    cfg = _cfg()
    whole = optimise_world(cfg, prior=prior, start=start, cameras=cams, prompt="a stone tower", work=tmp_path / "a")
    # stopped after 3 steps: the checkpoint of step 2 (the coarse level) is what a rerun finds
    optimise_world(cfg, prior=prior, start=start, cameras=cams, prompt="a stone tower", work=tmp_path / "b",
                   stop_after=3)
    assert (tmp_path / "b" / "checkpoints").is_dir()
    resumed = optimise_world(cfg, prior=prior, start=start, cameras=cams, prompt="a stone tower",
                             work=tmp_path / "b")
    assert torch.equal(whole.occupancy, resumed.occupancy) and torch.equal(whole.materials, resumed.materials)
    assert whole.map == resumed.map
    assert [r["loss/sds"] for r in whole.trajectory] == [r["loss/sds"] for r in resumed.trajectory]
    assert whole.occupancy.shape == DIMS and len(whole.trajectory) == cfg.steps


def test_a_checkpoint_of_another_prompt_is_refused(prior_dir, tmp_path):
    prior = load_prior(prior_dir, device="cpu")
    start = initial_map("ground", DIMS)
    cams = orbit_cameras(4, DIMS, world_scale=2.0, size=16, seed=0, zoom=2.0)
    optimise_world(_cfg(), prior=prior, start=start, cameras=cams, prompt="a stone tower", work=tmp_path,
                   stop_after=2)
    with pytest.raises(ValueError, match="another prompt or config"):
        optimise_world(_cfg(), prior=prior, start=start, cameras=cams, prompt="a sand pyramid", work=tmp_path)


def test_sds_moves_voxels_that_were_empty_at_the_start(prior_dir, tmp_path):
    prior = load_prior(prior_dir, device="cpu")
    start = initial_map("ground", DIMS)
    cams = orbit_cameras(4, DIMS, world_scale=2.0, size=16, seed=0, zoom=2.0)
    cfg = _cfg(steps=2, resolutions=[8], lambda_sparsity=0.0, lambda_entropy=0.0, lambda_smoothness=0.0,
               lambda_connectivity=0.0)
    res = optimise_world(cfg, prior=prior, start=start, cameras=cams, prompt="a stone tower", work=tmp_path)
    empty = torch.from_numpy(start.blocks == 0)
    moved = (res.occupancy - cfg.empty_logit).abs() > 1e-6
    assert moved[empty].float().mean() > 0.5  # most empty voxels got a gradient and moved
    assert (res.materials[empty].abs() > 1e-6).any()


def test_the_exported_map_reloads_and_renders(prior_dir, tmp_path):
    prior = load_prior(prior_dir, device="cpu")
    start = initial_map("ground", DIMS)
    cams = orbit_cameras(4, DIMS, world_scale=2.0, size=16, seed=0, zoom=2.0)
    res = optimise_world(_cfg(steps=2, resolutions=[8]), prior=prior, start=start, cameras=cams,
                         prompt="a stone tower", work=tmp_path / "w")
    write_map(res.map, tmp_path / "map.json")
    again = read_map(tmp_path / "map.json")
    assert again == res.map and again.metadata["prompt"] == "a stone tower"
    rgb = final_renders(again, cams)
    assert rgb.shape == (4, 3, 16, 16) and torch.isfinite(rgb).all()
    json.loads((tmp_path / "map.json").read_text())  # plain JSON


def test_a_prior_without_a_second_text_encoder_is_refused(prior_dir, tmp_path):
    import shutil

    broken = tmp_path / "prior"
    shutil.copytree(prior_dir, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(FileNotFoundError, match="text_encoder_2"):
        load_prior(broken, device="cpu")
