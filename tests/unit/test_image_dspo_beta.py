"""genalign's beta against the two SDXL scripts the image-dspo defaults come from.

Both scripts put 0.5 before their beta_dpo:

  diffusers examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py
      model_diff = model_losses_w - model_losses_l
      ref_diff = ref_losses_w - ref_losses_l
      scale_term = -0.5 * args.beta_dpo                      # --beta_dpo default 5000
      inside_term = scale_term * (model_diff - ref_diff)
      loss = -1 * F.logsigmoid(inside_term).mean()

  DSPO (github.com/huaishengzhu/DSPO) train.py, the --sdxl branch, beta_dpo 5000 in
  launchers/sdxl.sh; the same inside_term, then with pred2 = (model_pred - ref_pred) on
  the chosen half:
      if pred2.pow(2).mean(dim=[1,2,3]).mean() >= 0.1:
          loss = ((1 - F.sigmoid(inside_term)[:, None, None, None]) * pred2).pow(2).mean(...).mean()
      else:
          loss = (1 - F.sigmoid(inside_term)[:, None, None, None]).pow(2).mean(...).mean()

They are transcribed below and compared, on fixed errors, with genalign's losses at
beta = 0.5 * 5000 = 2500 (the config default).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genalign.config.base import ConfigError
from genalign.config.image_dspo import (
    DIFFUSERS_SDXL_BETA_DPO,
    DSPO_SDXL_BETA_DPO,
    IMAGE_DSPO_LOSSES,
    TrainImageDSPOConfig,
    beta_from_half_scaled,
)
from genalign.losses import PREFERENCE_LOSSES, diffusion_dpo_loss, dspo_sdxl_loss

# Two pairs, float64 so that differences like 0.1004 - 0.1 are exact to ~1e-17.
#   pair A: model_diff = 0.1000 - 0.1004 = -0.0004, ref_diff = 0 -> gap -0.0004
#   pair B: model_diff = 0.2004 - 0.2000 = +0.0004, ref_diff = 0 -> gap +0.0004
PW = torch.tensor([0.1000, 0.2004], dtype=torch.float64)
PL = torch.tensor([0.1004, 0.2000], dtype=torch.float64)
RW = torch.tensor([0.1002, 0.2002], dtype=torch.float64)
RL = torch.tensor([0.1002, 0.2002], dtype=torch.float64)


def diffusers_sdxl_loss(pw, pl, rw, rl, beta_dpo):
    """train_diffusion_dpo_sdxl.py's final loss, line for line."""
    model_diff = pw - pl
    ref_diff = rw - rl
    scale_term = -0.5 * beta_dpo
    inside_term = scale_term * (model_diff - ref_diff)
    return -1 * F.logsigmoid(inside_term).mean(), inside_term


def dspo_official_sdxl_loss(pw, pl, rw, rl, pred2, beta_dpo):
    """DSPO train.py's --sdxl loss, line for line; pred2 [B, 4, h, w]."""
    model_diff = pw - pl
    ref_diff = rw - rl
    inside_term = -0.5 * beta_dpo * (model_diff - ref_diff)
    if pred2.pow(2).mean(dim=[1, 2, 3]).mean() >= 0.1:
        return ((1 - F.sigmoid(inside_term)[:, None, None, None]) * pred2).pow(2).mean(dim=[1, 2, 3]).mean()
    return (1 - F.sigmoid(inside_term)[:, None, None, None]).pow(2).mean(dim=[1, 2, 3]).mean()


def test_default_beta_is_the_diffusers_sdxl_beta_translated():
    assert DIFFUSERS_SDXL_BETA_DPO == DSPO_SDXL_BETA_DPO == 5000.0
    assert beta_from_half_scaled(5000.0) == 2500.0
    assert TrainImageDSPOConfig().beta == 2500.0


def test_diffusion_dpo_matches_the_diffusers_sdxl_script():
    """inside = -0.5 * 5000 * gap = -2500 * (-0.0004, +0.0004) = (1, -1), so

        loss = (log(1 + e^-1) + log(1 + e)) / 2 = log(1 + e^-1) + 1/2 = 0.8132617

    (log(1 + e) = 1 + log(1 + e^-1)). genalign at beta 2500 has the logit
    -2500 * ((pw - rw) - (pl - rl)) = -2500 * (-0.0004, 0.0004) = (1, -1): the same.
    Its implicit rewards are -2500 * (pw - rw) = (0.5, -0.5) and -2500 * (pl - rl) =
    (-0.5, 0.5): accuracy 1/2 (the script's implicit_acc: inside > 0 on one pair of
    two), margin (1 - 1) / 2 = 0. The untranslated beta 5000 doubles the logit:
    (log(1 + e^-2) + log(1 + e^2)) / 2 = 1.1269280.
    """
    expected = math.log(1 + math.exp(-1)) + 0.5
    script, inside = diffusers_sdxl_loss(PW, PL, RW, RL, beta_dpo=5000.0)
    assert float(script) == pytest.approx(expected, abs=1e-9)
    torch.testing.assert_close(inside, torch.tensor([1.0, -1.0], dtype=torch.float64))

    ours = diffusion_dpo_loss(PW, PL, RW, RL, beta=beta_from_half_scaled(5000.0))
    assert float(ours.loss) == pytest.approx(expected, abs=1e-9)
    torch.testing.assert_close(ours.chosen_reward, torch.tensor([0.5, -0.5], dtype=torch.float64))
    torch.testing.assert_close(ours.rejected_reward, torch.tensor([-0.5, 0.5], dtype=torch.float64))
    assert float(ours.accuracy) == 0.5 and float(ours.reward_margin) == pytest.approx(0.0, abs=1e-9)

    untranslated = diffusion_dpo_loss(PW, PL, RW, RL, beta=5000.0)
    assert float(untranslated.loss) == pytest.approx(
        (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2, abs=1e-9
    )


@pytest.mark.parametrize(
    "values, expected",
    [
        # d = (0.2^2, 0.5^2) = (0.04, 0.25), mean 0.145 >= 0.1: loss = mean(s^2 * d)
        ((0.2, 0.5), (0.0723294881 * 0.04 + 0.5344466454 * 0.25) / 2),  # 0.0682524
        # d = (0.01, 0.04), mean 0.025 < 0.1: loss = mean(s^2)
        ((0.1, 0.2), (0.0723294881 + 0.5344466454) / 2),  # 0.3033881
    ],
)
def test_dspo_sdxl_matches_the_dspo_launcher(values, expected):
    """With beta_dpo 5000 (launchers/sdxl.sh) inside = (1, -1) as above, so
    s = 1 - sigmoid(inside) = (sigmoid(-1), sigmoid(1)) = (0.2689414, 0.7310586) and
    s^2 = (0.0723295, 0.5344466). pred2 is constant per pair, so its mean square is d,
    and the official per-element mean of (s * pred2)^2 is s^2 * d. genalign's dspo_sdxl
    at beta 2500 with chosen_policy_ref_mse = d gives the same number."""
    pred2 = torch.stack([torch.full((4, 2, 2), v, dtype=torch.float64) for v in values])
    d = pred2.pow(2).mean(dim=[1, 2, 3])
    official = dspo_official_sdxl_loss(PW, PL, RW, RL, pred2, beta_dpo=DSPO_SDXL_BETA_DPO)
    assert float(official) == pytest.approx(expected, abs=1e-9)
    ours = dspo_sdxl_loss(
        PW, PL, RW, RL, beta=beta_from_half_scaled(DSPO_SDXL_BETA_DPO), chosen_policy_ref_mse=d
    )
    assert float(ours.loss) == pytest.approx(expected, abs=1e-9)


def test_loss_names_are_in_the_loss_table():
    assert set(IMAGE_DSPO_LOSSES) <= set(PREFERENCE_LOSSES)
    with pytest.raises(ConfigError, match=r"valid names: \['dspo_sdxl', 'dspo_sd15', 'diffusion_dpo'\]"):
        TrainImageDSPOConfig.from_dict({"loss": "dro"})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"beta": 0.0}, r"beta: expected a finite number > 0"),
        ({"dropout": 1.0}, r"dropout: expected a finite number in \[0, 1\)"),
        ({"steps": 0}, r"steps: expected an integer >= 1"),
        ({"score_weight": 0.5}, r"score_weight: set to 0.5 but only dspo_sd15 uses it"),
        ({"target_modules": ["to_q", "to_q"]}, r"target_modules: duplicates"),
        ({"mixed_precision": "fp16"}, r"is not one of \['no', 'bf16'\]"),
        ({"max_grad_norm": -1.0}, r"max_grad_norm: expected a finite number > 0 or null"),
    ],
)
def test_bad_values_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        TrainImageDSPOConfig.from_dict(data)


def test_round_trip_and_sd15_score_weight():
    cfg = TrainImageDSPOConfig.from_dict({"loss": "dspo_sd15", "score_weight": 0.001})
    assert TrainImageDSPOConfig.from_dict(cfg.to_dict()) == cfg
