"""The TrainJob genalign builds, checked offline: against the vendored CRD schema of
Kubeflow Trainer v2.3.0 (unknown fields refused) and the Trainer's API models, and for
the name, labels, env, resources, placement and command the launcher promises."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from fake_kubernetes import strict

from genalign.config.base import ConfigError
from genalign.trainjobs import (
    CRD_SCHEMA,
    TrainJobSettings,
    launch_trainjob,
    load_crd_schema,
    trainjob_manifest,
    trainjob_name,
)
from genalign.trainjobs.manifest import CONFIG_ANNOTATION, NAME_MAX, stage_args
from genalign.trainjobs.settings import DEADLINE_MARGIN_S

ROOT = Path(__file__).resolve().parents[3]
RUN = "7f0c2a9e-3d4b-4c1e-9a55-0b6f1d2e3c4a"  # the shape of a KFP run id
TASK = "train-flow-dpo-trainjob"
GPU = {
    "image": "ghcr.io/genalign/genalign-cuda:0.1.0", "namespace": "genalign", "nodes": 2, "gpus": 8,
    "cpu": "64", "memory": "512Gi", "node_selector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "model_cache_pvc": "genalign-model-cache",
}
CPU = {"image": "ghcr.io/genalign/genalign-cpu:0.1.0", "namespace": "genalign", "nodes": 3, "cpu": "4",
       "memory": "8Gi", "node_selector": {"nvidia.com/gpu.present": "true"}}
CONFIG = {"beta": 1e-05, "steps": 3, "lora": {"rank": 4, "targets": ["to_q", "to_v"]}}


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft7Validator(strict(load_crd_schema()))


def manifest(settings=GPU, **overrides):
    kwargs = {
        "inputs": {"model": "s3://genalign/runs/r/model", "pairs": "s3://genalign/runs/r/pairs"},
        "outputs": {"adapter": "s3://genalign/runs/r/adapter"},
        "tracking": {"experiment": "part-dpo", "pipeline_run": RUN},
        "settings": TrainJobSettings.from_dict(settings), "run_id": RUN, "task": TASK,
    }
    return trainjob_manifest("train-flow-dpo", CONFIG, **(kwargs | overrides))


def pod_of(job):
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    return replicated["template"]["spec"]["template"]


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("settings", [GPU, CPU], ids=["gpu", "cpu"])
def test_manifest_validates_against_the_crd_schema_and_the_api_models(validator, settings):
    from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob

    job = manifest(settings)
    assert sorted(e.message for e in validator.iter_errors(job)) == []
    # the models ignore unknown keys; a lossless round trip proves there are none
    assert TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job


def test_the_strict_schema_refuses_a_misspelt_field(validator):
    job = manifest()
    job["spec"]["trainer"]["numNode"] = job["spec"]["trainer"].pop("numNodes")
    assert [e.message for e in validator.iter_errors(job)] == [
        "Additional properties are not allowed ('numNode' was unexpected)"]
    job = manifest()
    job["spec"]["activeDeadlineSeconds"] = 0
    assert [e.message for e in validator.iter_errors(job)] == ["0 is less than the minimum of 1"]


def test_the_vendored_schema_names_its_source():
    text = CRD_SCHEMA.read_text()
    assert "kubeflow/trainer" in text and "v2.3.0" in text
    assert "manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml" in text


# --------------------------------------------------------------------------- name and labels


def test_name_is_a_short_rfc1035_label_fixed_by_task_and_run():
    name = trainjob_name(TASK, RUN)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= NAME_MAX
    assert name.startswith("train-flow-dpo-trainjob-")
    assert trainjob_name(TASK, RUN) == name
    assert trainjob_name(TASK, RUN.replace("7", "8")) != name
    assert trainjob_name("train-planner-trainjob-2", RUN) != trainjob_name("train-planner-trainjob-3", RUN)
    for task in ("9-Train_Planner.Trainjob" * 5, "---", "x"):
        other = trainjob_name(task, RUN)
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", other) and len(other) <= NAME_MAX, other


def test_labels_name_the_run_the_task_and_the_project():
    job = manifest()
    assert job["metadata"]["name"] == trainjob_name(TASK, RUN)
    assert job["metadata"]["namespace"] == "genalign"
    assert job["metadata"]["labels"] == {
        "genalign.io/pipeline-run": RUN, "genalign.io/task": TASK,
        "app.kubernetes.io/part-of": "genalign", "app.kubernetes.io/component": "training",
    }
    assert pod_of(job)["metadata"]["labels"] == {"genalign.io/mlflow-client": "true"}
    with pytest.raises(ConfigError, match="label value"):
        manifest(task="not a label value")


# --------------------------------------------------------------------------- the trainer


def test_runtime_nodes_processes_and_deadline():
    spec = manifest()["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    assert spec["trainer"]["numNodes"] == 2 and spec["trainer"]["numProcPerNode"] == 8
    assert spec["trainer"]["image"] == GPU["image"]
    assert spec["activeDeadlineSeconds"] == 24 * 3600 + DEADLINE_MARGIN_S
    spec = manifest({**CPU, "runtime": "my-torch", "deadline_s": 3600})["spec"]
    assert spec["runtimeRef"]["name"] == "my-torch"
    assert spec["trainer"]["numProcPerNode"] == 1 and spec["activeDeadlineSeconds"] == 3600


def test_env_comes_from_the_tracking_configmap_and_the_secrets():
    env = {e["name"]: e for e in manifest()["spec"]["trainer"]["env"]}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"] == {
        "configMapKeyRef": {"name": "genalign-tracking", "key": "MLFLOW_TRACKING_URI"}}
    refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in env.items() if "secretKeyRef" in v.get("valueFrom", {})}
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "genalign-s3", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "genalign-s3", "key": "AWS_SECRET_ACCESS_KEY"},
        "MLFLOW_S3_ENDPOINT_URL": {"name": "genalign-s3", "key": "MLFLOW_S3_ENDPOINT_URL"},
        "MLFLOW_TRACKING_USERNAME": {"name": "genalign-mlflow-pipeline", "key": "username"},
        "MLFLOW_TRACKING_PASSWORD": {"name": "genalign-mlflow-pipeline", "key": "password"},
    }
    assert env["GENALIGN_CACHE"]["value"] == "/mnt/model-cache"
    # torch-distributed sets the PET_* rendezvous variables; setting one is an error
    assert not [name for name in env if name.startswith("PET_")]
    bare = {**CPU, "tracking_configmap": None, "s3_secret": None, "mlflow_secret": None}
    assert [e["name"] for e in manifest(bare)["spec"]["trainer"]["env"]] == ["PYTHONUNBUFFERED"]


def test_resources_are_requests_equal_to_limits_with_gpus_as_the_gpu_resource():
    gpu = manifest()["spec"]["trainer"]["resourcesPerNode"]
    assert gpu["requests"] == gpu["limits"] == {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"}
    cpu = manifest(CPU)["spec"]["trainer"]["resourcesPerNode"]
    assert cpu["requests"] == cpu["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert "resourcesPerNode" not in manifest({"image": "i"})["spec"]["trainer"]


def test_pods_are_placed_mounted_and_secured_as_the_example():
    """The runtime patch of k8s/trainjob.example.yaml: GPU placement, model cache, /dev/shm,
    non-root security contexts; placement only with GPUs."""
    (example,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "trainjob.example.yaml").read_text()) if d]
    want = pod_of(example)["spec"]
    pod = pod_of(manifest())["spec"]
    for key in ("nodeSelector", "tolerations", "securityContext"):
        assert pod[key] == want[key], key
    (container,) = pod["containers"]
    (want_container,) = want["containers"]
    assert container["name"] == want_container["name"] == "node"
    assert container["securityContext"] == want_container["securityContext"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"model-cache": "/mnt/model-cache", "dshm": "/dev/shm", "stage-config": "/etc/genalign/stage"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "genalign-model-cache"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    assert pod_of(manifest({**GPU, "shm_size": "64Gi"}))["spec"]["volumes"][1]["emptyDir"]["sizeLimit"] == "64Gi"
    cpu = pod_of(manifest(CPU))["spec"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    assert "model-cache" not in {v["name"] for v in cpu["volumes"]}


# --------------------------------------------------------------------------- the command


def test_command_runs_the_stage_under_torchrun_on_the_artifacts_uris():
    trainer = manifest()["spec"]["trainer"]
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"] == [
        "--no-python", "genalign", "stage", "train-flow-dpo", "--config", "/etc/genalign/stage/config.yaml",
        "--in", "model=s3://genalign/runs/r/model", "--in", "pairs=s3://genalign/runs/r/pairs",
        "--out", "adapter=s3://genalign/runs/r/adapter",
        "--experiment", "part-dpo", "--pipeline-run", RUN,
    ]
    assert "--experiment" not in manifest(tracking=None)["spec"]["trainer"]["args"]
    assert stage_args("s", inputs={"many": ["s3://b/1", "s3://b/2"]}, outputs={}, params={"phase": 2.0},
                      tracking=None)[6:] == ["--in", "many=s3://b/1", "--in", "many=s3://b/2", "--param", "phase=2"]


def test_config_reaches_the_pods_as_an_annotation_the_config_file_projects():
    pod = pod_of(manifest())
    # PyYAML, which --config reads with, gives back the same values (JSON text would not: 1e-05)
    assert yaml.safe_load(pod["metadata"]["annotations"][CONFIG_ANNOTATION]) == CONFIG
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "stage-config"]
    (item,) = volume["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == f"metadata.annotations['{CONFIG_ANNOTATION}']"
    args = manifest()["spec"]["trainer"]["args"]
    assert args[args.index("--config") + 1] == f"/etc/genalign/stage/{item['path']}"
    with pytest.raises(ConfigError, match="annotation"):
        trainjob_manifest("train-flow-dpo", {"blob": "x" * 300_000}, inputs={}, outputs={},
                          settings=TrainJobSettings(image="i"), run_id=RUN, task=TASK)


# --------------------------------------------------------------------------- settings


def test_settings_from_the_example_profile():
    from genalign.config.cluster import load_profile

    profile = load_profile(ROOT / "k8s" / "cluster-profile.example.yaml").to_dict()
    profile["stages"]["train-flow-dpo"]["nodes"] = 2
    settings = TrainJobSettings.from_profile(profile, "train-flow-dpo", image="img")
    assert (settings.nodes, settings.gpus, settings.cpu, settings.memory) == (2, 8, "64", "512Gi")
    assert settings.runtime == "torch-distributed" and settings.namespace == "genalign"
    assert settings.node_selector == {"nvidia.com/gpu.present": "true"}
    assert settings.model_cache_pvc == "genalign-model-cache"
    args = settings.to_args()  # what the pipeline compiles in: no nulls
    assert TrainJobSettings.from_dict(args) == settings
    assert "deadline_s" not in args and None not in args["tolerations"][0].values()
    with pytest.raises(ConfigError, match="stages has no entry for train-hand-pose"):
        TrainJobSettings.from_profile(profile, "train-hand-pose", image="img")
    with pytest.raises(ConfigError, match="unknown key"):
        TrainJobSettings.from_dict({"image": "i", "gpu": 1})


# --------------------------------------------------------------------------- refused early


class NoCluster:
    """An `api` that fails the test if it is used at all."""

    def __getattr__(self, name):
        raise AssertionError(f"the cluster was called ({name}) before the input was checked")


@pytest.mark.parametrize("stage, inputs, outputs, config, match", [
    ("score-samples", {}, {}, {}, "runs in one process"),
    ("train-flow-dpo", {"model": "s3://b/m"}, {"adapter": "s3://b/a"}, {}, "inputs"),
    ("train-flow-dpo", {"model": "s3://b/m", "pairs": "/elsewhere/pairs"}, {"adapter": "s3://b/a"}, {},
     "cannot be reached"),
    ("train-flow-dpo", {"model": "s3://b/m", "pairs": "minio://mlpipeline/p"}, {"adapter": "s3://b/a"}, {},
     "s3:// URI"),
    ("train-flow-dpo", {"model": "s3://b/m", "pairs": "s3://b/p"}, {"adapter": "s3://b/a"}, {"betta": 1},
     "unknown key"),
])
def test_bad_input_is_refused_before_the_cluster_is_called(stage, inputs, outputs, config, match):
    with pytest.raises(ConfigError, match=match):
        launch_trainjob(stage, config, inputs=inputs, outputs=outputs, job=copy.deepcopy(GPU), run_id=RUN,
                        task=TASK, api=NoCluster())
