"""The registry holds something usable elsewhere, and a registered model is a base to
continue from.

A tiny part-dpo run, stage by stage: prepare-parts pretrains a small generator inside the
run (a base that exists nowhere else), rollout, score, pairs, train-flow-dpo,
evaluate-parts and register-model. Then the run's directories are deleted, and a second
process in an empty working directory, knowing only the tracking URI, resolves
`mlflow://models/<name>@champion`, loads the adapter onto its registered base and
reproduces what the original generated; `mlflow.pyfunc.load_model` does the same. Last,
prepare-parts takes the champion, the registered base and `tiny://part-generator` as its
`base_model`, and the stages after it run on each. A registered planner adapter generates
plans through pyfunc and continues as prepare-planner's base.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genalign.stages import run_stage

pytestmark = pytest.mark.integration

NAME = "genalign-registry-test"
PREPARE = {
    "train_conditions": 4, "eval_conditions": 4, "base_model": "pretrain",
    "pretrain": {"objects": 16, "hidden": 32, "depth": 2, "heads": 2, "heldout_objects": 8,
                 "training": {"steps": 2, "batch_size": 8, "warmup_steps": 1}},
}
ROLLOUT = {"samples_per_condition": 4, "steps": 2}
TRAIN = {"max_steps": 2, "batch_size": 4, "lr": 0.01}
EVALUATE = {"samples_per_condition": 2, "steps": 2, "gallery": 1}
SEED = 7


def part_dpo(out: Path, prepare: dict, *, register: dict | None = None) -> dict[str, Path]:
    """prepare-parts .. evaluate-parts (and register-model) on tiny configs; the paths."""
    paths = {k: out / k for k in ("cond", "eval", "model", "samples", "scored", "pairs", "adapter", "report", "reg")}
    run_stage("prepare-parts", prepare, inputs={},
              outputs={"conditions": paths["cond"], "eval_conditions": paths["eval"], "model": paths["model"]})
    run_stage("rollout-parts", ROLLOUT, inputs={"conditions": paths["cond"], "model": paths["model"]},
              outputs={"samples": paths["samples"]}, params={"shard": 0, "num_shards": 1})
    run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": paths["samples"]},
              outputs={"scored": paths["scored"]})
    run_stage("mine-pairs", {"min_gap": 0.0}, inputs={"scored": [paths["scored"]]}, outputs={"pairs": paths["pairs"]})
    run_stage("train-flow-dpo", TRAIN, inputs={"model": paths["model"], "pairs": paths["pairs"]},
              outputs={"adapter": paths["adapter"]})
    run_stage("evaluate-parts", EVALUATE,
              inputs={"model": paths["model"], "adapter": paths["adapter"], "conditions": paths["eval"]},
              outputs={"report": paths["report"]})
    if register is not None:
        run_stage("register-model", register,
                  inputs={"adapter": paths["adapter"], "report": paths["report"], "pairs": paths["pairs"]},
                  outputs={"registration": paths["reg"]})
    return paths


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The registered run, what its adapter generates for one held-out image, and the
    run's directories deleted."""
    from genalign.artifacts import read_conditions
    from genalign.generators.parts import load_generator

    root = tmp_path_factory.mktemp("run")
    paths = part_dpo(root, PREPARE, register={"model_name": NAME, "require_gate": False})
    cond = read_conditions(paths["eval"])[0]
    image = (paths["eval"] / cond.image).read_bytes()
    num_parts = int(cond.meta["num_parts"])
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(paths["eval"] / cond.image).convert("RGB"))
    expected = {}
    for tag, adapter in (("base", None), ("tuned", paths["adapter"])):
        gen = load_generator(paths["model"], adapter_dir=adapter)
        expected[tag] = gen.sample(gen.encode_images([pixels]), [num_parts], [SEED], steps=2, guidance=2.0)[0]
    registration = json.loads((paths["reg"] / "registration.json").read_text())
    shutil.rmtree(root)  # nothing of the run is left on this "machine" but the MLflow store
    return {"image": image, "num_parts": num_parts, "expected": expected, "registration": registration,
            "root": root}


FRESH_MACHINE = r"""
import base64, json, sys
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
from PIL import Image

from genalign.generators.parts import generator_from_ref
from genalign.models.refs import base_and_adapter, resolve
from genalign.trainers.flow_dpo import check_adapter_base

name, num_parts, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
image = Path("cond.png").read_bytes()
pixels = np.asarray(Image.open("cond.png").convert("RGB"))

resolved = resolve(f"mlflow://models/{name}@champion")
base, adapter = base_and_adapter(resolved)
check_adapter_base(adapter, base / "dit")
gen = generator_from_ref(resolved)
latent = gen.sample(gen.encode_images([pixels]), [num_parts], [seed], steps=2, guidance=2.0)[0]

model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
rows = model.predict([{"image": base64.b64encode(image).decode(), "num_parts": num_parts, "seed": seed}])
print(json.dumps({
    "resolved": str(resolved), "base": str(base), "adapter": str(adapter), "latent": latent.tolist(),
    "pyfunc": rows[0]["latent"], "parts": rows[0]["parts"], "glb": bool(rows[0]["glb"]), "error": rows[0]["error"],
    "config": model.metadata.flavors["python_function"]["config"],
}))
"""


def test_champion_loads_on_a_fresh_machine_and_reproduces_the_adapter(registered, tmp_path):
    import torch

    from genalign.tracking import tracking_uri

    assert not registered["root"].exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cond.png").write_bytes(registered["image"])
    env = {k: v for k, v in os.environ.items() if k not in ("GENALIGN_HOME", "GENALIGN_CACHE")}
    env.update(MLFLOW_TRACKING_URI=tracking_uri(), MLFLOW_DISABLE_TELEMETRY="true", TQDM_DISABLE="1",
               OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", FRESH_MACHINE, NAME, str(registered["num_parts"]), str(SEED)],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # everything came from the registry into the new working directory's cache
    for key in ("resolved", "base", "adapter"):
        assert Path(out[key]).is_relative_to(elsewhere / ".genalign" / "cache"), out[key]
    assert Path(out["base"]).is_relative_to(elsewhere / ".genalign" / "cache" / "mlflow" / f"{NAME}-base")
    expected = registered["expected"]
    assert not torch.allclose(expected["tuned"], expected["base"], atol=1e-6)  # the adapter matters
    torch.testing.assert_close(torch.tensor(out["latent"]), expected["tuned"], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(out["pyfunc"]), expected["tuned"], rtol=0, atol=1e-5)
    assert out["error"] is None and out["glb"] and len(out["parts"]) == registered["num_parts"]
    assert out["config"]["steps"] == EVALUATE["steps"]


def test_registry_layout(registered):
    from mlflow.tracking import MlflowClient

    from genalign.artifacts import read_model_card
    from genalign.models.refs import resolve
    from genalign.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    reg = registered["registration"]
    assert reg["base_model"] == f"mlflow://models/{NAME}-base/1"
    mv = client.get_model_version_by_alias(NAME, "champion")
    assert mv.source.endswith("/model")  # the pyfunc model, which holds the adapter directory
    assert mv.tags["genalign.base_model"] == reg["base_model"] and mv.tags["genalign.arch"] == "part-generator"
    assert str(registered["root"]) not in mv.description + mv.tags["genalign.base_model"]
    assert mv.description.startswith("flow_dpo lora adapter (diffusion_dpo loss) over mlflow://models/")
    assert "preference pairs" in mv.description and "evaluation gate" in mv.description
    (base_version,) = client.search_model_versions(f"name = '{NAME}-base'")
    assert base_version.tags["genalign.content_sha256"] and base_version.source.endswith("/base")
    base = read_model_card(resolve(reg["base_model"]))
    assert (base.kind, base.arch, base.method) == ("model", "part-generator", "flow_matching")
    adapter = read_model_card(resolve(f"mlflow://models/{NAME}/{reg['version']}"))
    assert adapter.kind == "adapter" and adapter.base_model == reg["base_model"]


@pytest.mark.parametrize("base_model", ["champion", "registered-base", "tiny://part-generator"])
def test_prepare_continues_from_a_reference(registered, base_model, tmp_path):
    """prepare-parts with a registered adapter (merged into its base), a registered base or
    a tiny:// reference, then rollout, train and evaluate on it; the continued adapter
    registers, its merged base as a new version of <name>-base."""
    from mlflow.tracking import MlflowClient

    from genalign.artifacts import read_model_card
    from genalign.tracking import tracking_uri

    version = registered["registration"]["version"]
    ref = {"champion": f"mlflow://models/{NAME}@champion",
           "registered-base": f"mlflow://models/{NAME}-base/1"}.get(base_model, base_model)
    continued = f"{NAME}-continued-{base_model.split(':')[0]}"
    paths = part_dpo(tmp_path, {**PREPARE, "base_model": ref},
                     register={"model_name": continued, "require_gate": False})
    card = read_model_card(paths["model"])
    if base_model == "champion":  # the champion policy, merged: a generator of this run
        assert (card.kind, card.method, card.base_model) == ("model", "merge", f"mlflow://models/{NAME}/{version}")
        assert (paths["model"] / "dit" / "model.safetensors").is_file()
    else:
        assert (card.kind, card.ref) == ("ref", ref)
    report = json.loads((paths["report"] / "report.json").read_text())
    assert report["comparison"]["gate"]["passed"] in (True, False)
    registration = json.loads((paths["reg"] / "registration.json").read_text())
    client = MlflowClient(tracking_uri())
    if base_model == "champion":
        assert registration["base_model"] == f"mlflow://models/{continued}-base/1"
        (mv,) = client.search_model_versions(f"name = '{continued}-base'")
        assert mv.tags["genalign.base_model"] == f"mlflow://models/{NAME}/{version}"
    else:
        assert registration["base_model"] == ref
        assert not client.search_model_versions(f"name = '{continued}-base'")


def test_a_base_with_the_same_content_is_registered_once(registered, tmp_path):
    from mlflow.tracking import MlflowClient

    from genalign.tracking import tracking_uri

    paths = part_dpo(tmp_path, PREPARE, register={"model_name": NAME, "require_gate": False})
    registration = json.loads((paths["reg"] / "registration.json").read_text())
    assert registration["base_model"] == f"mlflow://models/{NAME}-base/1"  # the cached pretrain: same bytes
    assert int(registration["version"]) > int(registered["registration"]["version"])
    assert len(MlflowClient(tracking_uri()).search_model_versions(f"name = '{NAME}-base'")) == 1


def test_a_base_that_is_not_here_is_refused_before_registering(tmp_path):
    from genalign.artifacts import ModelCard, write_model_card
    from genalign.storage import ArtifactError, write_manifest

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    write_model_card(adapter, ModelCard(kind="adapter", base_model=str(tmp_path / "gone"), arch="part-generator"))
    write_manifest(adapter, kind="adapter")
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({"comparison": {"gate": {"passed": True}}, "metrics": {}}))
    write_manifest(report, kind="report")
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    write_manifest(pairs, kind="pairs")
    with pytest.raises(ArtifactError, match="is a directory that is not here"):
        run_stage("register-model", {"model_name": "genalign-never-registered"},
                  inputs={"adapter": adapter, "report": report, "pairs": pairs},
                  outputs={"registration": tmp_path / "reg"})
    assert not (tmp_path / "reg").exists()


def test_pyfunc_input_forms(registered, tmp_path, monkeypatch):
    """Rows as dicts, a DataFrame or an image array give the same parts."""
    import io

    import mlflow.pyfunc
    import numpy as np
    import pandas as pd
    import torch
    from PIL import Image

    from genalign.tracking import tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    pixels = np.asarray(Image.open(io.BytesIO(registered["image"])).convert("RGB"))
    n = registered["num_parts"]
    by_bytes = model.predict({"image": registered["image"], "num_parts": n, "seed": SEED})
    by_array = model.predict(pd.DataFrame([{"image": pixels.tolist(), "num_parts": n, "seed": SEED}]))
    assert by_bytes[0]["latent"] == by_array[0]["latent"]
    torch.testing.assert_close(torch.tensor(by_bytes[0]["latent"]), registered["expected"]["tuned"], rtol=0, atol=1e-5)
    with pytest.raises(KeyError, match="needs 'image' and 'num_parts'"):
        model.predict([{"image": registered["image"]}])
    assert base64.b64decode(by_bytes[0]["glb"])[:4] == b"glTF"


def _stub_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A report whose gate passed and an empty pairs artifact, for register-model."""
    from genalign.storage import write_manifest

    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({"comparison": {"gate": {"passed": True}}, "metrics": {}}))
    write_manifest(report, kind="report", hash_files=["report.json"])
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "pairs.jsonl").write_text("")
    write_manifest(pairs, kind="pairs", counts={"pairs": 0}, hash_files=["pairs.jsonl"])
    return report, pairs


def test_registered_planner_generates_plans_through_pyfunc(tmp_path, monkeypatch):
    """A planner adapter (random LoRA weights, so it changes the plans) over tiny://
    registered, loaded with mlflow.pyfunc: its plans are those of base + adapter."""
    import io

    import mlflow.pyfunc
    import numpy as np
    from peft import LoraConfig, get_peft_model
    from PIL import Image

    from genalign.artifacts import ModelCard, write_model_card
    from genalign.config.planner import PlannerSamplingConfig
    from genalign.generators.planner import PlannerSampler
    from genalign.models.refs import resolve
    from genalign.models.vlm import load_vlm
    from genalign.storage import write_manifest
    from genalign.tracking import tracking_uri

    base_ref = "tiny://tiny-qwen2-vl"
    model, _ = load_vlm(resolve(base_ref))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = tmp_path / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter)
    write_model_card(adapter, ModelCard(kind="adapter", arch="qwen-vl", base_model=base_ref, method="lm_dpo",
                                        loss="sigmoid", adapter_type="lora"))
    write_manifest(adapter, kind="adapter")
    report, pairs = _stub_inputs(tmp_path)
    name = "genalign-registry-planner-test"
    result = run_stage("register-model", {"model_name": name}, inputs={"adapter": adapter, "report": report,
                                                                        "pairs": pairs},
                       outputs={"registration": tmp_path / "reg"})
    assert result.summary["base_model"] == base_ref

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    image.save(tmp_path / "q.png")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    question = {"id": "q0", "question": "What is behind the red cube?", "options": ["A. a ball", "B. a box"]}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    plans = pyfunc.predict([{**question, "images": [buffer.getvalue()]}], params={"max_new_tokens": 12})

    tuned, processor = load_vlm(resolve(base_ref), adapter_dir=adapter)
    sampling = PlannerSamplingConfig(k=1, temperature=0.0, max_new_tokens=12, batch_size=1)
    expected = PlannerSampler(tuned, processor, sampling).sample([{**question, "images": ["q.png"]}], root=tmp_path)
    base_model, _ = load_vlm(resolve(base_ref))
    untuned = PlannerSampler(base_model, processor, sampling).sample([{**question, "images": ["q.png"]}],
                                                                     root=tmp_path)
    assert plans == [expected[0][0]] and isinstance(plans[0], str)
    assert expected != untuned  # the adapter is on: its plans differ from the base's

    # the registered planner as prepare-planner's base_model: merged into its base here
    from genalign.artifacts import read_model_card

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    run_stage("prepare-planner", {"source": "synthetic", "train_samples": 2, "eval_samples": 2,
                                  "base_model": f"mlflow://models/{name}@champion"}, inputs={},
              outputs={"dataset": prepared / "dataset", "eval_dataset": prepared / "eval", "model": prepared / "model"})
    card = read_model_card(prepared / "model")
    assert (card.kind, card.method, card.base_model) == ("model", "merge", f"mlflow://models/{name}/1")
    merged, merged_processor = load_vlm(prepared / "model")
    assert PlannerSampler(merged, merged_processor, sampling).sample(
        [{**question, "images": ["q.png"]}], root=tmp_path) == expected
