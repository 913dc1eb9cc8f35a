"""Strict configs and presets: unknown keys, wrong types and bad overrides fail early."""

import pytest

from genalign.config.base import ConfigError
from genalign.config.part_dpo import PreparePartsConfig, RolloutPartsConfig
from genalign.config.presets import load_preset
from genalign.config.register import RegisterModelConfig


def test_from_dict_rejects_unknown_key_and_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        RolloutPartsConfig.from_dict({"samples_per_conditon": 4}, where="rollout")
    assert "samples_per_conditon" in str(e.value) and "samples_per_condition" in str(e.value)


def test_from_dict_checks_types_and_nested():
    with pytest.raises(ConfigError, match=r"rollout.steps: expected an integer"):
        RolloutPartsConfig.from_dict({"steps": "20"}, where="rollout")
    cfg = PreparePartsConfig.from_dict({"pretrain": {"training": {"steps": 700}}})
    assert cfg.pretrain.training.steps == 700
    with pytest.raises(ConfigError, match=r"pretrain.training: unknown key"):
        PreparePartsConfig.from_dict({"pretrain": {"training": {"stepz": 7}}})
    assert RolloutPartsConfig.from_dict({"steps": 20.0}).steps == 20  # KFP Struct numbers are doubles
    with pytest.raises(ConfigError, match="expected an integer"):
        RolloutPartsConfig.from_dict({"steps": 20.5})


def test_post_init_checks_are_config_errors():
    with pytest.raises(ConfigError, match="samples_per_condition must be >= 2"):
        RolloutPartsConfig.from_dict({"samples_per_condition": 1})


def test_round_trip():
    cfg = RegisterModelConfig.from_dict({"aliases": ["a", "b"]})
    assert RegisterModelConfig.from_dict(cfg.to_dict()) == cfg


def test_tiny_preset_loads_with_every_section_explicit():
    args = load_preset("part-dpo", "tiny")
    assert set(args) >= {"prepare", "rollout", "score", "pairs", "train", "evaluate", "register"}
    assert args["rollout"]["samples_per_condition"] == 8
    assert "beta" in args["train"]


def test_override_and_errors(tmp_path):
    args = load_preset("part-dpo", "tiny", ["train.beta=123", "rollout.steps=5"])
    assert args["train"]["beta"] == 123 and args["rollout"]["steps"] == 5
    with pytest.raises(ConfigError, match="unknown key"):
        load_preset("part-dpo", "tiny", ["train.betta=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_preset("part-dpo", "tiny", ["train.beta"])
    with pytest.raises(ConfigError, match="unknown pipeline"):
        load_preset("nope", "tiny")
    with pytest.raises(ConfigError, match="no such preset"):
        load_preset("part-dpo", "huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare: {}\nfoo: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key\(s\) \['foo'\]"):
        load_preset("part-dpo", str(bad))
