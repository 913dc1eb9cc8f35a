"""Flow-DPO trainer on a tiny PartDiT built in code: training changes the adapter and only
the adapter, the saved adapter reloads, precomputed and live references agree, a resumed
run equals an uninterrupted one, and chosen/rejected share their (t, noise)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genalign.config.base import ConfigError
from genalign.config.flow_dpo import FlowDPOConfig
from genalign.config.part_dit import PartDiTConfig
from genalign.models.part_dit import PartDiT
from genalign.storage import ArtifactError
from genalign.tracking import NullTracker
from genalign.trainers.flow_dpo import (
    FlowDPOTrainer,
    PairTensors,
    add_adapter,
    check_adapter_base,
    latest_checkpoint,
    load_pair_tensors,
    train_flow_dpo,
)

P, T, D, NC, C = 8, 4, 4, 3, 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls: a second OpenMP thread only adds contention on a shared 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny_dit(seed: int) -> PartDiT:
    """A 2-block PartDiT whose zero-initialised layers (adaLN-Zero, proj_out) get small
    random weights, as after pretraining; otherwise u = 0 and no gradient reaches LoRA."""
    torch.manual_seed(seed)
    model = PartDiT(PartDiTConfig(hidden=16, depth=2, heads=2, cond_dim=C))
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.05)
    return model


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return _tiny_dit(0).save_pretrained(tmp_path_factory.mktemp("base") / "dit")


def _pairs(n: int, seed: int = 1, same: bool = False) -> PairTensors:
    g = torch.Generator().manual_seed(seed)
    num_parts = torch.randint(1, P + 1, (n, 1), generator=g)
    mask = torch.arange(P)[None] < num_parts  # [N, P]
    chosen = torch.randn(n, P, T, D, generator=g) * mask[..., None, None]
    rejected = (
        chosen.clone() if same else torch.randn(n, P, T, D, generator=g) * mask[..., None, None]
    )
    return PairTensors(chosen, rejected, torch.randn(n, NC, C, generator=g), mask)


def _cfg(**kw) -> FlowDPOConfig:
    base = {"batch_size": 4, "lr": 1e-3, "beta": 500.0, "log_every": 1, "checkpoint_every": 0}
    base["bf16"] = False
    return FlowDPOConfig(**{**base, **kw})


def _inputs(n: int = 3):
    g = torch.Generator().manual_seed(7)
    mask = torch.ones(n, P, dtype=torch.bool)
    mask[0, 5:] = False
    return (
        torch.randn(n, P, T, D, generator=g),
        torch.rand(n, generator=g),
        torch.randn(n, NC, C, generator=g),
        mask,
    )


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """20 LoRA steps (16 pairs, 4 per step: 5 epochs), kept for several tests."""
    out = tmp_path_factory.mktemp("lora") / "adapter"
    tracker = NullTracker()
    trainer = FlowDPOTrainer(
        _cfg(max_steps=20), base_model_dir=base_dir, pairs=_pairs(16), out_dir=out, tracker=tracker
    )
    trainer.setup()
    metrics = trainer.train()
    trainer.save(metrics)
    return trainer, out, tracker, metrics


def test_train_model(trained, base_dir):
    trainer, out, tracker, metrics = trained
    losses = tracker.history("train/loss")
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    # At step 1 the adapter is the identity (lora_B = 0): policy errors = reference errors.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[-1] < losses[0]
    assert metrics["steps"] == 20 and metrics["implicit_accuracy"] > 0.5
    assert len(tracker.history("train/drift")) == 20 and tracker.history("train/drift")[-1] > 0
    for key in (
        "reward_margin",
        "chosen_reward",
        "rejected_reward",
        "grad_norm",
        "implicit_accuracy",
    ):
        assert len(tracker.history(f"train/{key}")) == 20

    # Adapter weights changed from their init; base weights did not.
    torch.manual_seed(trainer.cfg.seed)
    fresh = add_adapter(PartDiT.from_pretrained(base_dir), trainer.cfg)
    fresh_params = dict(fresh.named_parameters())
    for name, param in trainer.model.named_parameters():
        if param.requires_grad:
            assert "lora_" in name
            assert not torch.equal(param.detach(), fresh_params[name].detach()), name
    base_state = load_file(str(base_dir / "model.safetensors"))
    trained_base = trainer.model.get_base_model().state_dict()
    for name, tensor in base_state.items():
        key = (
            name
            if name in trained_base
            else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(trained_base[key], tensor), name

    # Saved keys are LoRA keys only; genalign.json describes the adapter.
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert saved and all(("lora_A" in k or "lora_B" in k) for k in saved)
    assert {k.split(".")[-3] for k in saved} == {"to_q", "to_k", "to_v", "to_out"}
    meta = json.loads((out / "genalign.json").read_text())
    assert meta["method"] == "flow_dpo" and meta["adapter_type"] == "lora"
    assert meta["loss"] == "diffusion_dpo" and meta["metrics"]["steps"] == 20


def test_saved_adapter_reproduces_outputs(trained, base_dir):
    from peft import PeftModel

    trainer, out, _, _ = trained
    reloaded = PeftModel.from_pretrained(PartDiT.from_pretrained(base_dir), str(out)).eval()
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(*_inputs())
        actual = reloaded(*_inputs())
        with reloaded.disable_adapter():
            base = reloaded(*_inputs())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, expected, atol=1e-6)


def test_check_adapter_base(trained, base_dir, tmp_path):
    _, out, _, _ = trained
    check_adapter_base(out, base_dir)
    other = _tiny_dit(1).save_pretrained(tmp_path / "other")
    with pytest.raises(ArtifactError, match="trained on base model") as e:
        check_adapter_base(out, other)
    assert str(out) in str(e.value) and str(other) in str(e.value)


def test_dora_trains_and_saves_magnitudes(base_dir, tmp_path):
    tracker = NullTracker()
    metrics = train_flow_dpo(
        _cfg(adapter="dora", max_steps=3),
        base_model_dir=base_dir,
        pairs=_pairs(8),
        out_dir=tmp_path,
        tracker=tracker,
    )
    assert math.isfinite(metrics["loss"]) and metrics["steps"] == 3
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert any("lora_magnitude_vector" in k for k in saved)
    assert all(("lora_A" in k or "lora_B" in k or "lora_magnitude_vector" in k) for k in saved)
    assert json.loads((tmp_path / "genalign.json").read_text())["adapter_type"] == "dora"


def test_precomputed_reference_matches_live(base_dir, tmp_path):
    # 8 pairs, 4 per step: steps 1-2 are epoch 0, which both modes train on draw 0.
    runs = {}
    for precompute in (False, True):
        tracker = NullTracker()
        train_flow_dpo(
            _cfg(max_steps=2, precompute_reference=precompute, reference_draws=2, drift_every=1),
            base_model_dir=base_dir,
            pairs=_pairs(8),
            out_dir=tmp_path / str(precompute),
            tracker=tracker,
        )
        runs[precompute] = tracker
    for key in ("train/loss", "train/reward_margin", "train/drift"):
        torch.testing.assert_close(
            torch.tensor(runs[True].history(key)),
            torch.tensor(runs[False].history(key)),
            rtol=1e-4,
            atol=1e-6,
        )
    assert runs[True].history("train/reward_margin")[1] != 0


def test_precomputed_reference_runs_no_reference_forward(base_dir, tmp_path):
    """With a precomputed reference the only reference forward in training measures drift."""
    trainer = FlowDPOTrainer(
        _cfg(max_steps=3, precompute_reference=True, reference_draws=2, log_every=100),
        base_model_dir=base_dir,
        pairs=_pairs(8),
        out_dir=tmp_path,
        tracker=NullTracker(),
    )
    trainer.setup()
    assert trainer.ref_errors.shape == (8, 2, 2)
    calls = []
    hook = trainer.model.get_base_model().register_forward_pre_hook(lambda m, args: calls.append(1))
    trainer.train()
    hook.remove()
    assert len(calls) == 3 + 1  # a policy forward per step + the drift measured at the last step


class _CrashAt(NullTracker):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.crash_step = step

    def log_metrics(self, metrics, step=None):
        if step == self.crash_step:
            raise RuntimeError("simulated crash")
        super().log_metrics(metrics, step)


def test_resume_matches_uninterrupted_run(base_dir, tmp_path):
    # dropout > 0 makes the restored RNG state matter; grad_accum > 1 the step bookkeeping.
    cfg = _cfg(max_steps=6, checkpoint_every=2, dropout=0.1, batch_size=2, grad_accum=2)
    pairs = _pairs(10)
    train_flow_dpo(
        cfg, base_model_dir=base_dir, pairs=pairs, out_dir=tmp_path / "a", tracker=NullTracker()
    )

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_flow_dpo(
            cfg, base_model_dir=base_dir, pairs=pairs, out_dir=tmp_path / "b", tracker=_CrashAt(5)
        )
    assert latest_checkpoint(tmp_path / "b").name == "step_00000004"
    assert not (tmp_path / "b" / "genalign.json").exists()
    tracker = NullTracker()
    metrics = train_flow_dpo(
        cfg, base_model_dir=base_dir, pairs=pairs, out_dir=tmp_path / "b", tracker=tracker
    )
    assert [s for s, m in tracker.metrics if "train/loss" in m] == [5, 6]
    assert metrics["steps"] == 6

    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7)

    files = {p.suffix for p in (tmp_path / "b" / "checkpoints").rglob("*") if p.is_file()}
    assert files <= {".safetensors", ".json"}
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "step_00000004",
        "step_00000006",
    ]


def test_resume_rejects_changed_config(base_dir, tmp_path):
    cfg = _cfg(max_steps=2, checkpoint_every=1)
    train_flow_dpo(
        cfg, base_model_dir=base_dir, pairs=_pairs(8), out_dir=tmp_path, tracker=NullTracker()
    )
    with pytest.raises(ValueError, match=r"\['beta'\]"):
        train_flow_dpo(
            cfg.replace(beta=1.0),
            base_model_dir=base_dir,
            pairs=_pairs(8),
            out_dir=tmp_path,
            tracker=NullTracker(),
        )


def test_chosen_and_rejected_share_t_and_noise(base_dir, tmp_path):
    trainer = FlowDPOTrainer(
        _cfg(max_steps=1),
        base_model_dir=base_dir,
        pairs=_pairs(4),
        out_dir=tmp_path,
        tracker=NullTracker(),
    )
    trainer.setup()
    seen = []
    dit = trainer.model.get_base_model()
    hook = dit.register_forward_pre_hook(
        lambda m, args: seen.append([a.detach().clone() for a in args])
    )
    trainer.train()
    hook.remove()
    x_t, t, _, mask = seen[0]  # policy forward: 2B = 8 rows, chosen then rejected
    assert torch.equal(t[:4], t[4:]) and len(set(t[:4].tolist())) == 4
    index, _ = trainer._micro_batch(0)
    x0 = torch.cat([trainer.pairs.x0_chosen[index], trainer.pairs.x0_rejected[index]])
    noise = (x_t - (1 - t)[:, None, None, None] * x0) / t[:, None, None, None]
    real = mask[:4, :, None, None].expand(-1, -1, T, D)
    torch.testing.assert_close(noise[:4][real], noise[4:][real], rtol=1e-4, atol=1e-4)
    # the reference forward sees exactly the policy's inputs
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1], strict=True))


def test_identical_pairs_give_zero_margin(base_dir, tmp_path):
    tracker = NullTracker()
    train_flow_dpo(
        _cfg(max_steps=3),
        base_model_dir=base_dir,
        pairs=_pairs(8, same=True),
        out_dir=tmp_path,
        tracker=tracker,
    )
    assert tracker.history("train/reward_margin") == pytest.approx([0.0] * 3, abs=1e-6)
    assert tracker.history("train/loss") == pytest.approx([math.log(2)] * 3, abs=1e-6)


def test_empty_pairs_fail_before_any_work(base_dir, tmp_path):
    empty = PairTensors(
        torch.zeros(0, P, T, D),
        torch.zeros(0, P, T, D),
        torch.zeros(0, NC, C),
        torch.zeros(0, P, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="empty"):
        train_flow_dpo(
            _cfg(),
            base_model_dir=base_dir,
            pairs=empty,
            out_dir=tmp_path / "o",
            tracker=NullTracker(),
        )
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="no pairs"):
        load_pair_tensors([], max_parts=P)


def test_unknown_loss_and_unsupported_combination(base_dir, tmp_path):
    with pytest.raises(ValueError, match="valid names"):
        train_flow_dpo(
            _cfg(loss="nope"),
            base_model_dir=base_dir,
            pairs=_pairs(4),
            out_dir=tmp_path,
            tracker=NullTracker(),
        )
    with pytest.raises(ValueError, match="precompute_reference=false"):
        train_flow_dpo(
            _cfg(loss="dspo_sd15", precompute_reference=True),
            base_model_dir=base_dir,
            pairs=_pairs(4),
            out_dir=tmp_path,
            tracker=NullTracker(),
        )


def test_dspo_loss_with_live_reference(base_dir, tmp_path):
    metrics = train_flow_dpo(
        _cfg(loss="dspo_sd15", beta=0.5, max_steps=2),
        base_model_dir=base_dir,
        pairs=_pairs(4),
        out_dir=tmp_path,
        tracker=NullTracker(),
    )
    assert math.isfinite(metrics["loss"])


def test_load_pair_tensors_pads_and_masks(tmp_path):
    rows = []
    for i, parts in enumerate((2, 5)):
        cond = tmp_path / f"cond{i}.safetensors"
        save_file({"features": torch.randn(NC, C), "num_parts": torch.tensor(parts)}, str(cond))
        row = {"cond": cond}
        for side in ("chosen", "rejected"):
            path = tmp_path / f"{side}{i}.safetensors"
            save_file({"latent": torch.randn(parts, T, D) + 1}, str(path))
            row[f"{side}_latent"] = path
        rows.append(row)
    pairs = load_pair_tensors(rows, max_parts=P)
    assert pairs.x0_chosen.shape == (2, P, T, D) and pairs.cond.shape == (2, NC, C)
    assert pairs.part_mask.sum(1).tolist() == [2, 5]
    assert pairs.x0_rejected[0, 2:].abs().sum() == 0 and pairs.x0_rejected[0, :2].abs().sum() > 0
    torch.testing.assert_close(
        pairs.x0_chosen[1, :5], load_file(str(rows[1]["chosen_latent"]))["latent"]
    )

    save_file({"latent": torch.randn(3, T, D)}, str(rows[0]["rejected_latent"]))
    with pytest.raises(ArtifactError, match=r"rejected0.safetensors: latent shape \[3, 4, 4\]"):
        load_pair_tensors(rows, max_parts=P)
    with pytest.raises(ValueError, match="missing key"):
        load_pair_tensors([{"cond": rows[0]["cond"]}], max_parts=P)


def test_config_checks():
    cfg = FlowDPOConfig.from_dict(
        {"adapter": "dora", "target_modules": ["to_q", "to_v"], "max_steps": 5}
    )
    assert cfg.target_modules == ("to_q", "to_v") and cfg.adapter == "dora"
    with pytest.raises(ConfigError, match="unknown key"):
        FlowDPOConfig.from_dict({"betaa": 1.0})
    with pytest.raises(ConfigError, match="adapter"):
        FlowDPOConfig.from_dict({"adapter": "ia3"})
    for bad in (
        {"rank": 0},
        {"dropout": 1.0},
        {"max_steps": 0},
        {"target_modules": []},
        {"beta": -1.0},
    ):
        with pytest.raises(ValueError):
            FlowDPOConfig(**bad)


@pytest.mark.parametrize(
    ("precompute", "drift_every", "expected"),
    [(False, None, [2, 4, 6, 8, 10, 12]), (True, None, [12]), (True, 3, [3, 6, 9, 12])],
)
def test_drift_is_measured_less_often_with_a_precomputed_reference(
    base_dir, tmp_path, precompute, drift_every, expected
):
    # log_every 2: the live reference measures drift with the statistics; the precomputed
    # one every 10 x log_every (here only at the last step) unless drift_every says.
    tracker = NullTracker()
    cfg = _cfg(max_steps=12, log_every=2, precompute_reference=precompute, drift_every=drift_every)
    train_flow_dpo(cfg, base_model_dir=base_dir, pairs=_pairs(8), out_dir=tmp_path, tracker=tracker)
    assert [step for step, m in tracker.metrics if "train/drift" in m] == expected
    assert len(tracker.history("train/loss")) == 12


def test_a_step_brings_its_statistics_to_the_host_once(base_dir, tmp_path, monkeypatch):
    """One device-to-host copy per optimizer step for everything it logs (on CUDA the
    step's only host sync); no `.item()` in the step."""
    import sys

    from genalign.trainers import flow_dpo

    copies = []
    real = flow_dpo.to_host
    monkeypatch.setattr(flow_dpo, "to_host", lambda values: copies.append(values.numel()) or real(values))

    real_item = torch.Tensor.item
    package = Path(flow_dpo.__file__).resolve().parents[1]  # src/genalign

    def no_item(self):  # torch's own CPU-side step counters (AdamW) may; genalign may not
        caller = Path(sys._getframe(1).f_code.co_filename).resolve()
        assert package not in caller.parents, f".item() in a training step ({caller})"
        return real_item(self)

    trainer = flow_dpo.FlowDPOTrainer(
        _cfg(max_steps=3, grad_accum=2), base_model_dir=base_dir, pairs=_pairs(8),
        out_dir=tmp_path, tracker=NullTracker(),
    )
    trainer.setup()
    monkeypatch.setattr(torch.Tensor, "item", no_item)
    trainer.train()
    monkeypatch.undo()
    # loss, accuracy, margin, two rewards, drift and grad_norm: 7 numbers per step
    assert copies == [7, 7, 7]
    assert math.isfinite(trainer.last_metrics["grad_norm"])
