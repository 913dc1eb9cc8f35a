"""prepare-parts reports its base's held-out loss whether it pretrains the base or takes a
model reference, and the committed release's held-out loss recomputes to its card's."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from genalign.artifacts import read_model_card
from genalign.config.part_dpo import PreparePartsConfig
from genalign.config.presets import load_preset
from genalign.stages import run_stage
from genalign.trainers.part_base import HELDOUT_METRIC, base_heldout_loss

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]  # one_thread: tests/conftest.py

RELEASED = Path(str(files("genalign.models") / "released" / "part-generator-pretrained"))
PRETRAIN = {
    "train_conditions": 2, "eval_conditions": 1, "base_model": "pretrain",
    "pretrain": {"objects": 16, "hidden": 16, "depth": 2, "heads": 2, "heldout_objects": 8,
                 "training": {"steps": 2, "batch_size": 8, "warmup_steps": 1}},
}




def prepare(cfg: dict, out: Path):
    return run_stage("prepare-parts", cfg, inputs={},
                     outputs={"conditions": out / "cond", "eval_conditions": out / "eval", "model": out / "model"})


def test_a_pretrained_base_records_its_heldout_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("GENALIGN_CACHE", str(tmp_path / "cache"))
    result = prepare(PRETRAIN, tmp_path / "a")
    card = read_model_card(tmp_path / "a" / "model")
    assert result.metrics[HELDOUT_METRIC] == card.metrics[HELDOUT_METRIC] > 0
    assert card.config["seed"] == 1234 and card.extra == {"torch_threads": 1}
    cfg = PreparePartsConfig.from_dict(PRETRAIN)
    assert base_heldout_loss(cfg, tmp_path / "a" / "model") == card.metrics[HELDOUT_METRIC]
    # another prepare.seed pretrains on other objects: not the cached base
    other = prepare({**PRETRAIN, "seed": 99}, tmp_path / "b")
    assert other.metrics[HELDOUT_METRIC] != result.metrics[HELDOUT_METRIC]


def test_a_referenced_base_reports_the_heldout_loss_of_its_card(tmp_path):
    result = prepare({"train_conditions": 2, "eval_conditions": 1, "base_model": "tiny://part-generator-pretrained"},
                     tmp_path / "a")
    assert result.metrics[HELDOUT_METRIC] == read_model_card(RELEASED).metrics[HELDOUT_METRIC]
    assert read_model_card(tmp_path / "a" / "model").ref == "tiny://part-generator-pretrained"
    random_init = prepare({"train_conditions": 2, "eval_conditions": 1, "base_model": "tiny://part-generator"},
                          tmp_path / "b")
    assert HELDOUT_METRIC not in random_init.metrics


def test_the_released_weights_recompute_their_heldout_loss():
    """Same weights, same held-out objects and draws: the card's number, up to the rounding
    of another CPU or thread count."""
    cfg = PreparePartsConfig.from_dict(load_preset("part-dpo", "tiny")["prepare"])
    card = read_model_card(RELEASED)
    assert base_heldout_loss(cfg, RELEASED) == pytest.approx(card.metrics[HELDOUT_METRIC], rel=1e-4)
