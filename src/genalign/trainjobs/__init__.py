"""Training stages on several nodes, as Kubeflow Trainer v2 TrainJobs that never outlive the run.

A launcher component (components/trainjob.py) calls `launch_trainjob`: it creates the
TrainJob of the stage (`trainjob_manifest`; the shape of k8s/trainjob.example.yaml),
streams node 0's log, waits for the end, deletes the TrainJob whatever happens (also on
SIGTERM), then hands the stage's outputs and metrics to KFP as if the stage had run in
the launcher's own pod. `sweep_trainjobs` deletes whatever a run left (its exit handler).
The settings of one TrainJob (`TrainJobSettings`) are compiled in from the cluster profile.

Nothing here needs a cluster to be tested: `api` is any `kubernetes.client.ApiClient`
(tests/fake_kubernetes.py serves the few endpoints on loopback), and the TrainJob CRD's
schema is vendored (`load_crd_schema`) for offline validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genalign.trainjobs.launch import (
    TrainJobConflict,
    TrainJobError,
    TrainJobFailed,
    TrainJobForbidden,
    TrainJobResult,
    TrainJobTerminated,
    TrainJobTimeout,
    launch_trainjob,
    sweep_trainjobs,
)
from genalign.trainjobs.manifest import trainjob_labels, trainjob_manifest, trainjob_name
from genalign.trainjobs.settings import TrainJobSettings

CRD_SCHEMA = Path(__file__).with_name("trainjob_crd_schema.yaml")


def load_crd_schema() -> dict[str, Any]:
    """The openAPIV3Schema of trainjobs.trainer.kubeflow.org v1alpha1 (Trainer v2.3.0), for
    jsonschema; the file's header says what was kept and where it comes from."""
    import yaml

    return yaml.safe_load(CRD_SCHEMA.read_text())


__all__ = [
    "CRD_SCHEMA", "TrainJobConflict", "TrainJobError", "TrainJobFailed", "TrainJobForbidden", "TrainJobResult",
    "TrainJobSettings", "TrainJobTerminated", "TrainJobTimeout", "launch_trainjob", "load_crd_schema",
    "sweep_trainjobs", "trainjob_labels", "trainjob_manifest", "trainjob_name",
]
