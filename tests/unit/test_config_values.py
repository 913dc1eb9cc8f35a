"""Bad values fail when a config loads: ranges, loss names, model references, registry
names, and YAML syntax errors that name the file and the line."""

import math
import re

import pytest

from genalign.config.base import ConfigError, check_range, load_yaml
from genalign.config.diffusers_edit import DiffusersEditConfig
from genalign.config.flow_dpo import LIVE_REFERENCE_LOSSES, PREFERENCE_LOSSES, FlowDPOConfig
from genalign.config.lm_dpo import LMDPOConfig
from genalign.config.pairs import MinePairsConfig
from genalign.config.part_dit import FlowMatchingConfig, PartDiTConfig
from genalign.config.part_dpo import (
    EvaluatePartsConfig,
    PreparePartsConfig,
    PretrainPartsConfig,
    RolloutPartsConfig,
)
from genalign.config.planner import PlannerSamplingConfig, PlannerSFTConfig
from genalign.config.planner_dpo import (
    CriticConfig,
    EvaluatePlannerConfig,
    PreparePlannerConfig,
    ShardPlannerConfig,
)
from genalign.config.planner_world import ExecutorConfig
from genalign.config.presets import load_preset
from genalign.config.refs import TINY_ARCHS, ModelRefError, check_model_ref, parse_model_ref
from genalign.config.register import RegisterModelConfig
from genalign.config.score import PenetrationConfig
from genalign.stages import run_stage

INF, NAN = math.inf, math.nan


# --- the presets still load ------------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline, preset", [("part-dpo", "tiny"), ("planner-dpo", "tiny"), ("planner-dpo", "single-round")]
)
def test_shipped_presets_load(pipeline, preset):
    args = load_preset(pipeline, preset)
    assert "register" in args and "train" in args


# --- loss names ----------------------------------------------------------------------


def test_flow_dpo_loss_names_are_the_loss_table_keys():
    from genalign.losses import PREFERENCE_LOSS_EXTRA_INPUTS
    from genalign.losses import PREFERENCE_LOSSES as TABLE

    assert PREFERENCE_LOSSES == tuple(TABLE)
    assert set(LIVE_REFERENCE_LOSSES) == {k for k, v in PREFERENCE_LOSS_EXTRA_INPUTS.items() if v}


def test_unknown_flow_dpo_loss_fails_at_load():
    with pytest.raises(
        ConfigError, match=r"tiny.yaml: train: loss: 'nope' is not a preference loss; valid names: \["
    ):
        load_preset("part-dpo", "tiny", ["train.loss=nope"])
    for name in PREFERENCE_LOSSES:
        assert FlowDPOConfig(loss=name).loss == name


def test_loss_that_needs_the_live_reference_refuses_precompute():
    with pytest.raises(ConfigError, match="expected precompute_reference=false"):
        FlowDPOConfig.from_dict({"loss": "dspo_sd15", "precompute_reference": True})
    assert FlowDPOConfig(loss="diffusion_dpo", precompute_reference=True).precompute_reference


def test_unknown_planner_loss_type_fails_at_load():
    with pytest.raises(
        ConfigError, match=r"train.dpo: loss_type: 'nope' is not a trl DPO loss; valid: \["
    ):
        load_preset("planner-dpo", "tiny", ["train.dpo.loss_type=nope"])


# --- ranges ---------------------------------------------------------------------------


def test_check_range_messages():
    with pytest.raises(ValueError, match=r"^n: expected an integer >= 1, got 0$"):
        check_range("n", 0, ge=1)
    with pytest.raises(ValueError, match=r"^lr: expected a finite number > 0, got inf$"):
        check_range("lr", INF, gt=0)
    with pytest.raises(ValueError, match=r"^p: expected a finite number in \[0, 1\], got nan$"):
        check_range("p", NAN, ge=0, le=1)
    with pytest.raises(ValueError, match=r"^p: expected a finite number in \[0, 1\), got 1.0$"):
        check_range("p", 1.0, ge=0, lt=1)
    with pytest.raises(ValueError, match=r"^x: expected a finite number, got nan$"):
        check_range("x", NAN)
    check_range("n", 1, ge=1)
    check_range("p", 0.5, ge=0, le=1)


def test_preset_counts_fail_at_load():
    with pytest.raises(
        ConfigError, match=r"tiny.yaml: shard: num_shards: expected an integer >= 1, got 0"
    ):
        load_preset("planner-dpo", "tiny", ["shard.num_shards=0"])
    with pytest.raises(
        ConfigError, match=r"tiny.yaml: rollout: batch_size: expected an integer >= 1, got 0"
    ):
        load_preset("part-dpo", "tiny", ["rollout.batch_size=0"])
    with pytest.raises(
        ConfigError,
        match=r"tiny.yaml: rollout.sampling: batch_size: expected an integer >= 1, got 0",
    ):
        load_preset("planner-dpo", "tiny", ["rollout.sampling.batch_size=0"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: train: lr must be > 0 and finite, got inf"):
        load_preset("part-dpo", "tiny", ["train.lr=.inf"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: train: beta must be > 0 and finite, got nan"):
        load_preset("part-dpo", "tiny", ["train.beta=.nan"])


# (config class, its field, a bad value, what the message says). Every row is a value that
# used to load.
BAD_VALUES = [
    (FlowDPOConfig, "lr", INF, "lr must be > 0 and finite, got inf"),
    (FlowDPOConfig, "beta", NAN, "beta must be > 0 and finite, got nan"),
    (FlowDPOConfig, "alpha", INF, "alpha must be > 0 and finite"),
    (FlowDPOConfig, "logit_std", INF, "logit_std must be > 0 and finite"),
    (FlowDPOConfig, "logit_mean", NAN, "logit_mean: expected a finite number, got nan"),
    (FlowDPOConfig, "weight_decay", INF, "weight_decay must be >= 0 and finite"),
    (FlowDPOConfig, "sft_weight", INF, "sft_weight must be >= 0 and finite"),
    (FlowDPOConfig, "max_grad_norm", INF, "max_grad_norm must be > 0 and finite, or null"),
    (PretrainPartsConfig, "objects", 0, "objects: expected an integer >= 1, got 0"),
    (PretrainPartsConfig, "heads", 3, r"hidden \(64\) must be divisible by heads \(3\)"),
    (PretrainPartsConfig, "depth", 1, "depth must be >= 2"),
    (PreparePartsConfig, "image_size", 0, "image_size: expected an integer >= 1, got 0"),
    (RolloutPartsConfig, "batch_size", 0, "batch_size: expected an integer >= 1, got 0"),
    (RolloutPartsConfig, "guidance", -1.0, "guidance: expected a finite number >= 0"),
    (RolloutPartsConfig, "guidance", INF, "guidance: expected a finite number >= 0, got inf"),
    (RolloutPartsConfig, "iteration", -1, "iteration: expected an integer >= 0"),
    (EvaluatePartsConfig, "samples_per_condition", 0, "samples_per_condition: expected an integer >= 1"),
    (EvaluatePartsConfig, "steps", 0, "steps: expected an integer >= 1"),
    (EvaluatePartsConfig, "batch_size", 0, "batch_size: expected an integer >= 1"),
    (EvaluatePartsConfig, "voxel_resolution", 0, "voxel_resolution: expected an integer >= 1"),
    (EvaluatePartsConfig, "guidance", NAN, "guidance: expected a finite number >= 0, got nan"),
    (EvaluatePartsConfig, "threshold", -0.1, "threshold: expected a finite number >= 0"),
    (EvaluatePartsConfig, "guard_tolerance", INF, "guard_tolerance: expected a finite number >= 0"),
    (EvaluatePartsConfig, "gallery", -1, "gallery: expected an integer >= 0"),
    (PenetrationConfig, "min_volume", INF, "min_volume must be > 0 and finite"),
    (MinePairsConfig, "similar_tolerance", -0.1, "similar_tolerance: expected a finite number >= 0"),
    (MinePairsConfig, "similar_tolerance", NAN, "similar_tolerance: expected a finite number >= 0"),
    (MinePairsConfig, "similar_key", "", "similar_key: expected a non-empty key name or null"),
    (PlannerSamplingConfig, "batch_size", 0, "batch_size: expected an integer >= 1, got 0"),
    (PlannerSFTConfig, "weight_decay", INF, "weight_decay: expected a finite number >= 0, got inf"),
    (PlannerSFTConfig, "warmup_steps", -1, "warmup_steps: expected an integer >= 0, got -1"),
    (ShardPlannerConfig, "num_shards", 0, "num_shards: expected an integer >= 1, got 0"),
    (EvaluatePlannerConfig, "min_improvement", 2.0, r"min_improvement: expected a finite number in \[-1, 1\]"),
    (EvaluatePlannerConfig, "min_improvement", NAN, r"min_improvement: expected a finite number in \[-1, 1\]"),
    (LMDPOConfig, "lr_llm", INF, "lr_llm: expected a number > 0, got inf"),
    (DiffusersEditConfig, "guidance_scale", INF, "guidance_scale must be >= 0 and finite"),
    (DiffusersEditConfig, "timeout_s", INF, "timeout_s must be > 0 and finite"),
    (ExecutorConfig, "timeout_s", INF, "timeout_s must be > 0 and finite"),
    (PartDiTConfig, "mlp_ratio", INF, "mlp_ratio must be > 0 and finite"),
    (FlowMatchingConfig, "lr", NAN, "lr must be > 0 and finite, got nan"),
    (FlowMatchingConfig, "max_grad_norm", INF, "max_grad_norm must be > 0 and finite"),
    (FlowMatchingConfig, "weight_decay", INF, "weight_decay must be >= 0 and finite"),
]


@pytest.mark.parametrize(
    "cls, name, value, message", BAD_VALUES, ids=[f"{c.__name__}.{n}={v}" for c, n, v, _ in BAD_VALUES]
)
def test_bad_value_is_refused_naming_the_field(cls, name, value, message):
    with pytest.raises(ConfigError, match=rf"^section: {message}"):
        cls.from_dict({name: value}, where="section")


def test_run_stage_checks_values_before_work():
    with pytest.raises(
        ConfigError, match=r"^shard-planner config: num_shards: expected an integer >= 1, got 0"
    ):
        run_stage("shard-planner", {"num_shards": 0}, inputs={}, outputs={})
    with pytest.raises(ConfigError, match=r"^register-model config: model_name: expected a non-empty"):
        run_stage("register-model", {"model_name": ""}, inputs={}, outputs={})
    with pytest.raises(ConfigError, match=r"^train-flow-dpo config: loss: 'nope'"):
        run_stage("train-flow-dpo", {"loss": "nope"}, inputs={}, outputs={})


# --- the registered model and its aliases ---------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model_name": ""}, "model_name: expected a non-empty registered model name"),
        ({"model_name": "   "}, "model_name: expected a non-empty registered model name"),
        ({"model_name": " m"}, "model_name: expected a non-empty .* without surrounding spaces"),
        ({"model_name": "team/model"}, "model_name: expected an MLflow registered model name: no"),
        ({"model_name": "a:b"}, "model_name: expected an MLflow registered model name: no"),
        ({"model_name": "a@b"}, "model_name: expected an MLflow registered model name: no"),
        ({"model_name": ".."}, "model_name: expected an MLflow registered model name: no"),
        ({"aliases": [""]}, r"aliases\[0\]: expected an MLflow alias \(1-255 letters"),
        ({"aliases": ["ok", "not ok"]}, r"aliases\[1\]: expected an MLflow alias"),
        ({"aliases": ["a", "a"]}, r"aliases: expected each alias once, got \['a', 'a'\]"),
        ({"aliases": ["latest"]}, r"aliases\[0\]: 'latest' is reserved by MLflow"),
        ({"aliases": ["V2"]}, r"aliases\[0\]: 'V2' is reserved by MLflow"),
        ({"champion_alias": ""}, "champion_alias: expected an MLflow alias"),
        (
            {"aliases": ["candidate", "champion"]},
            (
                "aliases: contains the champion alias 'champion'; .* the champion would move "
                "past a failed evaluation gate. Expected it only as champion_alias"
            ),
        ),
        (
            {"aliases": ["best"], "champion_alias": "best"},
            "aliases: contains the champion alias 'best'",
        ),
    ],
)
def test_register_names_and_aliases(data, message):
    with pytest.raises(ConfigError, match=rf"^register: {message}"):
        RegisterModelConfig.from_dict(data, where="register")


def test_register_valid_names_still_load():
    cfg = RegisterModelConfig.from_dict(
        {"model_name": "genalign.part-dpo_v2", "aliases": ["candidate", "staging-1"]}
    )
    assert cfg.aliases == ["candidate", "staging-1"] and cfg.champion_alias == "champion"
    assert RegisterModelConfig.from_dict({"aliases": []}).aliases == []


def test_empty_register_model_name_fails_at_load():
    with pytest.raises(ConfigError, match=r"tiny.yaml: register: model_name: expected a non-empty"):
        load_preset("part-dpo", "tiny", ['register.model_name=""'])
    with pytest.raises(ConfigError, match="would move past a failed evaluation gate"):
        load_preset("planner-dpo", "tiny", ["register.aliases=[candidate, champion]"])


# --- model references -----------------------------------------------------------------


def test_tiny_archs_are_the_resolver_builders():
    from genalign.models.refs import TINY_BUILDERS

    assert sorted(TINY_ARCHS) == sorted(TINY_BUILDERS)


def test_resolver_raises_the_same_error_class():
    from genalign.models import refs

    assert refs.ModelRefError is ModelRefError


@pytest.mark.parametrize(
    "ref, fields",
    [
        ("tiny://part-generator", {"scheme": "tiny", "arch": "part-generator"}),
        ("hf://Qwen/Qwen2-VL-2B-Instruct", {"scheme": "hf", "repo": "Qwen/Qwen2-VL-2B-Instruct", "revision": None}),
        ("hf://gpt2@main", {"scheme": "hf", "repo": "gpt2", "revision": "main"}),
        ("hf://org/repo@refs/pr/1", {"scheme": "hf", "repo": "org/repo", "revision": "refs/pr/1"}),
        ("s3://bucket/models/base", {"scheme": "s3", "bucket": "bucket", "key": "models/base"}),
        ("mlflow://models/genalign-part-dpo@champion", {"scheme": "mlflow", "name": "genalign-part-dpo", "alias": "champion", "version": None}),
        ("mlflow://models/genalign-part-dpo/3", {"scheme": "mlflow", "name": "genalign-part-dpo", "alias": None, "version": "3"}),
        ("/models/base", {"scheme": "path", "path": "/models/base"}),
        ("relative/dir", {"scheme": "path", "path": "relative/dir"}),
    ],
)
def test_parse_model_ref(ref, fields):
    parsed = parse_model_ref(ref)
    assert parsed.ref == ref
    assert {k: getattr(parsed, k) for k in fields} == fields
    check_model_ref(ref, where="model")


@pytest.mark.parametrize(
    "ref, message",
    [
        ("", "expected a model reference .*tiny://<arch>.*, got ''"),
        ("  ", "expected a model reference"),
        (" tiny://part-generator", "expected a model reference without surrounding spaces"),
        ("tiny://nope", re.escape("tiny://nope: unknown tiny architecture; valid: ['part-generator', 'part-generator-pretrained', 'tiny-qwen2-vl']")),
        ("tiny://", "unknown tiny architecture"),
        ("mlflow://models/only-a-name", "expected mlflow://models/<name>@<alias> or mlflow://models/<name>/<version>"),
        ("mlflow://models/m@", "expected mlflow://models/<name>@<alias>"),
        ("mlflow://models/m/v1", "expected mlflow://models/<name>@<alias>"),
        ("mlflow://m@champion", "expected mlflow://models/<name>@<alias>"),
        ("s3://bucket", r"expected s3://<bucket>/<key> with both parts non-empty"),
        ("s3:///key", r"expected s3://<bucket>/<key>"),
        ("s3://bucket/", r"expected s3://<bucket>/<key>"),
        ("hf://", re.escape("expected hf://<org>/<repo>[@<revision>]")),
        ("hf://org/", re.escape("expected hf://<org>/<repo>[@<revision>]")),
        ("hf://a/b/c", re.escape("expected hf://<org>/<repo>[@<revision>]")),
        ("hf://org/repo@", re.escape("expected hf://<org>/<repo>[@<revision>]")),
        ("ftp://x/y", re.escape("ftp://x/y: unknown scheme; use a path, s3://, mlflow://, hf:// or tiny://")),
    ],
)
def test_malformed_model_refs(ref, message):
    with pytest.raises(ModelRefError, match=message):
        parse_model_ref(ref)
    with pytest.raises(ValueError, match=rf"^model: (.*: )?{message}"):
        check_model_ref(ref, where="model")


def test_check_model_ref_extra_words():
    check_model_ref("pretrain", where="base_model", extra=("pretrain",))
    with pytest.raises(ValueError, match=r"^base_model: .*unknown scheme.*; or one of \['pretrain'\]"):
        check_model_ref("ftp://x", where="base_model", extra=("pretrain",))


def test_resolver_refuses_what_the_config_check_refuses(tmp_path):
    from genalign.models.refs import resolve

    for ref in ("hf://", "s3://bucket", "", "tiny://nope"):
        with pytest.raises(ModelRefError):
            resolve(ref, cache=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "cls, name, where",
    [
        (PreparePartsConfig, "base_model", "prepare"),
        (PreparePlannerConfig, "base_model", "prepare"),
        (CriticConfig, "judge_model", "label.critic"),
        (DiffusersEditConfig, "model", "execute.diffusers_edit"),
    ],
)
@pytest.mark.parametrize(
    "ref", ["tiny://nope", "mlflow://models/x", "hf://", "s3://bucket", "ftp://x", ""]
)
def test_model_reference_fields_check_syntax(cls, name, where, ref):
    with pytest.raises(ConfigError, match=rf"^{re.escape(where)}: {name}: "):
        cls.from_dict({name: ref}, where=where)


def test_model_reference_fields_in_presets():
    assert load_preset("part-dpo", "tiny")["prepare"]["base_model"] == "tiny://part-generator-pretrained"
    args = load_preset("part-dpo", "tiny", ["prepare.base_model=tiny://part-generator"])
    assert args["prepare"]["base_model"] == "tiny://part-generator"
    with pytest.raises(ConfigError, match=r"tiny.yaml: prepare: base_model: tiny://nope: unknown tiny"):
        load_preset("part-dpo", "tiny", ["prepare.base_model=tiny://nope"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: prepare: base_model: mlflow://models/x: expected"):
        load_preset("planner-dpo", "tiny", ["prepare.base_model=mlflow://models/x"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: evaluate.critic: judge_model: hf://: expected"):
        load_preset("planner-dpo", "tiny", ["evaluate.critic.judge_model=hf://"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: execute.diffusers_edit: model: s3://b: expected"):
        load_preset("planner-dpo", "tiny", ["execute.diffusers_edit.model=s3://b"])


# --- YAML files -----------------------------------------------------------------------


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  train_conditions: 4\nrollout: {steps: 5\ntrain: {}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}:4: not valid YAML: expected ','"):
        load_preset("part-dpo", str(bad))
    bad.write_text("prepare:\n  seed: 1\n   image_size: 32\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}:3: not valid YAML: "):
        load_yaml(bad)


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("# a comment\n- prepare\n- train\n")
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(bad))}:2: expected a mapping \(key: value\) at the top level, got list"
    ):
        load_preset("part-dpo", str(bad))
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert load_yaml(empty) == {}
