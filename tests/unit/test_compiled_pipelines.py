"""A cluster profile lands on the right tasks of the IR's Kubernetes platform spec (that
the checked-in compiled pipelines are current is a contract test: tests/contracts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from genalign.cli import main

ROOT = Path(__file__).resolve().parents[2]


PROFILE = """\
namespace: team-a
service_account: pipeline-runner
tracking_configmap: mlflow-env
s3_secret: store-credentials
s3_secret_keys: {access-key: AWS_ACCESS_KEY_ID, secret-key: AWS_SECRET_ACCESS_KEY, endpoint: MLFLOW_S3_ENDPOINT_URL}
mlflow_secret: mlflow-user
mlflow_secret_keys: {user: MLFLOW_TRACKING_USERNAME, pass: MLFLOW_TRACKING_PASSWORD}
model_cache_pvc: model-cache
model_cache_mount: /cache
gpu:
  resource: nvidia.com/gpu
  node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
  tolerations:
    - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
    - {key: dedicated, operator: Equal, value: ml, effect: NoExecute}
stages:
  rollout-parts: {gpus: 1, cpu: 8, memory: 64Gi}
  train-flow-dpo: {gpus: 4, cpu: "32", memory: 256Gi, nodes: 1}
  score-samples: {cpu: 16, memory: 32Gi}
"""


@pytest.fixture(scope="module")
def compiled_with_profile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profile")
    (tmp / "cluster.yaml").write_text(PROFILE)
    out = tmp / "part-dpo.yaml"
    assert main(["compile", "part-dpo", "--preset", "tiny", "--profile", str(tmp / "cluster.yaml"), "-o", str(out)]) == 0
    pipeline_spec, platform_spec = yaml.safe_load_all(out.read_text())
    return pipeline_spec, platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


# the tasks that run a stage (score-samples runs `score`, mine-pairs `pairs`, register-model
# `register`); the exit handler's close-tracking runs none
STAGE_TASKS = ("prepare-parts", "rollout-parts", "score-samples", "mine-pairs", "train-flow-dpo",
               "evaluate-parts", "register-model")


@pytest.mark.parametrize("task", [*STAGE_TASKS, "close-tracking"])
def test_every_task_gets_the_tracking_configmap_and_store_secret(compiled_with_profile, task):
    _, platform = compiled_with_profile
    k8s = platform[f"exec-{task}"]
    (configmap,) = k8s["configMapAsEnv"]
    assert configmap["configMapName"] == "mlflow-env"
    assert configmap["keyToEnv"] == [{"configMapKey": "MLFLOW_TRACKING_URI", "envVar": "MLFLOW_TRACKING_URI"}]
    secrets = {s["secretName"]: {e["secretKey"]: e["envVar"] for e in s["keyToEnv"]} for s in k8s["secretAsEnv"]}
    assert secrets == {
        "store-credentials": {
            "access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY", "endpoint": "MLFLOW_S3_ENDPOINT_URL",
        },
        # the pipelines' MLflow user, for a tracking server with MLflow's basic-auth app
        "mlflow-user": {"user": "MLFLOW_TRACKING_USERNAME", "pass": "MLFLOW_TRACKING_PASSWORD"},
    }


def test_every_executor_gets_the_mlflow_user_and_the_label_the_network_policy_admits(compiled_with_profile):
    """Every pod of the run that runs code, stage or not: k8s/base/mlflow-networkpolicy.yaml
    admits only pods with this label to the MLflow server."""
    pipeline_spec, platform = compiled_with_profile
    executors = pipeline_spec["deploymentSpec"]["executors"]
    assert set(platform) == set(executors) and len(executors) == len(STAGE_TASKS) + 1
    for name, k8s in platform.items():
        assert k8s["podMetadata"] == {"labels": {"genalign.io/mlflow-client": "true"}}, name
        assert "mlflow-user" in {s["secretName"] for s in k8s["secretAsEnv"]}, name


@pytest.mark.parametrize("task", STAGE_TASKS)
def test_every_stage_task_mounts_the_model_cache(compiled_with_profile, task):
    pipeline_spec, platform = compiled_with_profile
    (pvc,) = platform[f"exec-{task}"]["pvcMount"]
    assert (pvc["constant"], pvc["mountPath"]) == ("model-cache", "/cache")
    container = pipeline_spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]
    assert {"name": "GENALIGN_CACHE", "value": "/cache"} in container["env"]


def test_the_exit_handler_task_gets_no_cache_and_no_resources(compiled_with_profile):
    pipeline_spec, platform = compiled_with_profile
    assert "pvcMount" not in platform["exec-close-tracking"]
    container = pipeline_spec["deploymentSpec"]["executors"]["exec-close-tracking"]["container"]
    assert "env" not in container and "resources" not in container


@pytest.mark.parametrize("task, gpus, cpu, memory", [
    ("rollout-parts", "1", "8", "64Gi"),
    ("train-flow-dpo", "4", "32", "256Gi"),
])
def test_gpu_tasks_get_accelerators_resources_node_selector_and_tolerations(
    compiled_with_profile, task, gpus, cpu, memory
):
    pipeline_spec, platform = compiled_with_profile
    resources = pipeline_spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == gpus
    assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"] == cpu
    assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == memory
    k8s = platform[f"exec-{task}"]
    assert k8s["nodeSelector"] == {"labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}
    assert k8s["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
    ]


def test_cpu_tasks_get_resources_but_no_gpu_scheduling(compiled_with_profile):
    pipeline_spec, platform = compiled_with_profile
    executors = pipeline_spec["deploymentSpec"]["executors"]
    score = executors["exec-score-samples"]["container"]["resources"]
    assert "accelerator" not in score
    assert (score["resourceCpuRequest"], score["resourceMemoryLimit"]) == ("16", "32Gi")
    for task in ("score-samples", "prepare-parts", "mine-pairs", "register-model", "close-tracking"):
        assert "nodeSelector" not in platform[f"exec-{task}"] and "tolerations" not in platform[f"exec-{task}"]
    assert "resources" not in executors["exec-prepare-parts"]["container"]


def test_without_a_profile_there_is_no_platform_spec():
    docs = list(yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "part-dpo.yaml").read_text()))
    assert len(docs) == 1
    assert "resources" not in docs[0]["deploymentSpec"]["executors"]["exec-train-flow-dpo"]["container"]


def test_the_example_profile_of_k8s_compiles(tmp_path):
    out = tmp_path / "part-dpo.yaml"
    assert main(["compile", "part-dpo", "--profile", str(ROOT / "k8s" / "cluster-profile.example.yaml"), "-o", str(out)]) == 0
    _, platform_spec = yaml.safe_load_all(out.read_text())
    train = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-flow-dpo"]
    assert [s["secretName"] for s in train["secretAsEnv"]] == ["genalign-s3", "genalign-mlflow-pipeline"]
    assert train["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}


def test_a_profile_without_an_mlflow_secret_still_labels_every_pod(tmp_path):
    """A tracking server without authentication: no credentials, the NetworkPolicy still applies."""
    profile = tmp_path / "cluster.yaml"
    profile.write_text("mlflow_secret: null\n")
    out = tmp_path / "part-dpo.yaml"
    assert main(["compile", "part-dpo", "--preset", "tiny", "--profile", str(profile), "-o", str(out)]) == 0
    _, platform_spec = yaml.safe_load_all(out.read_text())
    for name, k8s in platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        assert [s["secretName"] for s in k8s["secretAsEnv"]] == ["genalign-s3"], name
        assert k8s["podMetadata"]["labels"] == {"genalign.io/mlflow-client": "true"}, name


@pytest.mark.parametrize("stages, message", [
    ("train: {gpus: 1}", "stages: unknown stage(s) ['train']; valid stages are ['accumulate-pairs', 'evaluate-hand-pose'"),
    ("prepare-parts: {gpus: 1, nodes: 2}", "prepare-parts.nodes: 2: prepare-parts run(s) in one process"),
])
def test_compile_rejects_a_profile_it_cannot_honour(tmp_path, capsys, stages, message):
    profile = tmp_path / "cluster.yaml"
    profile.write_text(f"stages:\n  {stages}\n")
    assert main(["compile", "part-dpo", "--profile", str(profile), "-o", str(tmp_path / "p.yaml")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_planner_dpo_unrolls_one_round_per_shard(tmp_path):
    """tiny: three iterations; single-round: the same pipeline with one."""
    for preset, rounds in (("tiny", 3), ("single-round", 1)):
        out = tmp_path / f"{preset}.yaml"
        assert main(["compile", "planner-dpo", "--preset", preset, "-o", str(out)]) == 0
        spec = next(yaml.safe_load_all(out.read_text()))
        tasks = [n for dag in [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
                 for n in dag["tasks"]]
        assert sum(n.startswith("train-planner") for n in tasks) == rounds, preset
        assert sum(n.startswith("evaluate-planner") for n in tasks) == rounds + 1, preset  # + the base


def test_a_stage_on_several_nodes_is_run_by_its_trainjob_launcher(tmp_path):
    """k8s/cluster-profile.multinode.example.yaml: train-flow-dpo on 2 nodes of 8 GPUs is
    the launcher task, a small pod with the TrainJob's settings compiled in; the exit
    handler also deletes the run's TrainJobs."""
    out = tmp_path / "part-dpo.yaml"
    profile = ROOT / "k8s" / "cluster-profile.multinode.example.yaml"
    assert main(["compile", "part-dpo", "--preset", "tiny", "--profile", str(profile), "-o", str(out)]) == 0
    pipeline_spec, platform = yaml.safe_load_all(out.read_text())
    dag = pipeline_spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    tasks = pipeline_spec["components"][dag]["dag"]["tasks"]
    assert "train-flow-dpo" not in tasks and "train-flow-dpo-trainjob" in tasks
    settings = tasks["train-flow-dpo-trainjob"]["inputs"]["parameters"]["trainjob"]["runtimeValue"]["constant"]
    assert (settings["nodes"], settings["gpus"], settings["runtime"]) == (2, 8, "torch-distributed")
    assert settings["image"].startswith("ghcr.io/genalign/genalign-cuda:")
    assert tasks["evaluate-parts"]["inputs"]["artifacts"]["adapter"]["taskOutputArtifact"]["producerTask"] == (
        "train-flow-dpo-trainjob")
    executor = pipeline_spec["deploymentSpec"]["executors"]["exec-train-flow-dpo-trainjob"]["container"]
    assert "accelerator" not in executor.get("resources", {})  # the nodes get the GPUs, not the launcher
    exit_task = pipeline_spec["root"]["dag"]["tasks"]["close-tracking-and-sweep"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "pvcMount" in k8s["exec-train-flow-dpo-trainjob"]  # outputs kept on the model cache
