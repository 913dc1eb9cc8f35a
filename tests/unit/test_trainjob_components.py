"""The launcher components (components/trainjob.py): the interface of their stage's own
component plus the TrainJob's settings, run id and task, and names that keep the stage's
GPUs off the launcher's pod; and the Role that lets them work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components import hand_pose, part_dpo, planner_dpo, trainjob
from genalign.config.pipelines import STAGES

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = [
    (part_dpo.train_flow_dpo, trainjob.train_flow_dpo_trainjob),
    (planner_dpo.train_planner, trainjob.train_planner_trainjob),
    (hand_pose.train_hand_pose, trainjob.train_hand_pose_trainjob),
]


def interface(component):
    spec = component.component_spec
    return ({k: (v.type, v.default, v.optional) for k, v in spec.inputs.items()},
            {k: v.type for k, v in (spec.outputs or {}).items()})


@pytest.mark.parametrize("stage_component, launcher", LAUNCHERS, ids=lambda c: c.component_spec.name)
def test_a_launcher_has_its_stages_interface_plus_the_trainjobs(stage_component, launcher):
    inputs, outputs = interface(stage_component)
    launcher_inputs, launcher_outputs = interface(launcher)
    assert launcher_inputs == inputs | {
        "trainjob": ("Dict", None, False), "run_id": ("String", None, False), "task": ("String", None, False)}
    assert launcher_outputs == outputs | {"trainjob_name": "system.Artifact@0.0.1"}


@pytest.mark.parametrize("stage_component, launcher", LAUNCHERS, ids=lambda c: c.component_spec.name)
def test_a_launcher_is_not_named_as_its_stage(stage_component, launcher):
    """apply_profile finds a task's resources by its component's name: a launcher's must
    match no stage, so that its small pod gets none of the stage's GPUs."""
    assert stage_component.component_spec.name in STAGES
    assert launcher.component_spec.name == stage_component.component_spec.name + "-trainjob"
    assert launcher.component_spec.name not in STAGES


def test_the_sweeping_exit_handler_takes_what_close_tracking_takes_and_the_run_id():
    from components.shared import close_tracking

    inputs = set(trainjob.close_tracking_and_sweep.component_spec.inputs)
    assert inputs == set(close_tracking.component_spec.inputs) | {"run_id", "namespace"}


def test_settings_compiled_from_the_profile_have_no_nulls():
    from genalign.config.cluster import load_profile

    profile = load_profile(ROOT / "k8s" / "cluster-profile.example.yaml").to_dict()
    settings = trainjob.trainjob_settings(profile, "train-planner")

    def nulls(value):
        if isinstance(value, dict):
            return any(nulls(v) for v in value.values())
        if isinstance(value, list):
            return any(nulls(v) for v in value)
        return value is None

    assert not nulls(settings)
    assert settings["gpus"] == 8 and settings["image"].startswith("ghcr.io/genalign/genalign-cuda:")


def test_the_pipeline_role_grants_what_the_launcher_calls():
    from genalign.trainjobs.launch import RBAC_RULES

    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "base" / "rbac.yaml").read_text()) if d]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"] if "resourceNames" not in rule}
    calls = {("trainer.kubeflow.org", "trainjobs", v) for v in ("create", "get", "list", "delete")}
    calls |= {("", "pods", "list"), ("", "pods/log", "get")}
    assert calls <= granted
    # the rule a 403 quotes is the Role's
    for rule in role["rules"]:
        for resource in rule["resources"]:
            if resource in RBAC_RULES:
                assert RBAC_RULES[resource].endswith(f"verbs: [{', '.join(rule['verbs'])}]"), resource
