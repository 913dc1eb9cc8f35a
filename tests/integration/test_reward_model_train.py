"""The reward-model trainer (genalign.trainers.reward_model) on the tiny CLIP, trained for real
on synthetic 32-px images whose five labels are simple functions of the picture and prompt:

    spatial       the square is in the left half
    iconographic  the prompt names the square's colour (needs the prompt)
    style         the background is bright
    fidelity      the square is big
    material      the square is red

About 10 % of the ratings are unrated (NaN). Checks: the loss falls, held-out macro F1 beats
the chance level of always answering "positive", the adapter and heads changed and the CLIP
base did not, the saved keys are right, save/load keeps the scores, a resumed run ends where
an uninterrupted one does.
"""

import pytest
import torch
from safetensors.torch import load_file

from genalign.config.reward_model import HEADS, TrainRewardModelConfig
from genalign.models.reward_model import (
    PairTensors,
    RatedTensors,
    build_reward_model,
    load_reward_model,
    save_reward_model,
)
from genalign.tracking import NullTracker
from genalign.trainers.reward_model import (
    evaluate_reward_model,
    train_linear_probe,
    train_reward_model,
)

pytestmark = pytest.mark.integration

COLOURS = {"red": (0.9, 0.1, 0.1), "blue": (0.1, 0.2, 0.9)}


def synthetic(n: int, seed: int, unrated: float = 0.1) -> RatedTensors:
    g = torch.Generator().manual_seed(seed)
    images, ratings, prompts = torch.empty(n, 3, 32, 32), torch.empty(n, 5), []
    names = list(COLOURS)
    for i in range(n):
        left, bright, big, said_true = (bool(torch.rand((), generator=g) < 0.5) for _ in range(4))
        colour = names[int(torch.randint(2, (), generator=g))]
        said = colour if said_true else names[1 - names.index(colour)]
        img = torch.full((3, 32, 32), 0.75 if bright else 0.3) + 0.03 * torch.randn(3, 32, 32, generator=g)
        side = 14 if big else 7
        x0 = int(torch.randint(0, 16 - side + 1, (), generator=g)) + (0 if left else 16)
        y0 = int(torch.randint(0, 32 - side + 1, (), generator=g))
        img[:, y0:y0 + side, x0:x0 + side] = torch.tensor(COLOURS[colour])[:, None, None]
        images[i] = img.clamp(0, 1)
        prompts.append(f"a {said} square")
        ratings[i] = torch.tensor([left, said_true, bright, big, colour == "red"], dtype=torch.float32)
    ratings[torch.rand(n, 5, generator=g) < unrated] = float("nan")
    return RatedTensors(images, prompts, ratings)


def pairs_of(data: RatedTensors, seed: int) -> PairTensors:
    """Pairs of images under the first image's prompt; the one with more positive heads wins,
    equal counts are ties. (The second image is rated under its own prompt, so iconographic is
    left out of the count.)"""
    g = torch.Generator().manual_seed(seed)
    n = data.images.shape[0]
    a, b = torch.arange(n), torch.randperm(n, generator=g)
    counts = torch.nan_to_num(data.ratings[:, [0, 2, 3, 4]], nan=0.0).sum(1)
    preferred = torch.where(counts[a] > counts[b], 1.0, torch.where(counts[a] < counts[b], 0.0, 0.5))
    return PairTensors(data.images[a], data.images[b], list(data.prompts), preferred)


def chance_macro_f1(ratings: torch.Tensor) -> float:
    """Macro F1 of answering "positive" everywhere: per head, precision = pi (the positive
    share of rated entries) and recall = 1, so F1 = 2 pi / (1 + pi); pi = 0.5 gives 2/3."""
    f1 = []
    for k in range(ratings.shape[1]):
        r = ratings[:, k][torch.isfinite(ratings[:, k])]
        pi = float((r >= 0.5).float().mean())
        f1.append(2 * pi / (1 + pi))
    return sum(f1) / len(f1)


def config(**changes) -> TrainRewardModelConfig:
    base = {
        "steps": 150, "batch_size": 16, "pair_batch_size": 8, "eval_every": 50, "patience": 10,
        "checkpoint_every": 50, "ema_decay": 0.99, "focal_alpha": None, "warmup_steps": 10,
        "lr_backbone": 1e-3, "lr_fusion": 3e-3, "lr_heads": 3e-3, "log_every": 10,
        "model": {"backbone_mode": "lora", "fusion_width": 32},
    }
    return TrainRewardModelConfig.from_dict({**base, **changes})


@pytest.fixture(scope="module")
def data():
    train = synthetic(200, 0)
    return train, synthetic(80, 1), synthetic(80, 2), pairs_of(train, 3)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    train, val, _, pairs = data
    out = tmp_path_factory.mktemp("reward-model")
    tracker = NullTracker()
    metrics = train_reward_model(config(), train, val, pairs_train=pairs, out=out, tracker=tracker)
    return out, metrics, tracker


def test_training_learns_the_heads(data, trained):
    train, val, heldout, _ = data
    out, metrics, tracker = trained
    losses = [m["train/loss"] for _, m in tracker.metrics if "train/loss" in m]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert any("train/bradley_terry" in m for _, m in tracker.metrics)
    assert metrics["steps"] == 150 and metrics["best_step"] in (50, 100, 150)

    model = load_reward_model(out)
    held_pairs = pairs_of(heldout, 4)
    probe = train_linear_probe(config(), build_reward_model(config().model), train, val)
    report = evaluate_reward_model(model, heldout, val, held_pairs, probe=probe)
    chance = chance_macro_f1(heldout.ratings)
    assert 0.6 < chance < 0.75
    assert report["eval/macro_f1"] > chance + 0.1
    assert report["eval/f1_undefined_heads"] == 0
    assert 0.0 <= report["eval/ece"] <= 1.0
    assert report["eval/pairwise_accuracy"] > 0.5
    assert report["eval/pairs"] + report["eval/ties"] == len(held_pairs.prompts)
    # the probe sees no prompt: iconographic (does the prompt name the colour?) is beyond it
    assert report["eval/f1_iconographic"] > report["eval/probe_f1_iconographic"]
    assert set(report) >= {f"eval/probe_f1_{h}" for h in HEADS}


def test_adapter_and_heads_changed_base_did_not(trained):
    out, _, _ = trained
    fresh = build_reward_model(config().model)
    model = load_reward_model(out)
    before, after = dict(fresh.named_parameters()), dict(model.named_parameters())
    assert set(before) == set(after)
    lora = [n for n in after if "lora_" in n]
    base = [n for n in after if n.startswith("backbone.") and "lora_" not in n]
    assert lora and base
    assert all(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in base)
    heads = [n for n in after if not n.startswith("backbone.")]
    assert all(not torch.equal(before[n], after[n]) for n in heads)


def test_saved_keys_and_save_load_keep_scores(data, trained, tmp_path):
    out, _, _ = trained
    assert {p.name for p in out.iterdir()} >= {"reward_model.json", "heads.safetensors", "tokenizer", "adapter",
                                               "genalign.json", "checkpoints"}
    assert not (out / "backbone").exists()
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    heads = load_file(str(out / "heads.safetensors"))
    assert not any(k.startswith("backbone.") for k in heads) and "heads.weight" in heads
    _, _, heldout, _ = data
    model = load_reward_model(out)
    save_reward_model(model, tmp_path / "again")
    again = load_reward_model(tmp_path / "again")
    images, prompts = heldout.images[:8], heldout.prompts[:8]
    assert torch.equal(model.score(images, prompts), again.score(images, prompts))


def test_resume_ends_where_an_uninterrupted_run_does(data, tmp_path):
    train, val, _, pairs = data
    cfg = config(steps=12, eval_every=4, checkpoint_every=6, patience=10)
    whole = train_reward_model(cfg, train, val, pairs_train=pairs, out=tmp_path / "whole")
    cut = train_reward_model(cfg, train, val, pairs_train=pairs, out=tmp_path / "cut", stop_at=6)
    assert cut["steps"] == 6 and not (tmp_path / "cut" / "reward_model.json").exists()
    resumed = train_reward_model(cfg, train, val, pairs_train=pairs, out=tmp_path / "cut")
    assert resumed["steps"] == whole["steps"] == 12
    assert resumed["best_step"] == whole["best_step"]
    for name in ("heads.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "cut" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_early_stopping_keeps_the_best_evaluation(data, tmp_path):
    """At learning rates of 1e-9 the validation macro F1 cannot improve: the first evaluation
    (step 2) is the best, the second is not better, and patience 1 stops the run there."""
    train, val, _, _ = data
    cfg = config(steps=40, eval_every=2, patience=1, lr_backbone=1e-9, lr_fusion=1e-9, lr_heads=1e-9)
    metrics = train_reward_model(cfg, train, val, out=tmp_path)
    assert metrics["stopped_early"] == 1.0 and metrics["steps"] == 4 and metrics["best_step"] == 2
    assert (tmp_path / "reward_model.json").is_file()
