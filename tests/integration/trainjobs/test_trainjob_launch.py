"""launch_trainjob and sweep_trainjobs against a fake Kubernetes API on loopback
(tests/fake_kubernetes.py): success, failure, timeout, SIGTERM mid-wait, 403 and 409 on
create. After each, no TrainJob of the run is left; the sweep deletes only its run's."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from pathlib import Path

import pytest
from fake_kubernetes import FakeKubernetes, Script, stage_outputs

from genalign import artifacts
from genalign.storage import write_manifest
from genalign.trainjobs import (
    TrainJobConflict,
    TrainJobFailed,
    TrainJobForbidden,
    TrainJobSettings,
    TrainJobTerminated,
    TrainJobTimeout,
    launch_trainjob,
    sweep_trainjobs,
    trainjob_manifest,
    trainjob_name,
)

RUN = "run-0f3c"
TASK = "train-flow-dpo-trainjob"
NAME = trainjob_name(TASK, RUN)
LINES = ["step 1 loss=0.9", "step 2 loss=0.7", "step 3 loss=0.5"]
RESULT = {"metrics": {"train/loss": 0.5, "train/reward_margin": "nan"}, "summary": {"steps": 3}}


@dataclasses.dataclass
class Artifact:
    """What the launcher reads of a KFP artifact: its object-store URI and local path."""

    uri: str
    path: str
    metadata: dict = dataclasses.field(default_factory=dict)


class Metrics:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_metric(self, key: str, value: float) -> None:
        self.logged[key] = value


def publish_adapter(job: dict) -> None:
    """What rank 0 of train-flow-dpo leaves at its output: a payload, sealed."""
    out = Path(stage_outputs(job)["adapter"])
    out.mkdir(parents=True)
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    write_manifest(out, kind="adapter")
    artifacts.seal(out, stage="train-flow-dpo", fingerprint="f", result=RESULT)


@pytest.fixture
def kube():
    with FakeKubernetes() as fake:
        fake.on_complete = publish_adapter
        yield fake


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def settings(cache: Path, **changes) -> TrainJobSettings:
    return TrainJobSettings(image="img:1", namespace="genalign", nodes=2, model_cache_pvc="genalign-model-cache",
                            model_cache_mount=str(cache), timeout_s=20, poll_s=0.02).replace(**changes)


def launch(kube: FakeKubernetes, cache: Path, tmp_path: Path, *, job=None, **kwargs):
    adapter = Artifact(uri=str(cache / "run" / "adapter"), path=str(tmp_path / "kfp" / "adapter"))
    kwargs.setdefault("name_output", tmp_path / "kfp" / "trainjob")
    result = launch_trainjob(
        "train-flow-dpo", {"beta": 500.0},
        inputs={"model": str(cache / "run" / "model"), "pairs": str(cache / "run" / "pairs")},
        outputs={"adapter": adapter}, job=job or settings(cache), run_id=RUN, task=TASK, api=kube.api_client(),
        **kwargs,
    )
    return result, adapter


def nothing_of_the_run_left(kube: FakeKubernetes) -> bool:
    return not [j for j in kube.jobs.values() if j["metadata"]["labels"]["genalign.io/pipeline-run"] == RUN]


def test_success_materialises_the_sealed_outputs_and_returns_the_metrics(kube, cache, tmp_path, capsys):
    kube.script = Script(["Created", "Running", "Running", "Running", "Running", "Complete"], lines=LINES)
    metrics = Metrics()
    before = signal.getsignal(signal.SIGTERM)

    result, adapter = launch(kube, cache, tmp_path, metrics_output=metrics)

    assert result.name == NAME and result.namespace == "genalign"
    assert result.metrics["train/loss"] == 0.5 and str(result.metrics["train/reward_margin"]) == "nan"
    assert result.summary == {"steps": 3} and metrics.logged == result.metrics
    assert result.outputs == {"adapter": str(cache / "run" / "adapter")}
    # the KFP artifact's local path holds the same bytes as the nodes published
    local, published = Path(adapter.path), cache / "run" / "adapter"
    assert artifacts.payload_hashes(local) == artifacts.payload_hashes(published)
    assert json.loads((local / "manifest.json").read_text())["result"] == RESULT
    assert (tmp_path / "kfp" / "trainjob").read_text() == NAME + "\n"
    # node 0's lines, each once and in order
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("step")] == LINES, out
    assert kube.jobs == {} and kube.deleted == [(NAME, "Foreground")]
    assert signal.getsignal(signal.SIGTERM) is before


def test_lines_written_just_before_completion_are_printed(kube, cache, tmp_path, capsys):
    # one poll sees step 1; steps 2 and 3 and the completion come before the next
    kube.script = Script(["Created", "Running", "Complete"], lines=LINES)

    launch(kube, cache, tmp_path)

    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("step")] == LINES, out


def test_success_tags_the_pipeline_run_and_the_stage_run(kube, cache, tmp_path):
    from genalign.tracking import OUTPUT_TAG, MlflowTracker, pipeline_run_id

    tracking = {"experiment": "trainjob-launch", "pipeline_run": RUN, "pipeline": "part-dpo"}

    def stage_run(job):  # what run_stage does on rank 0 of the nodes
        publish_adapter(job)
        child = MlflowTracker.for_stage(experiment=tracking["experiment"], pipeline_run=RUN, stage="train-flow-dpo")
        child.set_tags({f"{OUTPUT_TAG}adapter": stage_outputs(job)["adapter"]})
        child.end()

    kube.on_complete = stage_run
    kube.script = Script(["Created", "Running", "Complete"], lines=LINES)
    launch(kube, cache, tmp_path, tracking=tracking, tags={"genalign.iteration": "2"})

    parent = MlflowTracker(pipeline_run_id(tracking["experiment"], RUN))
    assert parent.client.get_run(parent.run_id).data.tags[f"genalign.trainjob.{TASK}"] == f"genalign/{NAME}"
    (child,) = parent.client.search_runs(
        [parent.client.get_run(parent.run_id).info.experiment_id],
        filter_string=f"tags.`genalign.pipeline_run.child` = '{RUN}'")
    assert child.data.tags["genalign.trainjob"] == f"genalign/{NAME}"
    assert child.data.tags["genalign.iteration"] == "2"
    assert kube.jobs == {}


def test_failure_raises_with_the_failing_pods_last_lines(kube, cache, tmp_path):
    kube.script = Script(["Created", "Running", "Failed"], lines=LINES, failing_node=1,
                         failure_lines=["Traceback (most recent call last):", "RuntimeError: NCCL timeout on node 1"])
    with pytest.raises(TrainJobFailed) as caught:
        launch(kube, cache, tmp_path)
    message = str(caught.value)
    assert f"{NAME}-node-0-1-" in message and "JobsFailed" in message
    assert message.rstrip().endswith("RuntimeError: NCCL timeout on node 1")
    assert nothing_of_the_run_left(kube) and kube.deleted == [(NAME, "Foreground")]
    assert not (tmp_path / "kfp" / "adapter").exists()


def test_timeout_deletes_the_trainjob(kube, cache, tmp_path):
    kube.script = Script(["Created", "Running"], lines=LINES)
    with pytest.raises(TrainJobTimeout, match="did not finish within 0.3 s") as caught:
        launch(kube, cache, tmp_path, job=settings(cache, timeout_s=0.3))
    assert "step 1 loss=0.9" in str(caught.value)
    assert nothing_of_the_run_left(kube) and kube.deleted == [(NAME, "Foreground")]


def test_sigterm_while_waiting_deletes_the_trainjob_and_restores_the_handler(kube, cache, tmp_path):
    kube.script = Script(["Created", "Running"], lines=LINES)
    before = signal.getsignal(signal.SIGTERM)

    def terminate():  # KFP's terminate, once the launcher waits on a running TrainJob
        if kube.running.wait(10):
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        with pytest.raises(TrainJobTerminated, match="SIGTERM"):
            launch(kube, cache, tmp_path)
    finally:
        killer.join()
    assert nothing_of_the_run_left(kube) and kube.deleted == [(NAME, "Foreground")]
    assert signal.getsignal(signal.SIGTERM) is before
    assert (tmp_path / "kfp" / "trainjob").read_text() == NAME + "\n"  # written at once


def test_forbidden_create_names_the_verb_resource_namespace_and_rule(kube, cache, tmp_path):
    kube.forbid = {("create", "trainjobs")}
    with pytest.raises(TrainJobForbidden) as caught:
        launch(kube, cache, tmp_path)
    message = str(caught.value)
    for part in ("may not create trainjobs in namespace genalign", "k8s/base/rbac.yaml",
                 "resources: [trainjobs], verbs: [create, get, list, watch, delete]"):
        assert part in message
    assert kube.jobs == {} and kube.deleted == []


def test_forbidden_log_read_ends_the_trainjob(kube, cache, tmp_path):
    kube.script = Script(["Created", "Running"], lines=LINES)
    kube.forbid = {("get", "pods/log")}
    with pytest.raises(TrainJobForbidden, match=r"may not get pods/log .*resources: \[pods/log\], verbs: \[get\]"):
        launch(kube, cache, tmp_path)
    assert kube.jobs == {}


def test_conflict_with_another_runs_trainjob_leaves_it_alone(kube, cache, tmp_path):
    other = trainjob_manifest("train-flow-dpo", {}, inputs={}, outputs={}, settings=settings(cache),
                              run_id="other-run", task=TASK)
    other["metadata"]["name"] = NAME  # the same name, someone else's labels
    kube.add_job(other)
    with pytest.raises(TrainJobConflict, match="not this run's and task's .*'other-run'"):
        launch(kube, cache, tmp_path)
    assert kube.job_names() == [NAME] and kube.deleted == []
    assert nothing_of_the_run_left(kube)


def test_conflict_with_this_tasks_earlier_trainjob_adopts_it(kube, cache, tmp_path):
    earlier = trainjob_manifest("train-flow-dpo", {"beta": 500.0}, settings=settings(cache), run_id=RUN, task=TASK,
                                inputs={"model": str(cache / "run" / "model"), "pairs": str(cache / "run" / "pairs")},
                                outputs={"adapter": str(cache / "run" / "adapter")})
    kube.add_job(earlier)
    kube.script = Script(["Running", "Complete"], lines=LINES)
    result, adapter = launch(kube, cache, tmp_path)
    assert result.metrics["train/loss"] == 0.5 and (Path(adapter.path) / "adapter_model.safetensors").is_file()
    assert kube.jobs == {} and kube.deleted == [(NAME, "Foreground")]


def test_sweep_deletes_this_runs_trainjobs_only(kube, cache):
    for run, task in ((RUN, "train-planner-trainjob"), (RUN, "train-planner-trainjob-2"), ("other-run", TASK)):
        kube.add_job(trainjob_manifest("train-flow-dpo", {}, inputs={}, outputs={}, settings=settings(cache),
                                       run_id=run, task=task))
    unlabelled = trainjob_manifest("train-flow-dpo", {}, inputs={}, outputs={}, settings=settings(cache),
                                   run_id=RUN, task="by-hand")
    unlabelled["metadata"]["labels"] = {}
    kube.add_job(unlabelled)

    swept = sweep_trainjobs(RUN, "genalign", api=kube.api_client())

    assert swept == sorted([trainjob_name("train-planner-trainjob", RUN), trainjob_name("train-planner-trainjob-2", RUN)])
    assert kube.job_names() == sorted([trainjob_name(TASK, "other-run"), trainjob_name("by-hand", RUN)])
    assert sweep_trainjobs(RUN, "genalign", api=kube.api_client()) == []
