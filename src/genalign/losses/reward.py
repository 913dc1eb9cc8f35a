"""Losses of the multi-head reward model, as pure tensor functions.

    focal_loss           per-head binary focal loss on ratings, NaN = unrated (Lin et al. 2017)
    bradley_terry_loss   pairwise preference loss on scalar scores (Bradley & Terry 1952)
    mixup                convex combinations of images and their ratings (Zhang et al. 2018)

    out = focal_loss(logits, ratings, gamma=2.0, alpha=0.25)          # logits, ratings [B, K]
    out.loss.backward()
    bt = bradley_terry_loss(score_a, score_b, preferred)              # [P] each; ties excluded
    mixed = mixup(images, ratings, alpha=0.2, generator=g)

Every loss returns a 0-dim tensor with a gradient path to its score inputs, also when a mask
or the ties leave nothing to average (the value is then 0).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class FocalLossOutput(NamedTuple):
    loss: Tensor  # 0-dim: the mean over rated entries
    rated: Tensor  # 0-dim int64: how many (sample, head) entries were rated


class BradleyTerryOutput(NamedTuple):
    loss: Tensor  # 0-dim: the mean over non-tie pairs
    margin: Tensor  # 0-dim: mean s_preferred - s_other over non-tie pairs (0 if none)
    accuracy: Tensor  # 0-dim: share of non-tie pairs with s_preferred > s_other (0 if none)
    pairs: Tensor  # 0-dim int64: non-tie pairs used
    ties: Tensor  # 0-dim int64: tie pairs excluded


class MixupOutput(NamedTuple):
    images: Tensor  # [B, C, H, W] lam * x + (1 - lam) * x[index]
    targets: Tensor  # [B, K] the same mix of the ratings; NaN where either source is unrated
    lam: Tensor  # 0-dim: the mixing weight of the first source, in [0.5, 1]
    index: Tensor  # [B] int64: the second source of each row


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    mask: Tensor | None = None,
) -> FocalLossOutput:
    """Binary focal loss of Lin et al. 2017, "Focal Loss for Dense Object Detection"
    (arXiv:1708.02002), eq. 5, per (sample, head) entry, averaged over the rated entries:

        FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t),   p_t = p if y = 1 else 1 - p,
                                                       alpha_t = alpha if y = 1 else 1 - alpha

    with p = sigmoid(logit). Soft targets y in [0, 1] (MixUp, averaged ratings) take the two
    cases in proportion y : 1 - y, the usual extension:

        FL = y alpha (1 - p)^gamma (-log p) + (1 - y) (1 - alpha) p^gamma (-log(1 - p))

    with -log p = softplus(-logit) and -log(1 - p) = softplus(logit) for stability. alpha=None
    weighs both classes 1; gamma = 0 with alpha = None is binary cross-entropy with logits.

    logits, targets: [B, K]; a NaN target is an unrated head and is left out, as is every
    entry where `mask` ([B, K] bool, True = rated) is False. Lin et al. normalise by the
    number of anchors assigned to an object; here the sum is divided by the number of rated
    entries (0 rated: the loss is 0, still connected to `logits`).
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            f"focal_loss: logits and targets must be one [B, K] shape, got {list(logits.shape)} and {list(targets.shape)}"
        )
    if gamma < 0 or (alpha is not None and not 0.0 <= alpha <= 1.0):
        raise ValueError(f"focal_loss: expected gamma >= 0 and alpha in [0, 1] or None, got {gamma}, {alpha}")
    rated = torch.isfinite(targets)
    if mask is not None:
        if mask.shape != targets.shape or mask.dtype != torch.bool:
            raise ValueError(f"focal_loss: mask must be bool {list(targets.shape)}, got {mask.dtype} {list(mask.shape)}")
        rated = rated & mask
    y = torch.where(rated, targets, torch.zeros_like(targets))  # finite everywhere: 0 * NaN would be NaN
    if bool(((y < 0) | (y > 1)).any()):
        raise ValueError("focal_loss: rated targets must lie in [0, 1]")
    p = torch.sigmoid(logits)
    a_pos, a_neg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
    positive = a_pos * (1 - p).pow(gamma) * F.softplus(-logits)  # -alpha (1 - p)^gamma log p
    negative = a_neg * p.pow(gamma) * F.softplus(logits)  # -(1 - alpha) p^gamma log(1 - p)
    per_entry = y * positive + (1 - y) * negative  # [B, K]
    count = rated.sum()
    loss = (per_entry * rated).sum() / count.clamp_min(1)
    return FocalLossOutput(loss=loss, rated=count)


def bradley_terry_loss(score_a: Tensor, score_b: Tensor, preferred: Tensor) -> BradleyTerryOutput:
    """Pairwise loss of the Bradley-Terry model (Bradley & Terry 1952, "Rank Analysis of
    Incomplete Block Designs: I. The Method of Paired Comparisons", Biometrika 39):
    P(w beats l) = sigmoid(s_w - s_l), so a preference's negative log-likelihood is

        loss = -log sigmoid(s_w - s_l) = softplus(-(s_w - s_l))

    the reward-model loss of InstructGPT (Ouyang et al. 2022, eq. 1) and ImageReward (Xu et
    al. 2023, arXiv:2304.05977, eq. 1), averaged over the pairs.

    score_a, score_b: [P] scalar scores; preferred [P]: P(a preferred), 1 (a wins), 0 (b wins)
    or 0.5 (a tie). Ties are EXCLUDED, the InstructGPT / ImageReward convention (ImageReward
    drops tied rankings from training), rather than given 0.5 (-log sigmoid(d)) + 0.5
    (-log sigmoid(-d)), which would pull every tied pair's scores together. They are counted in
    `ties`; with no non-tie pair the loss is 0, still connected to the scores.
    """
    if score_a.dim() != 1 or score_a.shape != score_b.shape or preferred.shape != score_a.shape:
        raise ValueError(
            f"bradley_terry_loss: score_a, score_b and preferred must be one [P] shape, got "
            f"{list(score_a.shape)}, {list(score_b.shape)}, {list(preferred.shape)}"
        )
    valid = (preferred == 0) | (preferred == 0.5) | (preferred == 1)
    if not bool(valid.all()):
        bad = preferred[~valid][:5].tolist()
        raise ValueError(f"bradley_terry_loss: preferred must be 0, 0.5 or 1 (P(a preferred)), got {bad}")
    decided = preferred != 0.5
    sign = 2 * preferred.to(score_a.dtype) - 1  # +1: a wins, -1: b wins, 0: tie
    margin = sign * (score_a - score_b)  # [P] s_w - s_l
    count = decided.sum()
    loss = (F.softplus(-margin) * decided).sum() / count.clamp_min(1)
    mean_margin = (margin.detach() * decided).sum() / count.clamp_min(1)
    accuracy = ((margin.detach() > 0) & decided).sum() / count.clamp_min(1)
    return BradleyTerryOutput(loss=loss, margin=mean_margin, accuracy=accuracy.to(score_a.dtype),
                              pairs=count, ties=(~decided).sum())


def mixup(images: Tensor, targets: Tensor, alpha: float, generator: torch.Generator) -> MixupOutput:
    """MixUp of Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"
    (arXiv:1710.09412), eq. 1, with one lam per batch and the batch's own shuffle as the
    second source (the paper's implementation):

        x~ = lam x_i + (1 - lam) x_j,   y~ = lam y_i + (1 - lam) y_j,   lam ~ Beta(alpha, alpha)

    lam is folded to max(lam, 1 - lam) (fastai's MixUp does the same), so the first source
    dominates each mix and its prompt still describes it. A head unrated (NaN) in either
    source is unrated in the mix, also where a weight is 0.

    images [B, C, H, W], targets [B, K]; every draw (lam, the shuffle) comes from `generator`,
    so a mix is a pure function of its state.
    """
    if images.shape[0] != targets.shape[0] or targets.dim() != 2:
        raise ValueError(
            f"mixup: images [B, ...] and targets [B, K] with one B, got {list(images.shape)} and {list(targets.shape)}"
        )
    if not alpha > 0:
        raise ValueError(f"mixup: alpha must be > 0, got {alpha}")
    b = images.shape[0]
    index = torch.randperm(b, generator=generator).to(images.device)
    # torch's Beta sampler reads the global stream: seed it from `generator` on a private fork
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lam = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha))).sample()
    lam = torch.maximum(lam, 1 - lam).to(images.dtype)
    mixed = lam * images + (1 - lam) * images[index]
    unrated = torch.isnan(targets) | torch.isnan(targets[index])
    mixed_targets = torch.where(unrated, torch.full_like(targets, float("nan")),
                                lam * targets + (1 - lam) * targets[index])
    return MixupOutput(images=mixed, targets=mixed_targets, lam=lam, index=index)
