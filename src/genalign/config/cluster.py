"""Cluster profile: where a pipeline's tasks find MLflow, the object store, the model
cache and GPUs on one Kubeflow cluster.

A YAML file the user edits (k8s/cluster-profile.example.yaml names what k8s/ creates),
checked here before anything is compiled or sent; the pipelines receive it as a plain
dict (`ClusterProfile.to_dict()`) and apply it with kfp-kubernetes (`pipelines/cluster.py`).
Used by `genalign compile/submit --profile`:

    namespace: genalign                       # where the runs execute
    service_account: genalign-pipeline
    tracking_configmap: genalign-tracking     # key MLFLOW_TRACKING_URI
    s3_secret: genalign-s3                    # keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL
    mlflow_secret: genalign-mlflow-pipeline   # keys username, password: the pipeline's MLflow user
    model_cache_pvc: genalign-model-cache     # ReadWriteMany, mounted by every stage
    model_cache_mount: /mnt/model-cache
    gpu:
      resource: nvidia.com/gpu
      node_selector: {nvidia.com/gpu.present: "true"}
      tolerations:
        - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
    trainer_runtime: torch-distributed
    stages:                                   # by stage name, as `genalign stages` lists them
      rollout-parts: {gpus: 1, cpu: "8", memory: 64Gi}
      score-samples: {cpu: "8", memory: 16Gi}
      train-flow-dpo: {gpus: 8, cpu: "64", memory: 512Gi, nodes: 1}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from genalign.config.base import Config, ConfigError, field

# The same forms kfp's PipelineTask.set_cpu_request / set_memory_request accept.
CPU_PATTERN = re.compile(r"([0-9]*[.])?[0-9]+m?$")
MEMORY_PATTERN = re.compile(r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")


def _quantity(value: str | float | None, pattern: re.Pattern, what: str, example: str) -> str | None:
    """YAML reads `cpu: 8` as a number; Kubernetes wants the quantity as a string."""
    if value is None:
        return None
    text = str(value)
    if not pattern.match(text):
        raise ValueError(f"{what}: {value!r} is not a Kubernetes quantity, e.g. {example}")
    return text


@dataclasses.dataclass(frozen=True)
class Toleration(Config):
    """One toleration of the GPU nodes' taints (Kubernetes `Toleration`)."""

    key: str | None = field(None, help="Taint key to tolerate; empty with operator Exists tolerates every taint.")
    # Kubernetes defaults the operator to Equal.
    operator: Literal["Equal", "Exists"] = field("Equal", help="Equal (key and value match) or Exists (key only).")
    value: str | None = field(None, help="Taint value, with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = field(
        None, help="Taint effect to tolerate; empty tolerates every effect."
    )

    def __post_init__(self) -> None:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("value must be empty when operator is Exists")


@dataclasses.dataclass(frozen=True)
class GPUConfig(Config):
    """How a task that asks for GPUs gets them: the resource, and where such nodes are."""

    resource: str = field(
        "nvidia.com/gpu", help="Extended resource name of one GPU (the task's accelerator type)."
    )
    node_selector: dict[str, str] = field(
        default_factory=dict, help="Node labels a GPU task must run on, e.g. {nvidia.com/gpu.product: ...}."
    )
    tolerations: list[Toleration] = field(
        default_factory=list, help="Tolerations of the GPU nodes' taints, given to GPU tasks only."
    )

    def __post_init__(self) -> None:
        if not self.resource:
            raise ValueError("resource must name the GPU resource, e.g. nvidia.com/gpu")
        bad = {k: v for k, v in self.node_selector.items() if not isinstance(v, str)}
        if bad:
            raise ValueError(f"node_selector values must be strings (quote them in YAML), got {bad}")


@dataclasses.dataclass(frozen=True)
class StageResources(Config):
    """Resources of one stage's task, each set as both request and limit.

    Quantities may be written as YAML numbers (`cpu: 8`); they are kept as strings.
    """

    gpus: int = field(
        0, help="Whole GPUs of gpu.resource (accelerator limit); > 0 also applies gpu.node_selector and tolerations."
    )
    cpu: str | int | float | None = field(None, help="CPU request and limit, e.g. 8 or 500m; empty: the cluster's default.")
    memory: str | int | float | None = field(None, help="Memory request and limit, e.g. 64Gi; empty: the cluster's default.")
    nodes: int = field(
        1, help="Nodes of the stage; > 1 runs it as a Kubeflow Trainer TrainJob (trainer_runtime), each node with these resources."
    )

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {self.gpus}")
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        object.__setattr__(self, "cpu", _quantity(self.cpu, CPU_PATTERN, "cpu", "8 or 500m"))
        object.__setattr__(self, "memory", _quantity(self.memory, MEMORY_PATTERN, "memory", "64Gi or 512Mi"))


# Keys of the S3 secret -> environment variables of every task (boto3 and MLflow read these).
DEFAULT_S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",
}


# Keys of the MLflow credentials secret -> the variables MLflow's client sends as HTTP basic
# auth (mlflow.utils.credentials.get_default_host_creds), for a server running MLflow's
# basic-auth app; k8s/base/mlflow-users-job.yaml creates the user from the same Secret.
DEFAULT_MLFLOW_KEYS = {
    "username": "MLFLOW_TRACKING_USERNAME",
    "password": "MLFLOW_TRACKING_PASSWORD",
}


def _check_key_map(name: str, keys: dict) -> None:
    bad = {k: v for k, v in keys.items() if not isinstance(v, str) or not isinstance(k, str)}
    if bad:
        raise ValueError(f"{name} must map secret keys to env var names (strings), got {bad}")


@dataclasses.dataclass(frozen=True)
class ClusterProfile(Config):
    """One cluster's settings for every task of a pipeline."""

    namespace: str | None = field(
        None, help="Namespace (Kubeflow profile) the runs go to; the default of `submit --namespace`."
    )
    service_account: str | None = field(
        None, help="Service account the run's pods use; empty: the namespace's pipeline default."
    )
    # The names k8s/ gives the MLflow ConfigMap and the object-store Secret.
    tracking_configmap: str | None = field(
        "genalign-tracking",
        help="ConfigMap whose key MLFLOW_TRACKING_URI becomes that env var of every task; empty: none.",
    )
    s3_secret: str | None = field(
        "genalign-s3", help="Secret with the object store's credentials and endpoint; empty: none."
    )
    s3_secret_keys: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_S3_KEYS),
        help="Keys of s3_secret -> environment variables they become in every task.",
    )
    # The Secret k8s/README.md has the operator create for the MLflow user of the pipelines.
    mlflow_secret: str | None = field(
        "genalign-mlflow-pipeline",
        help="Secret with the MLflow user every task logs and registers as; empty: none "
        "(a tracking server without authentication).",
    )
    mlflow_secret_keys: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_MLFLOW_KEYS),
        help="Keys of mlflow_secret -> environment variables they become in every task.",
    )
    model_cache_pvc: str | None = field(
        None,
        help="PersistentVolumeClaim (ReadWriteMany) every stage mounts as its model cache "
        "(GENALIGN_CACHE), so hf://, s3:// and mlflow:// models download once; empty: none.",
    )
    model_cache_mount: str = field(
        "/mnt/model-cache", help="Where model_cache_pvc is mounted; becomes GENALIGN_CACHE."
    )
    gpu: GPUConfig = field(default_factory=GPUConfig, help="The GPU resource and the GPU nodes' labels and taints.")
    trainer_runtime: str = field(
        "torch-distributed", help="Kubeflow Trainer ClusterTrainingRuntime of the stages that run on several nodes."
    )
    trainjob_timeout_hours: float = field(
        24.0, help="How long the launcher of a multi-node stage waits for its TrainJob before it deletes it "
        "and fails; the TrainJob's activeDeadlineSeconds is this plus a grace period (the backstop)."
    )
    stages: dict[str, StageResources] = field(
        default_factory=dict,
        help="Resources per stage, by stage name (`genalign stages`, e.g. train-flow-dpo); "
        "stages not listed get the cluster's defaults and no GPU.",
    )

    def __post_init__(self) -> None:
        if not self.trainer_runtime:
            raise ValueError("trainer_runtime must name a ClusterTrainingRuntime, e.g. torch-distributed")
        if not self.trainjob_timeout_hours > 0:
            raise ValueError(f"trainjob_timeout_hours must be > 0, got {self.trainjob_timeout_hours}")
        _check_key_map("s3_secret_keys", self.s3_secret_keys)
        _check_key_map("mlflow_secret_keys", self.mlflow_secret_keys)
        if not self.model_cache_mount.startswith("/"):
            raise ValueError(f"model_cache_mount must be absolute, got {self.model_cache_mount!r}")
        stages = {}
        for name, entry in self.stages.items():
            if not isinstance(entry, (dict, StageResources)):
                raise TypeError(f"stages.{name}: expected a mapping, got {entry!r}")
            if isinstance(entry, StageResources):
                stages[name] = entry
                continue
            try:
                stages[name] = StageResources.from_dict(entry, where=f"stages.{name}")
            except ConfigError as e:  # a plain ValueError: from_dict prefixes the file name
                raise ValueError(str(e)) from None
        object.__setattr__(self, "stages", stages)


def load_profile(path: str | Path, *, stages: Iterable[str] | None = None) -> ClusterProfile:
    """The checked profile in `path`, whose `stages:` may name only `stages` (default: all stages)."""
    import yaml

    if stages is None:
        from genalign.config.pipelines import STAGES  # every declared stage

        stages = STAGES

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such cluster profile")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    profile = ClusterProfile.from_dict(data, where=str(path))
    valid = sorted(stages)
    unknown = sorted(set(profile.stages) - set(valid))
    if unknown:
        raise ConfigError(f"{path}: stages: unknown stage(s) {unknown}; valid stages are {valid}")
    return profile
