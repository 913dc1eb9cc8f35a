"""Model references, the stage table and the stage runner's early checks."""

import pytest

from genalign.cli import main
from genalign.config.base import ConfigError
from genalign.models.refs import ModelRefError, resolve
from genalign.stages import STAGES, run_stage


def test_path_refs(tmp_path):
    assert resolve(str(tmp_path)) == tmp_path
    with pytest.raises(ModelRefError, match="no such model directory"):
        resolve(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "ref, message",
    [
        ("tiny://nope", "unknown tiny architecture; valid: \\['part-generator', 'part-generator-pretrained', 'tiny-qwen2-vl'\\]"),
        ("mlflow://models/only-a-name", "expected mlflow://models/<name>@<alias>"),
        ("ftp://x/y", "unknown scheme"),
    ],
)
def test_malformed_refs(ref, message):
    with pytest.raises(ModelRefError, match=message):
        resolve(ref)




def test_stage_table_config_classes_import():
    for spec in STAGES.values():
        assert spec.config_class().from_dict({}) is not None


def test_run_stage_rejects_unknown_stage_and_wrong_artifacts(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage 'scoring'; valid stages"):
        run_stage("scoring", {}, inputs={}, outputs={})
    with pytest.raises(ConfigError, match="inputs \\['sample'\\] given, expected \\['samples'\\]"):
        run_stage("score-samples", {}, inputs={"sample": str(tmp_path)}, outputs={"scored": str(tmp_path / "o")})
    with pytest.raises(ConfigError, match="score-samples config.penetration: unknown key"):
        run_stage("score-samples", {"penetration": {"reduc": "max"}}, inputs={"samples": str(tmp_path)}, outputs={"scored": str(tmp_path / "o")})


def test_cli_reports_config_errors_with_exit_code_2(capsys, tmp_path):
    cfg = tmp_path / "score.yaml"
    cfg.write_text("penetration: {reduc: max}\n")
    code = main(["stage", "score-samples", "--config", str(cfg), "--in", f"samples={tmp_path}", "--out", f"scored={tmp_path / 'o'}"])
    assert code == 2
    assert "unknown key(s) ['reduc']" in capsys.readouterr().err
    assert main(["stages"]) == 0
    assert "prepare-parts" in capsys.readouterr().out


def test_compile_names_the_project_image_on_every_task(tmp_path):
    import yaml

    from components import images

    out = tmp_path / "part-dpo.yaml"
    assert main(["compile", "part-dpo", "--preset", "tiny", "-o", str(out)]) == 0
    spec = yaml.safe_load(out.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 8
    for name, executor in executors.items():
        assert executor["container"]["image"] in images.ALL.values(), name
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["rollout"]["defaultValue"]["samples_per_condition"] == 8


def test_a_malformed_row_is_exit_code_2_naming_file_line_and_field(capsys, tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "manifest.json").write_text('{"kind": "samples", "schema_version": 1}')
    (samples / "samples.jsonl").write_text('{"sample_id": "s0"}\n')
    code = main(["stage", "score-samples", "--in", f"samples={samples}", "--out", f"scored={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"genalign: error: {samples / 'samples.jsonl'}:1: cond_id: required field")
    assert not (tmp_path / "o").exists()


def test_a_wrong_artifact_kind_is_exit_code_2(capsys, tmp_path):
    (tmp_path / "manifest.json").write_text('{"kind": "pairs", "schema_version": 1}')
    assert main(["stage", "score-samples", "--in", f"samples={tmp_path}", "--out", f"scored={tmp_path / 'o'}"]) == 2
    assert "artifact kind is 'pairs', expected one of ['samples']" in capsys.readouterr().err
