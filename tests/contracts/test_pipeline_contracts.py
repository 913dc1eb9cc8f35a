"""The contracts every declared pipeline keeps (`genalign.config.pipelines.PIPELINES`).

A new pipeline is checked by these tests as soon as its declaration is in the list: its
tiny preset loads, its stages' code matches their declarations, each stage has exactly
one component of its own name, the pipeline compiles and matches pipelines/compiled/,
and (integration) a stage run twice gives the same metrics the second time, reused.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from genalign import artifacts
from genalign.config.pipelines import PIPELINES, STAGES
from genalign.config.presets import load_preset

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(PIPELINES)
COMPONENT_MODULES = sorted(p.stem for p in (ROOT / "components").glob("*.py") if p.stem not in ("__init__", "images"))
# the exit handler closes the MLflow run and deletes the run's TrainJobs; neither runs a stage
NOT_STAGES = {"close_tracking", "close_tracking_and_sweep"}


def components() -> dict[str, list[tuple[str, object]]]:
    """component function name -> [(module, component)] over components/*.py."""
    from kfp.dsl.python_component import PythonComponent

    found: dict[str, list[tuple[str, object]]] = {}
    for name in COMPONENT_MODULES:
        module = importlib.import_module(f"components.{name}")
        for attr, value in vars(module).items():
            if isinstance(value, PythonComponent):
                found.setdefault(attr, []).append((name, value))
    return found


@pytest.mark.parametrize("name", NAMES)
def test_tiny_and_e2e_presets_load_and_fill_every_section_and_scalar(name):
    decl = PIPELINES[name]
    for preset in ("tiny", "e2e"):
        assert set(load_preset(name, preset)) == set(decl.sections) | set(decl.scalars)


@pytest.mark.parametrize("name", NAMES)
def test_stage_names_config_classes_and_modules_agree(name):
    for section, stage in PIPELINES[name].sections.items():
        cls = stage.config_class()
        assert cls.__name__.lower() == stage.name.replace("-", "") + "config", (section, cls.__name__)
        assert stage.module.rsplit(".", 1)[-1] == stage.component, stage.module
        assert set(stage.inputs.values()) | set(stage.outputs.values()) <= set(artifacts.KINDS)
        assert set(stage.fan_in) <= set(stage.inputs) and set(stage.optional) <= set(stage.inputs)


@pytest.mark.parametrize("name", NAMES)
def test_every_stage_run_signature_matches_its_declaration(name):
    for stage in PIPELINES[name].sections.values():
        run = importlib.import_module(stage.module).run
        sig = inspect.signature(run)
        params = list(sig.parameters.values())
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, stage.name
        keyword = {p.name for p in params[1:] if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert keyword == set(stage.inputs) | set(stage.outputs) | set(stage.params) | {"tracker"}, stage.name
        hints = typing.get_type_hints(run)
        assert hints[params[0].name] is stage.config_class(), stage.name
        for key in stage.fan_in:
            assert typing.get_origin(hints[key]) is list, (stage.name, key)
        for key in stage.optional:
            assert type(None) in typing.get_args(hints[key]), (stage.name, key)


@pytest.mark.parametrize("name", NAMES)
def test_every_stage_has_exactly_one_component_of_its_name(name):
    found = components()
    for stage in PIPELINES[name].sections.values():
        assert len(found.get(stage.component, [])) == 1, (stage.name, found.get(stage.component))
        (_, component), = found[stage.component]
        assert component.component_spec.name == stage.name
        inputs = set(component.component_spec.inputs or {}) | set(component.component_spec.outputs or {})
        assert set(stage.inputs) | set(stage.outputs) | set(stage.params) <= inputs, stage.name
        source = inspect.getsource(component.python_func)
        assert f'run_stage(\n        "{stage.name}"' in source, f"{stage.component} does not run stage {stage.name}"


def test_every_component_runs_a_declared_stage():
    # a distributed stage also has a launcher that runs it as a TrainJob (components/trainjob.py)
    launchers = {f"{s.component}_trainjob" for s in STAGES.values() if s.distributed}
    stray = sorted(set(components()) - {s.component for s in STAGES.values()} - launchers - NOT_STAGES)
    assert not stray, f"components that run no declared stage: {stray}"


@pytest.mark.parametrize("name", NAMES)
def test_resume_points_name_declared_outputs(name):
    decl = PIPELINES[name]
    for point in decl.resume:
        assert point.stage in decl.stages
        assert set(point.outputs) <= set(decl.stages[point.stage].outputs)
        assert (point.offset is None) or decl.iterations is not None
    assert "report" in decl.stages[decl.report].outputs
    assert "registration" in decl.stages[decl.register].outputs


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_of_the_compiled_pipeline_has_a_description(name):
    import yaml

    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "compiled" / f"{name}.yaml").read_text()))
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert set(parameters) == set(PIPELINES[name].sections) | set(PIPELINES[name].scalars)
    assert all(p.get("description") for p in parameters.values()), sorted(
        k for k, p in parameters.items() if not p.get("description"))


# Checked-in compiles with a cluster profile: (pipeline, file under pipelines/compiled/, profile)
WITH_PROFILE = [("part-dpo", "part-dpo.multinode.yaml", "k8s/cluster-profile.multinode.example.yaml")]


@pytest.mark.integration
@pytest.mark.parametrize("name, file, profile", [(n, f"{n}.yaml", None) for n in NAMES] + WITH_PROFILE)
def test_checked_in_pipeline_is_current(name, file, profile, tmp_path):
    checked_in = ROOT / "pipelines" / "compiled" / file
    assert checked_in.is_file(), f"{checked_in.relative_to(ROOT)} is missing: run `make pipelines`"
    out = tmp_path / file
    # a fresh process with the default images, as `make pipelines` compiles it
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENALIGN_IMAGE_")}
    subprocess.run(
        [sys.executable, "-m", "genalign.cli", "compile", name, "--preset", "tiny", "-o", str(out)]
        + (["--profile", profile] if profile else []),
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )
    fresh, old = out.read_text(), checked_in.read_text()
    if fresh != old:
        diff = "".join(list(difflib.unified_diff(
            old.splitlines(keepends=True), fresh.splitlines(keepends=True),
            str(checked_in.relative_to(ROOT)), "fresh compile",
        ))[:60])
        pytest.fail(f"{checked_in.relative_to(ROOT)} differs from a fresh compile: run `make pipelines`\n{diff}")


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_the_first_stage_run_twice_is_reused_with_the_same_metrics(name, tmp_path):
    """Each pipeline's first stage on its e2e preset: the second run reuses the sealed
    outputs and reports the first run's metrics."""
    from genalign.stages import run_stage

    section, stage = next(iter(PIPELINES[name].sections.items()))
    config = load_preset(name, "e2e")[section]
    outputs = {k: tmp_path / k for k in stage.outputs}
    first = run_stage(stage.name, config, inputs={}, outputs=outputs)
    again = run_stage(stage.name, config, inputs={}, outputs=outputs)
    assert not first.reused and again.reused
    assert again.metrics == first.metrics
