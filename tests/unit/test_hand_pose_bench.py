"""The pure helpers of benchmarks/hand_pose_throughput.py and benchmarks/hand_pose_variants.py,
on small inputs worked out by hand, and the configs their variants train."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

from genalign.config.base import ConfigError
from genalign.config.hand_pose import TrainHandPoseConfig
from genalign.config.presets import load_preset

ROOT = Path(__file__).resolve().parents[2]


def bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def throughput():
    return bench("hand_pose_throughput")


def variants():
    return bench("hand_pose_variants")


@pytest.fixture(scope="module")
def tiny_train() -> dict:
    return load_preset("hand-pose", "tiny")["train"]


# --- hand_pose_throughput ----------------------------------------------------------------


def test_rotation_runs_each_variant_first_in_turn():
    rotation = throughput().rotation
    names = ["plain", "no_refine", "sigma_reparam", "stochastic_head"]
    assert [rotation(names, r)[0] for r in range(5)] == [*names, "plain"]
    assert rotation(names, 1) == ["no_refine", "sigma_reparam", "stochastic_head", "plain"]
    assert names[0] == "plain"  # not rotated in place


def test_throughput_variants_change_only_their_model_flags(tiny_train):
    bench_ = throughput()
    cfgs = {name: bench_.variant_config(tiny_train, name) for name in bench_.VARIANTS}
    assert all(isinstance(c, TrainHandPoseConfig) for c in cfgs.values())
    plain = cfgs["plain"]
    assert plain == TrainHandPoseConfig.from_dict(tiny_train)  # the preset as it is
    assert (plain.model.refine_steps, plain.model.sigma_reparam, plain.model.stochastic_head) == (2, False, False)
    assert cfgs["no_refine"].model == plain.model.replace(refine_steps=0)
    assert cfgs["sigma_reparam"].model == plain.model.replace(sigma_reparam=True)
    assert cfgs["stochastic_head"].model == plain.model.replace(stochastic_head=True)
    assert all(c.replace(model=plain.model) == plain for c in cfgs.values())  # nothing else changed
    with pytest.raises(ValueError, match="unknown variant 'fast'"):
        bench_.variant_config(tiny_train, "fast")


def test_the_timed_phase_is_the_joint_phase_with_every_group(tiny_train):
    bench_ = throughput()
    cfg = bench_.variant_config(tiny_train, "plain")
    index = bench_.phase_index(cfg, bench_.PHASE)
    assert cfg.phases[index].name == "joint" and index == 1
    assert sorted(cfg.phases[index].trainable) == ["backbone", "hand", "object", "refine"]
    with pytest.raises(ValueError, match="no phase 'warmup'"):
        bench_.phase_index(cfg, "warmup")


def test_table_rows_give_images_per_second_and_time_against_no_refine():
    # 32 images in 0.1 s = 320 images/s; in 0.08 s = 400; 0.1 / 0.08 = 1.25.
    rows = throughput().table_rows({"plain": 0.1, "no_refine": 0.08}, batch_size=32)
    assert [r["variant"] for r in rows] == ["plain", "no_refine"]
    plain, no_refine = rows
    assert plain["ms_per_step"] == pytest.approx(100.0) and plain["images_per_s"] == pytest.approx(320.0)
    assert no_refine["images_per_s"] == pytest.approx(400.0) and no_refine["time_x"] == pytest.approx(1.0)
    assert plain["time_x"] == pytest.approx(1.25)


def test_throughput_ratios():
    # plain 100 ms, no_refine 80 ms, sigma_reparam 130 ms, stochastic_head 110 ms, batch 32:
    # refine/no_refine 1.25 in time and 0.8 in images/s; 1.3 and 1.1 against plain.
    bench_ = throughput()
    rows = bench_.table_rows({"plain": 0.1, "no_refine": 0.08, "sigma_reparam": 0.13, "stochastic_head": 0.11}, 32)
    assert bench_.ratios(rows) == pytest.approx({
        "images_per_s_refine_vs_no_refine": 0.8,
        "step_time_refine_vs_no_refine": 1.25,
        "step_time_sigma_reparam_vs_plain": 1.3,
        "step_time_stochastic_head_vs_plain": 1.1,
    })


# --- hand_pose_variants ------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "stochastic", "sigma"), [
    ("plain", False, False), ("stochastic_head", True, False), ("sigma_reparam", False, True), ("both", True, True),
])
def test_variant_config_sets_the_flags_and_both_seeds(tiny_train, variant, stochastic, sigma):
    before = copy.deepcopy(tiny_train)
    cfg = variants().variant_config(tiny_train, variant, seed=3)
    assert isinstance(cfg, TrainHandPoseConfig)
    assert (cfg.model.stochastic_head, cfg.model.sigma_reparam) == (stochastic, sigma)
    assert cfg.model.seed == 3 and cfg.seed == 3
    preset = TrainHandPoseConfig.from_dict(tiny_train)
    assert cfg.phases == preset.phases and cfg.batch_size == preset.batch_size
    assert cfg.model.replace(stochastic_head=False, sigma_reparam=False, seed=0) == preset.model
    assert tiny_train == before  # the preset's mapping is not changed in place


def test_variant_config_refuses_an_unknown_variant(tiny_train):
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        variants().variant_config(tiny_train, "big", seed=0)


def test_smoke_phases_keep_the_fewest_epochs_each_phase_allows():
    phases = [{"name": "components", "epochs": 6, "lr": 1e-3, "trainable": ["hand", "object"],
               "one_group_at_a_time": True},
              {"name": "joint", "epochs": 10, "lr": 5e-4}]
    assert [p["epochs"] for p in variants().smoke_phases(phases)] == [2, 1]  # one epoch per group, then 1
    assert phases[0]["epochs"] == 6  # not changed in place
    with pytest.raises(ValueError, match="without an explicit trainable"):
        variants().smoke_phases([{"name": "a", "epochs": 4, "lr": 1e-3, "one_group_at_a_time": True}])


def test_smoke_config_of_the_e2e_preset_is_valid():
    train = load_preset("hand-pose", "e2e")["train"]
    cfg = variants().variant_config(train, "both", seed=1, smoke=True)
    assert [(p.name, p.epochs) for p in cfg.phases] == [("components", 2), ("joint", 1), ("physics", 1)]
    assert cfg.model.stochastic_head and cfg.model.sigma_reparam and cfg.seed == 1


def test_check_variants_needs_plain_and_known_names():
    check = variants().check_variants
    assert check(["both", "plain"]) == ["both", "plain"]
    with pytest.raises(ValueError, match="must include 'plain'"):
        check(["both"])
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['sigma'\]"):
        check(["plain", "sigma"])
    with pytest.raises(ValueError, match="named twice"):
        check(["plain", "plain"])


def row(variant: str, seed: int, mpjpe: float, train_s: float = 10.0) -> dict:
    return {"variant": variant, "seed": seed, "mpjpe": mpjpe, "pa_mpjpe": mpjpe / 2, "pck_5px": 0.5,
            "auc_0_50mm": 0.25, "train_s": train_s}


def test_seed_means_average_each_variant_over_its_seeds():
    # plain: (20 + 22) / 2 = 21, sample std sqrt(((20-21)^2 + (22-21)^2) / 1) = sqrt(2); both: one seed.
    means = variants().seed_means([row("plain", 0, 20.0, 8.0), row("both", 0, 18.0), row("plain", 1, 22.0, 12.0)])
    assert list(means) == ["plain", "both"]
    plain = means["plain"]
    assert plain["seeds"] == [0, 1] and plain["mpjpe"] == pytest.approx(21.0) and plain["pa_mpjpe"] == pytest.approx(10.5)
    assert plain["train_s"] == pytest.approx(10.0)
    assert plain["mpjpe_std"] == pytest.approx(2 ** 0.5) and plain["mpjpe_spread"] == pytest.approx(2.0)
    assert means["both"]["mpjpe_std"] is None and means["both"]["mpjpe_spread"] == 0.0


def test_variant_ratios_are_seed_means_over_plain():
    # plain mean 21, stochastic_head 18.9 -> 0.9, sigma_reparam 23.1 -> 1.1.
    bench_ = variants()
    means = bench_.seed_means([row("plain", 0, 20.0), row("plain", 1, 22.0), row("stochastic_head", 0, 18.9),
                               row("sigma_reparam", 0, 23.1)])
    assert bench_.ratios(means) == pytest.approx({"mpjpe_stochastic_head_vs_plain": 0.9,
                                                  "mpjpe_sigma_reparam_vs_plain": 1.1})


def test_an_invalid_variant_model_is_refused_early(tiny_train):
    # the variant's changes go through TrainHandPoseConfig's checks, not around them
    broken = {**tiny_train, "model": {**tiny_train["model"], "width": 63}}
    with pytest.raises(ConfigError, match="width"):
        variants().variant_config(broken, "plain", seed=0)
