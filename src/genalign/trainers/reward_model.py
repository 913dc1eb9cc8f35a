"""Training of the multi-head image reward model (`genalign.models.reward_model.RewardModel`)
on rated images and, optionally, preference pairs; the linear-probe baseline; the held-out
evaluation of both.

    metrics = train_reward_model(cfg, train, val, pairs_train=pairs, out=out, tracker=tracker)
    model = load_reward_model(out)
    probe = train_linear_probe(cfg, build_reward_model(cfg.model), train, val)
    report = evaluate_reward_model(model, heldout, val, pairs_heldout, probe=probe)

    setup    the model (a fresh CLIP adapter / frozen / full backbone, fusion block, heads),
             AdamW with one parameter group per part (backbone, fusion, heads) at its own
             rate, the EMA of the trainable weights, the latest checkpoint when resuming
    train    per step, a batch of rated images (MixUp on a seeded share of the steps) under
             the focal loss on the heads, plus lambda_pairwise x Bradley-Terry on the overall
             score of a batch of preference pairs; linear warm-up; gradient clipping; EMA
             update; every eval_every steps the EMA weights are scored on validation
             (thresholds chosen there, macro F1), and training stops after `patience`
             evaluations without a better macro F1
    save     the best evaluation's EMA weights as a reward model directory in `out`
             (save_reward_model) and its model card (genalign.json)

Loss per step, with z the head logits [B, K] and y the ratings (NaN: unrated):

    L = focal(z, y; gamma, alpha) + lambda_pairwise * BT(o(z_a), o(z_b); preferred)

where o is the weighted mean of the heads (`overall`). The Bradley-Terry term reads the mean of
the LOGITS: a difference of mean probabilities lies in [-1, 1], where -log sigmoid barely
changes (from 1.31 to 0.31), so it would hardly train. Pairwise accuracy in evaluation orders
pairs by the mean of the probabilities, the score a consumer of the model reads.

Resume: the batch order of each epoch, each step's MixUp draws and pair batch are pure
functions of (seed, step) (`genalign.training.seeds.derive_seed`), nothing in the forward
pass draws random numbers (no dropout), and the checkpoint holds the trainable weights, the
optimizer, the EMA, the early-stopping state and the best weights, so a run killed at a
checkpoint and resumed ends with the weights of an uninterrupted run.

The baseline (`train_linear_probe`) is one logistic regression per head on the L2-normalised
frozen CLIP image embedding, the design of the LAION aesthetic predictor
(github.com/LAION-AI/aesthetic-predictor), trained full-batch with the same focal objective on
the same ratings; the evaluation chooses its thresholds on validation too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from genalign.artifacts import ModelCard, write_model_card
from genalign.config.reward_model import (
    PARTS,
    RESUMABLE_FIELDS,
    TINY_BACKBONE,
    TrainRewardModelConfig,
)
from genalign.models.reward_model import (
    LinearProbe,
    PairTensors,
    RatedTensors,
    RewardModel,
    build_reward_model,
    overall,
    save_reward_model,
)
from genalign.tracking import NullTracker, Tracker
from genalign.training.checkpoints import (
    check_resumable,
    latest_checkpoint,
    read_checkpoint_state,
    read_checkpoint_tensors,
    remove_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from genalign.training.ema import EMA
from genalign.training.seeds import derive_seed

__all__ = ["PairTensors", "RatedTensors", "evaluate_reward_model", "train_linear_probe", "train_reward_model"]

METHOD = "reward_model"
ARCH = "reward-model"


class Scorer(Protocol):
    """What the evaluation scores: a RewardModel or a LinearProbe."""

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor: ...


# ---------------------------------------------------------------------------- inputs
def check_rated(data: RatedTensors, where: str, heads: int) -> None:
    """ValueError naming `where` unless `data` holds N images, N prompts and [N, heads] ratings
    in [0, 1] or NaN."""
    images, prompts, ratings = data
    n = images.shape[0]
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"{where}: images must be float [N, 3, H, W] in [0, 1], got {images.dtype} {list(images.shape)}")
    if len(prompts) != n or ratings.shape != (n, heads):
        raise ValueError(f"{where}: {n} images, {len(prompts)} prompts and ratings {list(ratings.shape)}; "
                         f"expected one prompt and [N, {heads}] ratings per image")
    rated = ratings[torch.isfinite(ratings)]
    if bool(torch.isinf(ratings).any()) or bool(((rated < 0) | (rated > 1)).any()):
        raise ValueError(f"{where}: ratings must lie in [0, 1] (NaN for an unrated head)")
    if n == 0:
        raise ValueError(f"{where}: no images")


def check_pairs(pairs: PairTensors, where: str) -> None:
    """ValueError naming `where` unless `pairs` holds P image pairs, P prompts and P
    preferences in {0, 0.5, 1}."""
    p = pairs.images_a.shape[0]
    if pairs.images_a.shape != pairs.images_b.shape or pairs.images_a.dim() != 4:
        raise ValueError(f"{where}: images_a {list(pairs.images_a.shape)} and images_b "
                         f"{list(pairs.images_b.shape)} must be one [P, 3, H, W] shape")
    if len(pairs.prompts) != p or pairs.preferred.shape != (p,):
        raise ValueError(f"{where}: {p} pairs, {len(pairs.prompts)} prompts and preferred "
                         f"{list(pairs.preferred.shape)}; expected one prompt and one preference per pair")
    if not bool(((pairs.preferred == 0) | (pairs.preferred == 0.5) | (pairs.preferred == 1)).all()):
        raise ValueError(f"{where}: preferred must be 0, 0.5 or 1 (P(a preferred))")
    if p == 0:
        raise ValueError(f"{where}: no pairs")


def _batch(n: int, size: int, step: int, seed: int, stream: str) -> Tensor:
    """The indices of `step`'s batch: epoch e = step // (n // size) is a seeded permutation
    of range(n) cut into n // size batches (the remainder is left out of that epoch)."""
    per_epoch = n // size
    epoch, within = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, stream, epoch)))
    return order[within * size:(within + 1) * size]


def _tokens(ids: Tensor, mask: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Rows `index` of tokens padded to the whole set's longest prompt, cut to the longest in
    the batch (CLIP's text tower is causal, so the cut pads change no real token)."""
    ids, mask = ids[index], mask[index]
    length = int(mask.sum(1).max())
    return ids[:, :length], mask[:, :length]


@torch.no_grad()
def predict(scorer: Scorer, images: Tensor, prompts: Sequence[str], batch_size: int) -> Tensor:
    """Per-head probabilities [N, K] of `scorer` on `images`, `batch_size` at a time (CPU)."""
    out = [scorer.score(images[i:i + batch_size], list(prompts[i:i + batch_size]))
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out).cpu()


def _validation(model: RewardModel, val: RatedTensors, pairs_val: PairTensors | None,
                cfg: TrainRewardModelConfig) -> dict[str, float]:
    """val/* metrics of `model` as it is: thresholds chosen on val itself, macro F1, ECE."""
    from genalign.evaluation.reward import choose_thresholds, expected_calibration_error, f1_scores

    probs = predict(model, val.images, val.prompts, cfg.eval_batch_size)
    f1 = f1_scores(probs, val.ratings, choose_thresholds(probs, val.ratings))
    out = {"val/macro_f1": f1.macro, "val/ece": expected_calibration_error(probs, val.ratings)}
    out.update({f"val/f1_{h}": float(v) for h, v in zip(model.heads_names, f1.per_head, strict=True)})
    if pairs_val is not None:
        out["val/pairwise_accuracy"] = _pairwise(model, pairs_val, cfg.eval_batch_size, cfg.overall_weights).accuracy
    return out


def _pairwise(scorer: Scorer, pairs: PairTensors, batch_size: int, weights: Sequence[float] | None):
    from genalign.evaluation.reward import pairwise_accuracy

    a = overall(predict(scorer, pairs.images_a, pairs.prompts, batch_size), weights)
    b = overall(predict(scorer, pairs.images_b, pairs.prompts, batch_size), weights)
    return pairwise_accuracy(a, b, pairs.preferred)


# ---------------------------------------------------------------------------- training
def train_reward_model(
    cfg: TrainRewardModelConfig,
    train: RatedTensors,
    val: RatedTensors,
    *,
    pairs_train: PairTensors | None = None,
    pairs_val: PairTensors | None = None,
    out: Path,
    tracker: Tracker | None = None,
    backbone_dir: Path | None = None,
    resume: bool = True,
    stop_at: int | None = None,
) -> dict[str, float]:
    """Train a reward model on `train` (early stopping on `val`) and save it into `out`
    (checkpoints under `out/checkpoints`). Returns the final metrics.

    backbone_dir: the local directory of a pretrained backbone (None: `cfg.model.backbone`
    is resolved with genalign.models.refs). resume: continue from the latest checkpoint in
    `out` (False: start afresh, deleting them). stop_at (recovery drills and tests): return
    after that many steps with a checkpoint written, as if the run had been killed there.
    """
    from tqdm.auto import tqdm

    from genalign.losses.reward import bradley_terry_loss, focal_loss, mixup

    tracker = tracker or NullTracker()
    out = Path(out)
    k = len(cfg.model.heads)
    check_rated(train, "train", k)
    check_rated(val, "val", k)
    for name, pairs in (("pairs_train", pairs_train), ("pairs_val", pairs_val)):
        if pairs is not None:
            check_pairs(pairs, name)
    n = train.images.shape[0]
    if n < cfg.batch_size:
        raise ValueError(f"train: {n} images are fewer than one batch (batch_size {cfg.batch_size})")

    # --- setup
    if backbone_dir is None and cfg.model.backbone != TINY_BACKBONE:
        from genalign.models.refs import model_dir, resolve

        backbone_dir = model_dir(resolve(cfg.model.backbone))
    model = build_reward_model(cfg.model, backbone_dir=backbone_dir).train()
    groups = model.parameter_groups()
    lr_of = {"backbone": cfg.lr_backbone, "fusion": cfg.lr_fusion, "heads": cfg.lr_heads}
    optimizer = torch.optim.AdamW(
        [{"params": groups[part], "lr": lr_of[part], "name": part} for part in PARTS if groups[part] and lr_of[part] > 0],
        weight_decay=cfg.weight_decay,
    )
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    ema = EMA(model, decay=cfg.ema_decay)
    ids, mask = model.tokenize(train.prompts)  # [N, T]
    pair_ids = pair_mask = None
    if pairs_train is not None:
        pair_ids, pair_mask = model.tokenize(pairs_train.prompts)
    pair_size = min(cfg.pair_batch_size, pairs_train.images_a.shape[0]) if pairs_train is not None else 0

    step, seconds, best_step, best_f1, bad, stopped = 0, 0.0, None, None, 0, False
    best: dict[str, Tensor] | None = None
    torch.manual_seed(derive_seed(cfg.seed, "train"))
    ckpt = latest_checkpoint(out) if resume else None
    if not resume:
        remove_checkpoints(out)
    if ckpt is not None:
        state = read_checkpoint_state(ckpt)
        check_resumable(ckpt, state["config"], cfg.to_dict(), RESUMABLE_FIELDS)
        restore_checkpoint(ckpt, params={"trainable": trainable}, optimizer=optimizer)
        ema.load_state_dict(read_checkpoint_tensors(ckpt, "ema"))
        step, seconds, bad, stopped = state["step"], state["seconds"], state["bad_evals"], state["stopped"]
        best_step, best_f1 = state["best_step"], state["best_f1"]
        if best_step is not None:
            best = read_checkpoint_tensors(ckpt, "best")

    # --- train
    bar = tqdm(total=cfg.steps, initial=step, desc="train reward-model", unit="step", mininterval=2.0)
    running: dict[str, float] = {}
    first_loss = last_loss = math.nan
    start = time.perf_counter()
    while step < cfg.steps and not stopped and (stop_at is None or step < stop_at):
        mult = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        for group in optimizer.param_groups:
            group["lr"] = lr_of[group["name"]] * mult
        index = _batch(n, cfg.batch_size, step, cfg.seed, "order")
        images, ratings = train.images[index], train.ratings[index]
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "mixup", step))
        mixed = cfg.mixup_prob > 0 and float(torch.rand((), generator=g)) < cfg.mixup_prob
        if mixed:  # the first source keeps its prompt (lam >= 0.5)
            images, ratings = mixup(images, ratings, cfg.mixup_alpha, g)[:2]
        logits = model(images, *_tokens(ids, mask, index))  # [B, K]
        focal = focal_loss(logits, ratings, gamma=cfg.focal_gamma, alpha=cfg.focal_alpha)
        loss = focal.loss
        parts = {"focal": float(focal.loss.detach()), "mixed": float(mixed)}
        if pairs_train is not None and cfg.lambda_pairwise > 0:
            pi = _batch(pairs_train.images_a.shape[0], pair_size, step, cfg.seed, "pairs")
            tokens = _tokens(pair_ids, pair_mask, pi)
            score_a = overall(model(pairs_train.images_a[pi], *tokens), cfg.overall_weights)  # [P]
            score_b = overall(model(pairs_train.images_b[pi], *tokens), cfg.overall_weights)
            bt = bradley_terry_loss(score_a, score_b, pairs_train.preferred[pi].to(score_a.dtype))
            loss = loss + cfg.lambda_pairwise * bt.loss
            parts.update(bradley_terry=float(bt.loss.detach()), pair_accuracy=float(bt.accuracy))
        last_loss = float(loss.detach())
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"step {step}: the loss is {last_loss} ({parts}); lower the learning rates "
                                     f"({lr_of}) or check the ratings")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
        optimizer.step()
        ema.update(model)
        step += 1
        bar.update(1)
        first_loss = last_loss if step == 1 else first_loss
        for key, value in {"loss": last_loss, **parts, "grad_norm": float(grad_norm), "lr_scale": mult}.items():
            running[key] = running.get(key, 0.0) + value
        if step % cfg.log_every == 0 or step == cfg.steps:
            count = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            tracker.log_metrics({f"train/{key}": v / count for key, v in running.items()}, step=step)
            bar.set_postfix(loss=f"{running['loss'] / count:.3g}")
            running = {}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            with ema.apply_to(model):
                report = _validation(model, val, pairs_val, cfg)
                f1 = report["val/macro_f1"]
                if not math.isnan(f1) and (best_f1 is None or f1 > best_f1):
                    best_f1, best_step, bad = f1, step, 0
                    best = {name: p.detach().clone() for name, p in trainable.items()}
                else:
                    bad += 1
            model.train()
            stopped = bad >= cfg.patience
            tracker.log_metrics({**report, "val/best_macro_f1": math.nan if best_f1 is None else best_f1}, step=step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopped or step == stop_at:
            tensors = {"trainable": trainable, "ema": ema.state_dict(), **({"best": best} if best else {})}
            save_checkpoint(out, step, tensors=tensors, optimizer=optimizer, keep=cfg.keep_checkpoints, state={
                "config": cfg.to_dict(), "seconds": seconds + time.perf_counter() - start, "bad_evals": bad,
                "stopped": stopped, "best_step": best_step, "best_f1": best_f1,
            })
    bar.close()
    seconds += time.perf_counter() - start
    metrics = {"steps": float(step), "seconds": seconds, "stopped_early": float(stopped),
               "best_step": math.nan if best_step is None else float(best_step),
               "val/best_macro_f1": math.nan if best_f1 is None else best_f1,
               "train/first_loss": first_loss, "train/final_loss": last_loss}
    if step < cfg.steps and not stopped:  # stopped on purpose: the checkpoint is what a resumed run continues from
        return metrics

    # --- save: the best evaluation's EMA weights (the last EMA weights if no evaluation scored)
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(best[name] if best is not None else ema.shadow[name])
    model.eval()
    save_reward_model(model, out)
    write_model_card(out, ModelCard(
        kind="model", method=METHOD, arch=ARCH, base_model=cfg.model.backbone, config=cfg.to_dict(),
        metrics={key: float(v) for key, v in metrics.items() if math.isfinite(v)},
        adapter_type=cfg.model.backbone_mode if cfg.model.backbone_mode != "frozen" else "",
        extra={"heads": list(cfg.model.heads), "weights": "ema, best validation macro F1"},
    ))
    return metrics


# ---------------------------------------------------------------------------- the baseline
def train_linear_probe(cfg: TrainRewardModelConfig, backbone: RewardModel, train: RatedTensors,
                       val: RatedTensors) -> LinearProbe:
    """The baseline: a LinearProbe (logistic regression per head on the L2-normalised frozen
    image embedding of `backbone`) trained full-batch with AdamW (cfg.probe) under the
    reward model's focal loss on `train`; the weights of the step with the best validation
    macro F1 (checked every cfg.eval_every steps and at the end) are kept. `backbone` should be
    untrained (its adapter is switched off, but a `full` model's own weights are used)."""
    from genalign.evaluation.reward import choose_thresholds, f1_scores
    from genalign.losses.reward import focal_loss

    k = len(backbone.heads_names)
    check_rated(train, "train", k)
    check_rated(val, "val", k)
    backbone.eval()

    def embed(images: Tensor) -> Tensor:
        return torch.cat([backbone.image_embedding(images[i:i + cfg.eval_batch_size])
                          for i in range(0, images.shape[0], cfg.eval_batch_size)])

    x_train, x_val = embed(train.images), embed(val.images)  # [N, E]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "probe"))
        probe = LinearProbe(backbone, backbone.heads_names)
    optimizer = torch.optim.AdamW(probe.linear.parameters(), lr=cfg.probe.lr, weight_decay=cfg.probe.weight_decay)
    best_f1, best = -math.inf, None
    for step in range(1, cfg.probe.steps + 1):
        loss = focal_loss(probe(x_train), train.ratings, gamma=cfg.focal_gamma, alpha=cfg.focal_alpha).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % cfg.eval_every == 0 or step == cfg.probe.steps:
            with torch.no_grad():
                probs = torch.sigmoid(probe(x_val))
            f1 = f1_scores(probs, val.ratings, choose_thresholds(probs, val.ratings)).macro
            if not math.isnan(f1) and f1 > best_f1:
                best_f1, best = f1, {n: p.detach().clone() for n, p in probe.linear.state_dict().items()}
    if best is not None:
        probe.linear.load_state_dict(best)
    return probe.eval()


# ---------------------------------------------------------------------------- evaluation
def evaluate_reward_model(
    model: RewardModel,
    heldout: RatedTensors,
    val: RatedTensors,
    pairs_heldout: PairTensors | None = None,
    *,
    probe: LinearProbe | None = None,
    weights: Sequence[float] | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """eval/* metrics of `model` (and eval/probe_* of `probe`) on the held-out set: per-head
    F1 and macro F1 at thresholds chosen on `val` only, the heads whose F1 is undefined, ECE,
    and the pairwise accuracy of the overall score (`weights`) on `pairs_heldout` with its
    pair and tie counts."""
    from genalign.evaluation.reward import choose_thresholds, expected_calibration_error, f1_scores

    k = len(model.heads_names)
    check_rated(heldout, "heldout", k)
    check_rated(val, "val", k)
    if pairs_heldout is not None:
        check_pairs(pairs_heldout, "pairs_heldout")
    out: dict[str, Any] = {}
    for prefix, scorer in (("eval/", model), ("eval/probe_", probe)):
        if scorer is None:
            continue
        was_training = scorer.training
        scorer.eval()
        thresholds = choose_thresholds(predict(scorer, val.images, val.prompts, batch_size), val.ratings)
        probs = predict(scorer, heldout.images, heldout.prompts, batch_size)
        f1 = f1_scores(probs, heldout.ratings, thresholds)
        for i, head in enumerate(model.heads_names):
            out[f"{prefix}f1_{head}"] = float(f1.per_head[i])
            out[f"{prefix}threshold_{head}"] = float(thresholds[i])
        out[f"{prefix}macro_f1"] = f1.macro
        out[f"{prefix}f1_undefined_heads"] = f1.undefined
        out[f"{prefix}ece"] = expected_calibration_error(probs, heldout.ratings)
        if pairs_heldout is not None:
            acc = _pairwise(scorer, pairs_heldout, batch_size, weights)
            out[f"{prefix}pairwise_accuracy"] = acc.accuracy
            out[f"{prefix}pairs"], out[f"{prefix}ties"] = acc.pairs, acc.ties
        scorer.train(was_training)
    return out
