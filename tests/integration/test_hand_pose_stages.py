"""The hand-pose stages called directly on the e2e preset's synthetic hands.

prepare-hands writes crops whose joints project to their 2D labels; a training phase
freezes what it must and trains what it must; a phase stopped mid-way and resumed from
its checkpoint ends with the weights of an uninterrupted one; evaluate-hand-pose writes
the metrics, the history and the DexYCB results file; register-hand-pose moves the
champion only to a better model, and the registered version predicts through pyfunc.
"""

import json
from pathlib import Path

import pytest
import torch

from genalign.config.base import ConfigError
from genalign.config.hand_pose import TrainHandPoseConfig
from genalign.config.presets import load_preset
from genalign.stages import run_stage

pytestmark = pytest.mark.integration

PRESET = load_preset("hand-pose", "e2e")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hands") / "dataset"
    run_stage("prepare-hands", PRESET["prepare"], inputs={}, outputs={"dataset": out})
    return out


def train_data(dataset: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(dataset / "train.safetensors"))


def test_prepare_hands_writes_every_split_with_consistent_crops(dataset):
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["setup"] == "s0" and all(info["counts"][s] > 0 for s in ("train", "val", "test"))
    data = train_data(dataset)
    n = info["counts"]["train"]
    assert data["images"].shape == (n, 3, 32, 32) and data["images"].dtype == torch.uint8
    uvw = torch.einsum("nij,nkj->nki", data["K"].double(), data["joints3d"].double())
    assert torch.allclose(uvw[..., :2] / uvw[..., 2:], data["joints2d"].double(), atol=1e-3)
    mean_pose = torch.tensor(info["mean_pose_mm"])
    assert mean_pose.shape == (21, 3) and mean_pose[0].abs().max() == 0  # root-relative, in mm
    assert 50 < mean_pose.norm(dim=-1).max() < 250  # a hand spans about 0.2 m


def small_config(**changes) -> TrainHandPoseConfig:
    return TrainHandPoseConfig.from_dict({**PRESET["train"], **changes})


def test_first_phase_trains_only_its_groups_and_saves_raw_and_ema(dataset, tmp_path, one_thread):
    from genalign.trainers.hand_pose import build_model, load_phase_model, train_phase

    cfg = small_config()
    before = {k: v.clone() for k, v in build_model(cfg, None).state_dict().items()}
    metrics = train_phase(cfg, 0, train_data(dataset), out_dir=tmp_path)
    assert metrics["steps"] > 0 and metrics["final_loss"] == metrics["final_loss"]
    raw, _ = load_phase_model(tmp_path, weights="raw")
    groups = {name: {id(p) for p in params} for name, params in raw.parameter_groups().items()}
    changed = {g: False for g in groups}
    for name, param in raw.named_parameters():
        group = next(g for g, ids in groups.items() if id(param) in ids)
        changed[group] |= not torch.equal(param.detach(), before[name])
    # phase "components" trains the hand decoder, then the object branch; the rest is frozen
    assert changed == {"backbone": False, "hand": True, "object": True, "refine": False}
    ema, _ = load_phase_model(tmp_path, weights="ema")
    assert set(ema.state_dict()) == set(raw.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(ema.state_dict().values(), raw.state_dict().values()))


def test_a_phase_stopped_and_resumed_ends_like_an_uninterrupted_one(dataset, tmp_path, one_thread):
    from genalign.trainers.hand_pose import load_phase_model, train_phase

    cfg = small_config(checkpoint_every=3)
    data = train_data(dataset)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train_phase(cfg, 0, data, out_dir=whole)
    stopped = train_phase(cfg, 0, data, out_dir=cut, stop_at=5)
    assert stopped["steps"] == 5 and not (cut / "model.safetensors").exists()
    train_phase(cfg, 0, data, out_dir=cut)
    for weights in ("raw", "ema"):
        a, _ = load_phase_model(whole, weights=weights)
        b, _ = load_phase_model(cut, weights=weights)
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(x, y, atol=1e-6), (weights, name)


def test_a_phase_that_freezes_everything_is_refused_before_training():
    phases = [{"name": "frozen", "epochs": 1, "lr": 0.001, "trainable": []}]
    with pytest.raises(ConfigError, match="freeze everything"):
        small_config(phases=phases)
    with pytest.raises(ConfigError, match="unknown group"):
        small_config(phases=[{"name": "x", "epochs": 1, "lr": 0.001, "trainable": ["decoder"]}])


def test_later_phase_needs_the_previous_model(dataset, tmp_path):
    with pytest.raises(ValueError, match="previous phase's model"):
        run_stage("train-hand-pose", PRESET["train"], inputs={"dataset": dataset},
                  outputs={"model": tmp_path / "m"}, params={"phase": 1})


@pytest.fixture(scope="module")
def phases(dataset, tmp_path_factory) -> list[tuple[Path, Path]]:
    """(model, report) of every phase of the e2e preset, chained as the pipeline does."""
    out = tmp_path_factory.mktemp("phases")
    done, model, history = [], None, None
    for phase in range(len(PRESET["train"]["phases"])):
        m, r = out / f"model{phase}", out / f"report{phase}"
        run_stage("train-hand-pose", PRESET["train"],
                  inputs={"dataset": dataset, **({"previous": model} if model else {})},
                  outputs={"model": m}, params={"phase": phase})
        run_stage("evaluate-hand-pose", PRESET["evaluate"],
                  inputs={"dataset": dataset, "model": m, **({"history": history} if history else {})},
                  outputs={"report": r}, params={"phase": phase})
        done.append((m, r))
        model, history = m, r
    return done


def test_evaluation_reports_every_phase_in_mm_with_the_dexycb_results_file(dataset, phases):
    report = json.loads((phases[-1][1] / "report.json").read_text())
    metrics = report["metrics"]
    for key in ("mpjpe", "pa_mpjpe", "pck_5px", "auc_0_50mm", "baseline_mpjpe", "raw_mpjpe", "mpjpe_absolute"):
        assert f"eval/{key}" in metrics, key
    assert [h["phase"] for h in report["history"]] == [0, 1, 2]
    assert 5.0 < metrics["eval/baseline_mpjpe"] < 200.0  # millimetres, not metres
    assert metrics["eval/pa_mpjpe"] <= metrics["eval/mpjpe"]
    crops = json.loads((dataset / "dataset.json").read_text())["counts"]["test"]
    lines = (phases[-1][1] / "dexycb_results.txt").read_text().splitlines()
    assert len(lines) == crops
    for png in ("phases.png", "joints.png", "gallery.png"):
        assert (phases[-1][1] / png).stat().st_size > 1000


def test_register_moves_the_champion_only_to_a_lower_mpjpe(dataset, phases, tmp_path, monkeypatch):
    import mlflow.pyfunc
    import numpy as np
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from genalign.tracking import tracking_uri

    name = "genalign-hand-pose-registry-test"
    config = {"model_name": name, "require_gate": False}
    (first_model, first_report), (last_model, last_report) = phases[0], phases[-1]
    mpjpe = [json.loads((r / "report.json").read_text())["metrics"]["eval/mpjpe"] for r in (first_report, last_report)]
    # register the better one first; the other must not take the champion alias
    better, worse = ((last_model, last_report), (first_model, first_report)) if mpjpe[1] < mpjpe[0] else \
        ((first_model, first_report), (last_model, last_report))
    run_stage("register-hand-pose", config, inputs={"model": better[0], "report": better[1]},
              outputs={"registration": tmp_path / "r1"})
    second = run_stage("register-hand-pose", config, inputs={"model": worse[0], "report": worse[1]},
                       outputs={"registration": tmp_path / "r2"})
    assert "champion" not in second.summary["aliases"] and "candidate" in second.summary["aliases"]
    client = MlflowClient(tracking_uri())
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == "1" and "eval.mpjpe" in champion.tags
    # the registered version predicts through pyfunc, as the evaluation's EMA model does
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    crops = load_file(str(dataset / "test.safetensors"))
    rows = [{"image": crops["images"][i].permute(1, 2, 0).numpy(), "K": crops["K"][i].tolist()} for i in range(2)]
    out = model.predict(rows)
    assert np.asarray(out[0]["joints_cam_mm"]).shape == (21, 3)
    from genalign.trainers.hand_pose import load_phase_model

    ema, _ = load_phase_model(better[0], weights="ema")
    with torch.no_grad():
        expected = ema(crops["images"][:2].float() / 255.0, crops["K"][:2].float()).joints_cam
    assert np.allclose([o["joints_cam_mm"] for o in out], expected.numpy(), atol=1e-4)



def test_a_dora_backbone_adapter_trains_and_is_merged_into_a_plain_model(dataset, tmp_path, one_thread):
    """Phase "joint" with backbone_adapter dora: the peft directory is saved beside the
    model, the written model is a plain HandPoseModel (the same keys as phase 0's) whose
    backbone moved from phase 0's, and a model without an adapter leaves none."""
    from safetensors.torch import load_file

    from genalign.trainers.hand_pose import ADAPTER_DIR, load_phase_model, train_phase

    cfg = small_config(backbone_adapter="dora", adapter_rank=4, adapter_alpha=4.0)
    data = train_data(dataset)
    first, second = tmp_path / "p0", tmp_path / "p1"
    train_phase(cfg, 0, data, out_dir=first)
    assert not (first / ADAPTER_DIR).exists()  # phase 0 leaves the backbone frozen
    train_phase(cfg, 1, data, out_dir=second, previous=first)
    adapter_config = json.loads((second / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is True and adapter_config["r"] == 4
    saved = load_file(str(second / ADAPTER_DIR / "adapter_model.safetensors"))
    assert any("lora_magnitude_vector" in k for k in saved) and any("lora_A" in k for k in saved)
    before, _ = load_phase_model(first, weights="raw")
    after, _ = load_phase_model(second, weights="raw")
    assert set(after.state_dict()) == set(before.state_dict())
    moved = [k for k, v in after.state_dict().items() if k.startswith("backbone.") and not torch.equal(v, before.state_dict()[k])]
    assert any(".attention.q_proj." in k for k in moved) and any(".mlp.fc2." in k for k in moved)
    # only the adapted projections moved; the patch embedding and the norms did not
    assert not any("embeddings" in k or "norm" in k for k in moved)
    card = json.loads((second / "genalign.json").read_text())
    assert card["adapter_type"] == "dora"


def test_a_nan_loss_stops_with_the_step_and_a_hint(dataset, tmp_path, one_thread):
    from genalign.trainers.hand_pose import train_phase

    data = train_data(dataset)
    data["joints3d"] = torch.full_like(data["joints3d"], float("nan"))
    with pytest.raises(FloatingPointError, match=r"phase components, step 0: the loss is nan.*lower lr"):
        train_phase(small_config(), 0, data, out_dir=tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_a_collapsed_batch_warns_or_stops_as_configured(dataset, tmp_path, one_thread):
    """With a threshold no batch can reach (10 m of per-joint spread) every batch counts
    as collapsed: counted with one warning by default, an error with stop_on_collapse."""
    from genalign.trainers.hand_pose import CollapseError, train_phase

    data = train_data(dataset)
    with pytest.warns(UserWarning, match="collapsed"):
        metrics = train_phase(small_config(collapse_threshold_m=10.0), 0, data, out_dir=tmp_path / "warn")
    assert metrics["collapsed_batches"] == metrics["steps"]
    with pytest.raises(CollapseError, match="raise weights.diversity"):
        train_phase(small_config(collapse_threshold_m=10.0, stop_on_collapse=True), 0, data, out_dir=tmp_path / "stop")
