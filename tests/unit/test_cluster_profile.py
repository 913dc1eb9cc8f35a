"""Cluster profiles (`genalign.config.cluster`): the happy path and every clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genalign.config.base import ConfigError
from genalign.config.cluster import ClusterProfile, StageResources, load_profile

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["prepare-parts", "rollout-parts", "train-flow-dpo"]

FULL = """\
namespace: team-a
service_account: pipeline-runner
tracking_configmap: genalign-tracking
s3_secret: genalign-s3
mlflow_secret: team-a-mlflow
mlflow_secret_keys: {user: MLFLOW_TRACKING_USERNAME, pass: MLFLOW_TRACKING_PASSWORD}
model_cache_pvc: genalign-model-cache
model_cache_mount: /mnt/models
trainer_runtime: torch-distributed
gpu:
  resource: amd.com/gpu
  node_selector: {gpu: "true", pool: training}
  tolerations:
    - {key: amd.com/gpu, operator: Exists, effect: NoSchedule}
stages:
  rollout-parts: {gpus: 1, cpu: 8, memory: 64Gi}
  train-flow-dpo: {gpus: 8, cpu: 500m, memory: 512Gi, nodes: 2}
  prepare-parts: {cpu: 0.5}
"""


def write(tmp_path, text: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def test_full_profile_loads_with_quantities_as_strings(tmp_path):
    profile = load_profile(write(tmp_path, FULL), stages=STAGES)
    assert profile.namespace == "team-a"
    assert profile.gpu.resource == "amd.com/gpu"
    assert profile.gpu.node_selector == {"gpu": "true", "pool": "training"}
    assert profile.gpu.tolerations[0].operator == "Exists"
    assert profile.stages["rollout-parts"] == StageResources(gpus=1, cpu="8", memory="64Gi")
    assert profile.stages["train-flow-dpo"] == StageResources(gpus=8, cpu="500m", memory="512Gi", nodes=2)
    assert profile.stages["prepare-parts"].cpu == "0.5"
    assert (profile.model_cache_mount, profile.trainer_runtime) == ("/mnt/models", "torch-distributed")
    assert profile.mlflow_secret == "team-a-mlflow"
    assert profile.mlflow_secret_keys == {"user": "MLFLOW_TRACKING_USERNAME", "pass": "MLFLOW_TRACKING_PASSWORD"}
    # the pipelines receive plain JSON-able data
    data = json.loads(json.dumps(profile.to_dict()))
    assert data["stages"]["train-flow-dpo"]["gpus"] == 8
    assert data["gpu"]["tolerations"] == [{"key": "amd.com/gpu", "operator": "Exists", "value": None, "effect": "NoSchedule"}]


def test_empty_profile_has_the_documented_defaults(tmp_path):
    profile = load_profile(write(tmp_path, ""))
    assert profile == ClusterProfile()
    assert (profile.tracking_configmap, profile.s3_secret) == ("genalign-tracking", "genalign-s3")
    assert profile.s3_secret_keys == {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")}
    # the Secret k8s/README.md creates for the pipelines' MLflow user, as MLflow's client reads it
    assert profile.mlflow_secret == "genalign-mlflow-pipeline"
    assert profile.mlflow_secret_keys == {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
    assert profile.gpu.resource == "nvidia.com/gpu"
    assert profile.model_cache_pvc is None and profile.stages == {}


def test_the_example_profile_of_k8s_loads():
    profile = load_profile(ROOT / "k8s" / "cluster-profile.example.yaml")
    assert profile.stages["train-flow-dpo"].gpus == 8
    assert profile.gpu.tolerations[0].effect == "NoSchedule"


@pytest.mark.parametrize("text, message", [
    ("namespce: a\n", (r"unknown key\(s\) \['namespce'\]; valid keys are \['gpu', 'mlflow_secret', 'mlflow_secret_keys', "
                       r"'model_cache_mount', 'model_cache_pvc', ")),
    ("gpu: {resorce: x}\n", r"gpu: unknown key\(s\) \['resorce'\]; valid keys are \['node_selector', 'resource', 'tolerations'\]"),
    ("stages:\n  rollout-parts: {gpu: 1}\n", r"stages.rollout-parts: unknown key\(s\) \['gpu'\]; valid keys are \['cpu', 'gpus', 'memory', 'nodes'\]"),
    ("stages:\n  rollout-parts: {cpu: lots}\n", r"stages.rollout-parts: cpu: 'lots' is not a Kubernetes quantity, e.g. 8 or 500m"),
    ("stages:\n  rollout-parts: {memory: 64GB}\n", r"memory: '64GB' is not a Kubernetes quantity, e.g. 64Gi"),
    ("stages:\n  rollout-parts: {gpus: -1}\n", r"gpus must be >= 0"),
    ("stages:\n  rollout-parts: {nodes: 0}\n", r"nodes must be >= 1"),
    ("stages:\n  rollout-parts: {gpus: two}\n", r"stages.rollout-parts.gpus: expected an integer"),
    ("stages:\n  rollout-parts: 2\n", r"stages.rollout-parts: expected a mapping"),
    ("gpu:\n  tolerations: [{key: a, operator: Exists, value: b}]\n", r"value must be empty when operator is Exists"),
    ("gpu:\n  tolerations: [{key: a, operator: Like}]\n", r"gpu.tolerations\[0\].operator: 'Like' is not one of \['Equal', 'Exists'\]"),
    ("gpu:\n  node_selector: {gpu: true}\n", r"node_selector values must be strings \(quote them in YAML\)"),
    ("model_cache_mount: models\n", r"model_cache_mount must be absolute"),
    ("mlflow_secret_keys: {username: 1}\n", r"mlflow_secret_keys must map secret keys to env var names \(strings\), got \{'username': 1\}"),
    ("- a\n- b\n", r"expected a mapping at the top level, got list"),
    ("a: [\n", r"not valid YAML"),
])
def test_bad_profiles_name_the_file_and_the_field(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_profile(path, stages=STAGES)
    assert str(path) in str(info.value)


def test_unknown_stage_lists_the_valid_stages(tmp_path):
    path = write(tmp_path, "stages:\n  train: {gpus: 1}\n  rollout-parts: {gpus: 1}\n")
    with pytest.raises(ConfigError, match=r"stages: unknown stage\(s\) \['train'\]; valid stages are "
                       r"\['prepare-parts', 'rollout-parts', 'train-flow-dpo'\]"):
        load_profile(path, stages=STAGES)
    # by default: the stage table of `genalign stages`
    import re

    from genalign.config.pipelines import STAGES as ALL_STAGES

    with pytest.raises(ConfigError, match=re.escape(f"valid stages are {sorted(ALL_STAGES)}")):
        load_profile(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such cluster profile"):
        load_profile(tmp_path / "nope.yaml")


def test_every_field_has_help():
    import dataclasses

    from genalign.config import cluster

    for cls in (cluster.ClusterProfile, cluster.GPUConfig, cluster.StageResources, cluster.Toleration):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"
