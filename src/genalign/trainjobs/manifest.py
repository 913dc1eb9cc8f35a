"""The TrainJob of one training stage, built with the Kubeflow Trainer's own API models.

    manifest = trainjob_manifest(
        "train-flow-dpo", config,
        inputs={"model": "s3://b/run/model", "pairs": "s3://b/run/pairs"},
        outputs={"adapter": "s3://b/run/adapter"},
        tracking={"experiment": "part-dpo", "pipeline_run": run_id},
        settings=TrainJobSettings(image=..., nodes=2, gpus=8, ...),
        run_id=run_id, task="train-flow-dpo-trainjob",
    )

The shape is k8s/trainjob.example.yaml's: Trainer v2 API trainer.kubeflow.org/v1alpha1
(v2.3.0), runtime `torch-distributed`, `torchrun --no-python genalign stage <name> ...` on
every node. The torch plugin of the runtime sets PET_NNODES, PET_NPROC_PER_NODE,
PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which torchrun reads; the command
names no rendezvous. Inputs and outputs are the object-store URIs of the KFP artifacts
(or paths on the shared model cache), which every node reaches; only global rank 0
publishes the outputs (`genalign.stages.run_stage`).

The stage's config reaches the pods without a shared file: it is the pod annotation
`genalign.io/stage-config` (YAML), which a downward-API volume turns into the file that
`--config` reads in each pod (https://kubernetes.io/docs/concepts/workloads/pods/downward-api/).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from genalign.config.base import ConfigError
from genalign.trainjobs.settings import TrainJobSettings

API_GROUP = "trainer.kubeflow.org"
API_VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"

# The replicated job and its container in the torch-distributed runtime (kubeflow/trainer
# manifests/base/runtimes/torch_distributed.yaml at v2.3.0); a runtime given instead must
# have both, as its node pods are patched and their logs read by these names.
NODE_JOB = "node"
NODE_CONTAINER = "node"

# Labels of every TrainJob genalign makes: `sweep_trainjobs` finds a run's jobs by the first.
RUN_LABEL = "genalign.io/pipeline-run"
TASK_LABEL = "genalign.io/task"
PART_OF = ("app.kubernetes.io/part-of", "genalign")
COMPONENT = ("app.kubernetes.io/component", "training")
# The label k8s/base/mlflow-networkpolicy.yaml admits to the MLflow server's port.
MLFLOW_CLIENT_LABEL = ("genalign.io/mlflow-client", "true")
# The runtime patch's owner (RuntimePatch.manager).
PATCH_MANAGER = "genalign.io/train-launcher"

# The stage's config: a pod annotation, projected into a file by the downward API.
CONFIG_ANNOTATION = "genalign.io/stage-config"
CONFIG_VOLUME = "stage-config"
CONFIG_DIR = "/etc/genalign/stage"
CONFIG_FILE = "config.yaml"
# All annotations of an object together may hold 256 KiB (Kubernetes
# apimachinery ValidateAnnotationsSize, TotalAnnotationSizeLimitB); the rest is left to
# the controllers that annotate the pods.
CONFIG_MAX_BYTES = 192 * 1024

# uid/gid 1000 is the genalign user of the images (docker/), as in k8s/trainjob.example.yaml.
RUN_AS = 1000

# metadata.name of a TrainJob is an RFC 1035 label (the CRD's CEL rules, v2.3.0). Its
# JobSet of the same name must also leave room for the pod names JobSet derives from it:
# "<name>-node-<job index>-<pod index>-<5 random>" at most 63 characters
# (kubernetes-sigs/jobset pkg/webhooks/jobset_webhook.go, ValidateCreate), which with up to
# 9999 nodes leaves 63 - 18 = 45; 40 keeps a margin.
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 40
NAME_HASH = 10
# A label value: at most 63 characters, alphanumerics with -_. inside
# (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set).
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def trainjob_name(task: str, run_id: str) -> str:
    """The TrainJob's name: the task's name cut to fit, then a hash of (run id, task), so
    the same task of the same run always gets the same name (a retry finds its job) and
    two runs never share one."""
    digest = hashlib.sha256(f"{run_id}/{task}".encode()).hexdigest()[:NAME_HASH]
    words = re.sub(r"[^a-z0-9]+", "-", task.lower())
    words = re.sub(r"^[^a-z]+", "", words)[: NAME_MAX - NAME_HASH - 1].strip("-")
    return f"{words or 'trainjob'}-{digest}"


def check_label_value(what: str, value: str) -> str:
    if not value or not LABEL_VALUE.match(value):
        raise ConfigError(
            f"{what} {value!r} cannot be a Kubernetes label value (1-63 characters: letters, digits "
            "and -_. inside, alphanumeric at both ends)"
        )
    return value


def trainjob_labels(run_id: str, task: str) -> dict[str, str]:
    return {
        RUN_LABEL: check_label_value("run id", run_id),
        TASK_LABEL: check_label_value("task", task),
        PART_OF[0]: PART_OF[1],
        COMPONENT[0]: COMPONENT[1],
    }


def config_text(config: dict[str, Any]) -> str:
    """The config as the pods read it: YAML, which reads back the same values (JSON text
    would not: PyYAML reads `1e-05` as a string), after a JSON round trip that turns
    tuples into lists."""
    import yaml

    try:
        plain = json.loads(json.dumps(config, allow_nan=True))
    except TypeError as e:
        raise ConfigError(f"stage config: not plain data ({e})") from None
    text = yaml.safe_dump(plain, sort_keys=True)
    if len(text.encode()) > CONFIG_MAX_BYTES:
        raise ConfigError(
            f"stage config: {len(text.encode())} bytes as YAML, more than the {CONFIG_MAX_BYTES} a pod "
            "annotation may carry here; keep large data in an artifact and name it in the config"
        )
    return text


def stage_args(
    stage: str,
    *,
    inputs: dict[str, str | list[str]],
    outputs: dict[str, str],
    params: dict[str, int],
    tracking: dict[str, str] | None,
) -> list[str]:
    """torchrun's arguments: `--no-python genalign stage <stage> --config ... --in k=uri ...`;
    a fan-in input repeats `--in`, the CLI collects them into a list."""
    args = ["--no-python", "genalign", "stage", stage, "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
    for key, value in inputs.items():
        for uri in value if isinstance(value, list) else [value]:
            args += ["--in", f"{key}={uri}"]
    for key, uri in outputs.items():
        args += ["--out", f"{key}={uri}"]
    for key, value in params.items():
        args += ["--param", f"{key}={int(value)}"]
    if tracking is not None:
        args += ["--experiment", tracking["experiment"], "--pipeline-run", tracking["pipeline_run"]]
        if tracking.get("pipeline"):
            args += ["--pipeline", tracking["pipeline"]]
    return args


def _env(settings: TrainJobSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if settings.tracking_configmap:
        env.append({"name": "MLFLOW_TRACKING_URI", "valueFrom": {
            "configMapKeyRef": {"name": settings.tracking_configmap, "key": "MLFLOW_TRACKING_URI"}}})
    for secret, keys in ((settings.s3_secret, settings.s3_secret_keys),
                         (settings.mlflow_secret, settings.mlflow_secret_keys)):
        if secret:
            env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                    for key, var in keys.items()]
    if settings.model_cache_pvc:
        env.append({"name": "GENALIGN_CACHE", "value": settings.model_cache_mount})
    # Python buffers a piped stdout by the block; the launcher streams node 0's log.
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    return env


def _resources(settings: TrainJobSettings) -> dict[str, dict[str, str]] | None:
    """Per node, requests = limits (as apply_profile sets a task's); None: the cluster's defaults."""
    amounts = {k: v for k, v in (("cpu", settings.cpu), ("memory", settings.memory)) if v}
    if settings.gpus:
        amounts[settings.gpu_resource] = str(settings.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else None


def _pod_patch(settings: TrainJobSettings, config: str):
    """The runtime patch of the node pods: what they need beyond the runtime."""
    from kubeflow_trainer_api import models

    dshm: dict[str, Any] = {"medium": "Memory"}
    if settings.shm_size:
        dshm["sizeLimit"] = settings.shm_size
    volumes = [
        {"name": CONFIG_VOLUME, "downwardAPI": {"items": [
            {"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]}},
        {"name": "dshm", "emptyDir": dshm},
    ]
    mounts = [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    if settings.model_cache_pvc:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": settings.model_cache_pvc}})
        mounts.append({"name": "model-cache", "mountPath": settings.model_cache_mount})
    gpu = settings.gpus > 0
    tolerations = [{k: v for k, v in t.to_dict().items() if v is not None} for t in settings.tolerations]
    return models.TrainerV1alpha1PodTemplatePatch(
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            labels=dict([MLFLOW_CLIENT_LABEL]), annotations={CONFIG_ANNOTATION: config}),
        spec=models.TrainerV1alpha1PodSpecPatch(
            node_selector=dict(settings.node_selector) if gpu and settings.node_selector else None,
            tolerations=[models.IoK8sApiCoreV1Toleration.from_dict(t) for t in tolerations] if gpu and tolerations else None,
            # Non-root, as k8s/trainjob.example.yaml; the root file system stays writable
            # (DeepSpeed JIT-compiles its ops into ~/.cache/torch_extensions).
            security_context=models.IoK8sApiCoreV1PodSecurityContext.from_dict({
                "runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                "seccompProfile": {"type": "RuntimeDefault"}}),
            volumes=[models.IoK8sApiCoreV1Volume.from_dict(v) for v in volumes],
            containers=[models.TrainerV1alpha1ContainerPatch(
                name=NODE_CONTAINER,
                security_context=models.IoK8sApiCoreV1SecurityContext.from_dict(
                    {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}),
                volume_mounts=[models.IoK8sApiCoreV1VolumeMount.from_dict(m) for m in mounts],
            )],
        ),
    )


def _runtime_patch(settings: TrainJobSettings, config: str):
    """The patch of the runtime's JobSet that reaches the pods of its replicated job `node`."""
    from kubeflow_trainer_api import models

    node = models.TrainerV1alpha1ReplicatedJobPatch(
        name=NODE_JOB,
        template=models.TrainerV1alpha1JobTemplatePatch(
            spec=models.TrainerV1alpha1JobSpecPatch(template=_pod_patch(settings, config))),
    )
    jobset = models.TrainerV1alpha1JobSetTemplatePatch(spec=models.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[node]))
    return models.TrainerV1alpha1RuntimePatch(
        manager=PATCH_MANAGER, training_runtime_spec=models.TrainerV1alpha1TrainingRuntimeSpecPatch(template=jobset))


def trainjob_manifest(
    stage: str,
    config: dict[str, Any],
    *,
    inputs: dict[str, str | list[str]],
    outputs: dict[str, str],
    params: dict[str, int] | None = None,
    tracking: dict[str, str] | None = None,
    settings: TrainJobSettings,
    run_id: str,
    task: str,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The TrainJob (a dict, as the API takes it) that runs `stage` with `config` on
    `settings.nodes` nodes, reading `inputs` and writing `outputs` (URIs every node
    reaches), labelled with the pipeline run and task; `namespace` defaults to the
    settings'. Checked by the Trainer API models; the CRD schema check is a test."""
    from kubeflow_trainer_api import models

    namespace = namespace or settings.namespace
    resources = _resources(settings)
    job = models.TrainerV1alpha1TrainJob(
        api_version=f"{API_GROUP}/{API_VERSION}",
        kind=KIND,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=trainjob_name(task, run_id), namespace=namespace, labels=trainjob_labels(run_id, task)),
        spec=models.TrainerV1alpha1TrainJobSpec(
            runtime_ref=models.TrainerV1alpha1RuntimeRef(api_group=API_GROUP, kind="ClusterTrainingRuntime", name=settings.runtime),
            # The TrainJob's own deadline (spec.activeDeadlineSeconds, Trainer >= v2.3.0):
            # once reached its pods are ended and it fails with reason DeadlineExceeded.
            active_deadline_seconds=settings.active_deadline_s,
            trainer=models.TrainerV1alpha1Trainer(
                image=settings.image,
                num_nodes=settings.nodes,
                num_proc_per_node=settings.procs_per_node,
                command=["torchrun"],
                args=stage_args(stage, inputs=inputs, outputs=outputs, params=dict(params or {}), tracking=tracking),
                env=[models.IoK8sApiCoreV1EnvVar.from_dict(e) for e in _env(settings)],
                resources_per_node=models.IoK8sApiCoreV1ResourceRequirements.from_dict(resources) if resources else None,
            ),
            runtime_patches=[_runtime_patch(settings, config_text(config))],
        ),
    )
    return job.to_dict()
