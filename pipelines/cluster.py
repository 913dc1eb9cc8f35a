"""Cluster settings on one pipeline task, with kfp-kubernetes and the task's resource setters;
and the importer of an earlier run's artifacts (resume).

`profile` is `genalign.config.cluster.ClusterProfile.to_dict()`: the CLI loads and checks
the YAML, the pipelines only read the dict (they import nothing but kfp and components).
Every task gets the MLflow ConfigMap, the object-store Secret, the Secret of the pipelines'
MLflow user and the pod label that the MLflow NetworkPolicy admits
(k8s/base/mlflow-networkpolicy.yaml); every stage's task also the model cache, and its CPU,
memory and GPUs from the profile's `stages`, and GPU tasks the GPU nodes' selector and
tolerations; a task with N > 1 GPUs gets GENALIGN_PROCESSES=N, so a distributed stage
trains in N processes. kfp.local ignores all of it, so `genalign run` is unchanged.
"""

from kfp import dsl, kubernetes

from components.shared import close_tracking

# The label k8s/base/mlflow-networkpolicy.yaml admits to the MLflow server's port.
MLFLOW_CLIENT_LABEL = ("genalign.io/mlflow-client", "true")


def apply_profile(task: dsl.PipelineTask, profile: dict | None, *, stage: bool = True) -> dsl.PipelineTask:
    """Applies `profile` to `task`. A stage's task is found in the profile's `stages` by its
    component's name, which is the stage's name (`score_samples` runs `score-samples`), so
    the name is never typed twice; `stage=False` marks a task of no stage (the exit handler)."""
    if profile is None:
        return task
    if profile["tracking_configmap"]:
        kubernetes.use_config_map_as_env(
            task, config_map_name=profile["tracking_configmap"],
            config_map_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"},
        )
    if profile["s3_secret"]:
        kubernetes.use_secret_as_env(
            task, secret_name=profile["s3_secret"], secret_key_to_env=profile["s3_secret_keys"]
        )
    if profile["mlflow_secret"]:
        kubernetes.use_secret_as_env(
            task, secret_name=profile["mlflow_secret"], secret_key_to_env=profile["mlflow_secret_keys"]
        )
    kubernetes.add_pod_label(task, label_key=MLFLOW_CLIENT_LABEL[0], label_value=MLFLOW_CLIENT_LABEL[1])
    if not stage:
        return task
    if profile["model_cache_pvc"]:
        kubernetes.mount_pvc(task, pvc_name=profile["model_cache_pvc"], mount_path=profile["model_cache_mount"])
        task.set_env_variable("GENALIGN_CACHE", profile["model_cache_mount"])

    resources = profile["stages"].get(task.component_spec.name)
    if resources is None:
        return task
    if resources["cpu"]:
        task.set_cpu_request(resources["cpu"])
        task.set_cpu_limit(resources["cpu"])
    if resources["memory"]:
        task.set_memory_request(resources["memory"])
        task.set_memory_limit(resources["memory"])
    if resources["gpus"] > 1:
        # one process per GPU for a stage whose trainer is data-parallel (genalign.training.launch)
        task.set_env_variable("GENALIGN_PROCESSES", str(resources["gpus"]))
    if resources["gpus"]:
        gpu = profile["gpu"]
        task.set_accelerator_type(gpu["resource"])
        task.set_accelerator_limit(resources["gpus"])
        for label, value in gpu["node_selector"].items():
            kubernetes.add_node_selector(task, label_key=label, label_value=value)
        for toleration in gpu["tolerations"]:
            kubernetes.add_toleration(
                task, key=toleration["key"], operator=toleration["operator"],
                value=toleration["value"], effect=toleration["effect"],
            )
    return task


def imported(uris: dict, key: str, cls):
    """The artifact an earlier run wrote (`uris["<stage>.<output>"]`), imported into this one."""
    return dsl.importer(artifact_uri=uris[key], artifact_class=cls, reimport=False).output


def multinode(profile: dict | None, stage: str) -> bool:
    """Whether `profile` runs `stage` on several nodes (a TrainJob)."""
    return bool(profile) and (profile["stages"].get(stage) or {}).get("nodes", 1) > 1


def training_task(component, launcher, profile: dict | None, **arguments) -> dsl.PipelineTask:
    """The task of a training stage: its own `component`, or, when the profile gives the
    stage nodes > 1, its TrainJob `launcher` (components/trainjob.py) with the same
    arguments; the TrainJob's pods run the component's image."""
    stage = component.component_spec.name
    if not multinode(profile, stage):
        return apply_profile(component(**arguments), profile)
    from components.trainjob import trainjob_settings

    image = component.component_spec.implementation.container.image
    task = launcher(**arguments, trainjob=trainjob_settings(profile, stage, image),
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, task=dsl.PIPELINE_TASK_NAME_PLACEHOLDER)
    return apply_profile(task, profile)


def exit_task(profile: dict | None, stages: list[str], **arguments) -> dsl.PipelineTask:
    """The pipeline's exit handler: `close_tracking` ends the MLflow run however the run
    ends; when the profile runs one of `stages` on several nodes, `close_tracking_and_sweep`
    first deletes every TrainJob labelled with this run (a launcher killed outright cannot
    delete its own; its TrainJob's activeDeadlineSeconds is the last backstop)."""
    if not any(multinode(profile, s) for s in stages):
        return apply_profile(close_tracking(**arguments), profile, stage=False)
    from components.trainjob import close_tracking_and_sweep

    task = close_tracking_and_sweep(**arguments, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    return apply_profile(task, profile, stage=False)
