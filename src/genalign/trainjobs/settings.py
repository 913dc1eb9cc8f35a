"""The cluster-side settings of one TrainJob: where it runs, on how many nodes, with what.

A launcher component receives them as a plain dict (`TrainJobSettings.to_dict()`), made
when the pipeline is compiled from the cluster profile's entry of the stage
(`TrainJobSettings.from_profile`, profile as `genalign.config.cluster.ClusterProfile.to_dict()`):

    settings = TrainJobSettings.from_profile(profile, "train-flow-dpo", image=images.CUDA)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from genalign.config.base import Config, ConfigError, field
from genalign.config.cluster import DEFAULT_MLFLOW_KEYS, DEFAULT_S3_KEYS, Toleration

# Kubeflow Trainer's ClusterTrainingRuntime for PyTorch (manifests/base/runtimes/
# torch_distributed.yaml at v2.3.0), the runtime k8s/trainjob.example.yaml names.
DEFAULT_RUNTIME = "torch-distributed"
# A day: the launcher's wait must outlast a real training run; a profile or a pipeline
# that trains longer says so.
DEFAULT_TIMEOUT_S = 24 * 3600.0
# The wait reads the TrainJob and node 0's new log lines this often; ten seconds is the
# step of KFP's own `wait_for_run_completion` and of `genalign submit --wait`.
DEFAULT_POLL_S = 10.0
# The cluster's backstop (spec.activeDeadlineSeconds) fires this long after the
# launcher's own timeout, so it ends only a TrainJob whose launcher is gone (killed
# without running its cleanup).
DEADLINE_MARGIN_S = 600


@dataclasses.dataclass(frozen=True)
class TrainJobSettings(Config):
    """Where and how a stage's TrainJob runs; the same names as the cluster profile."""

    image: str = field(help="Image of every node: the project's CUDA (or CPU) image the pipeline was compiled with.")
    namespace: str | None = field(
        None, help="Namespace of the TrainJob; empty: the launcher pod's own namespace."
    )
    runtime: str = field(DEFAULT_RUNTIME, help="Kubeflow Trainer ClusterTrainingRuntime the TrainJob runs on.")
    nodes: int = field(1, help="Training nodes (pods); torchrun runs numProcPerNode processes in each.")
    gpus: int = field(0, help="GPUs per node, of gpu_resource; also the processes per node (1 without GPUs).")
    gpu_resource: str = field("nvidia.com/gpu", help="Extended resource name of one GPU.")
    cpu: str | None = field(None, help="CPU request and limit per node, e.g. 64; empty: the cluster's default.")
    memory: str | None = field(None, help="Memory request and limit per node, e.g. 512Gi; empty: the cluster's default.")
    node_selector: dict[str, str] = field(
        default_factory=dict, help="Node labels of the GPU nodes (applied only when gpus > 0)."
    )
    tolerations: list[Toleration] = field(
        default_factory=list, help="Tolerations of the GPU nodes' taints (applied only when gpus > 0)."
    )
    tracking_configmap: str | None = field(
        "genalign-tracking", help="ConfigMap whose key MLFLOW_TRACKING_URI every node gets; empty: none."
    )
    s3_secret: str | None = field("genalign-s3", help="Secret with the object store's credentials; empty: none.")
    s3_secret_keys: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_S3_KEYS), help="Keys of s3_secret -> environment variables."
    )
    mlflow_secret: str | None = field(
        "genalign-mlflow-pipeline", help="Secret with the pipelines' MLflow user; empty: none."
    )
    mlflow_secret_keys: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_MLFLOW_KEYS), help="Keys of mlflow_secret -> environment variables."
    )
    model_cache_pvc: str | None = field(
        None, help="PersistentVolumeClaim (ReadWriteMany) mounted as the model cache (GENALIGN_CACHE); empty: none."
    )
    model_cache_mount: str = field("/mnt/model-cache", help="Where model_cache_pvc is mounted.")
    shm_size: str | None = field(
        None,
        help="sizeLimit of the memory-backed /dev/shm (NCCL, DataLoader workers); empty: bounded only by "
        "the node's memory limit, which a memory-backed emptyDir counts against.",
    )
    timeout_s: float = field(DEFAULT_TIMEOUT_S, help="Seconds the launcher waits for the TrainJob before it gives up and deletes it.")
    poll_s: float = field(DEFAULT_POLL_S, help="Seconds between two reads of the TrainJob and of node 0's log.")
    deadline_s: int | None = field(
        None,
        help="spec.activeDeadlineSeconds, the cluster's backstop should the launcher die without "
        "cleaning up; empty: timeout_s + DEADLINE_MARGIN_S.",
    )

    def __post_init__(self) -> None:
        if not self.image:
            raise ValueError("image must name the image of the training nodes")
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        if self.gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {self.gpus}")
        if not self.model_cache_mount.startswith("/"):
            raise ValueError(f"model_cache_mount must be absolute, got {self.model_cache_mount!r}")
        if self.timeout_s <= 0 or self.poll_s <= 0:
            raise ValueError(f"timeout_s and poll_s must be > 0, got {self.timeout_s} and {self.poll_s}")
        if self.deadline_s is not None and self.deadline_s < 1:
            raise ValueError(f"deadline_s must be >= 1 (activeDeadlineSeconds' minimum), got {self.deadline_s}")

    @property
    def procs_per_node(self) -> int:
        """torchrun's processes per node: one per GPU, one on a CPU node."""
        return self.gpus or 1

    @property
    def active_deadline_s(self) -> int:
        if self.deadline_s is not None:
            return self.deadline_s
        return int(self.timeout_s) + DEADLINE_MARGIN_S

    @classmethod
    def from_profile(cls, profile: dict[str, Any], stage: str, *, image: str) -> TrainJobSettings:
        """The settings of `stage`'s TrainJob on the cluster of `profile` (a checked
        `ClusterProfile.to_dict()`), whose `stages` must list the stage."""
        entry = profile["stages"].get(stage)
        if entry is None:
            raise ConfigError(
                f"cluster profile: stages has no entry for {stage}; its TrainJob needs the stage's nodes "
                f"and per-node resources (stages.{stage}: {{nodes: 2, gpus: 8, cpu: ..., memory: ...}})"
            )
        gpu = profile["gpu"]
        return cls(
            image=image,
            namespace=profile["namespace"],
            runtime=profile["trainer_runtime"] or DEFAULT_RUNTIME,
            nodes=entry["nodes"],
            gpus=entry["gpus"],
            gpu_resource=gpu["resource"],
            cpu=entry["cpu"],
            memory=entry["memory"],
            node_selector=dict(gpu["node_selector"]),
            tolerations=[Toleration.from_dict(t, where=f"gpu.tolerations[{i}]") for i, t in enumerate(gpu["tolerations"])],
            tracking_configmap=profile["tracking_configmap"],
            s3_secret=profile["s3_secret"],
            s3_secret_keys=dict(profile["s3_secret_keys"]),
            mlflow_secret=profile["mlflow_secret"],
            mlflow_secret_keys=dict(profile["mlflow_secret_keys"]),
            model_cache_pvc=profile["model_cache_pvc"],
            model_cache_mount=profile["model_cache_mount"],
        )
