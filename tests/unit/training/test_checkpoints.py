"""Checkpoints: resuming equals an uninterrupted run bit for bit, the files are
safetensors + JSON only, the last N are kept, only complete ones are found, a failed
save leaves the earlier ones."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genalign.storage import ArtifactError
from genalign.training.checkpoints import (
    CHECKPOINTS,
    check_resumable,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint_state,
    read_checkpoint_tensors,
    remove_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from genalign.training.schedules import warmup_cosine

STEPS = 6


class Run:
    """A tiny training run whose every step uses the global RNG (dropout), a data
    generator, AdamW's moments and a warmup-cosine schedule: all must resume."""

    def __init__(self, init_seed: int) -> None:
        torch.manual_seed(init_seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1)
        )
        self.params = dict(self.model.named_parameters())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-2, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: warmup_cosine(s, warmup=2, total=STEPS, min_ratio=0.1)
        )
        self.data = torch.Generator().manual_seed(1234)
        self.step = 0

    def train_step(self) -> None:
        x = torch.randn(5, 4, generator=self.data)
        loss = (self.model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1

    def save(self, out_dir: Path, keep: int = 2) -> Path:
        return save_checkpoint(
            out_dir,
            self.step,
            tensors={"model": self.params},
            optimizer=self.opt,
            scheduler=self.sched,
            generators={"data": self.data},
            state={"epoch": 0, "config": {"lr": 1e-2}},
            keep=keep,
        )

    def restore(self, path: Path) -> None:
        restore_checkpoint(
            path,
            params={"model": self.params},
            optimizer=self.opt,
            scheduler=self.sched,
            generators={"data": self.data},
        )
        self.step = read_checkpoint_state(path)["step"]


def test_resume_equals_uninterrupted(tmp_path):
    straight = Run(init_seed=0)
    for _ in range(STEPS):
        straight.train_step()
    straight_rng = torch.get_rng_state()

    first = Run(init_seed=0)
    for _ in range(3):
        first.train_step()
    path = first.save(tmp_path)
    torch.manual_seed(999)  # the crashed process's RNG is gone; the new one starts elsewhere

    resumed = Run(init_seed=7)  # other weights until restored
    resumed.restore(latest_checkpoint(tmp_path))
    assert resumed.step == 3 and path == checkpoint_dir(tmp_path, 3)
    while resumed.step < STEPS:
        resumed.train_step()

    for name, param in straight.params.items():
        assert torch.equal(resumed.params[name], param), name
    assert resumed.opt.param_groups[0]["lr"] == straight.opt.param_groups[0]["lr"]
    assert torch.equal(torch.get_rng_state(), straight_rng)
    assert torch.equal(resumed.data.get_state(), straight.data.get_state())


def test_files_are_safetensors_and_json(tmp_path):
    run = Run(init_seed=0)
    run.train_step()
    path = run.save(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng.safetensors",
        "scheduler.json",
        "trainer_state.json",
    ]
    state = read_checkpoint_state(path)
    assert state == {"step": 1, "epoch": 0, "config": {"lr": 1e-2}}
    assert set(load_file(str(path / "rng.safetensors"))) == {"cpu", "generator.data"} | (
        {"cuda"} if torch.cuda.is_available() else set()
    )
    assert json.loads((path / "scheduler.json").read_text())["last_epoch"] == 1
    assert set(read_checkpoint_tensors(path, "model")) == set(run.params)


def test_keeps_the_last_n_and_finds_the_latest_complete(tmp_path):
    run = Run(init_seed=0)
    for _ in range(5):
        run.train_step()
        run.save(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]

    root = tmp_path / CHECKPOINTS
    (root / "step_00000009").mkdir()  # no trainer_state.json: not a complete checkpoint
    (root / ".step_00000010.abc.tmp").mkdir()  # a save in flight
    assert latest_checkpoint(tmp_path).name == "step_00000005"
    remove_checkpoints(tmp_path)
    assert latest_checkpoint(tmp_path) is None and list_checkpoints(tmp_path) == []


def test_a_failed_save_leaves_the_earlier_checkpoints(tmp_path):
    run = Run(init_seed=0)
    run.train_step()
    run.save(tmp_path)

    class BadScheduler:
        def state_dict(self):
            return {"lr": torch.ones(1)}  # not JSON: refused, nothing pickled

    run.train_step()
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_checkpoint(
            tmp_path, 2, tensors={"model": run.params}, optimizer=run.opt,
            scheduler=BadScheduler(), state={}, keep=2,
        )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ["step_00000001"]


def test_optimizer_state_must_be_tensors(tmp_path):
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([param], lr=0.1)
    opt.state[param]["count"] = 3  # an int in the per-parameter state
    with pytest.raises(TypeError, match=r"optimizer state 0.count is a int, not a tensor"):
        save_checkpoint(tmp_path, 1, tensors={}, optimizer=opt, state={}, keep=1)


def test_restore_rejects_other_parameter_names(tmp_path):
    run = Run(init_seed=0)
    path = run.save(tmp_path)
    other = {"weight": torch.zeros(1)}
    with pytest.raises(
        ArtifactError, match=r"model.safetensors: parameter names do not match the model"
    ):
        restore_checkpoint(path, params={"model": other}, optimizer=None)
    with pytest.raises(ArtifactError, match="adapter.safetensors: missing"):
        restore_checkpoint(path, params={"adapter": other}, optimizer=None)
    with pytest.raises(ArtifactError, match=r"no generator 'order' \(saved: \['data'\]\)"):
        restore_checkpoint(path, params={}, optimizer=None, generators={"order": torch.Generator()})


def test_save_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="must not hold 'step'"):
        save_checkpoint(tmp_path, 1, tensors={}, optimizer=None, state={"step": 1}, keep=1)
    with pytest.raises(ValueError, match="keep must be >= 1"):
        save_checkpoint(tmp_path, 1, tensors={}, optimizer=None, state={}, keep=0)
    with pytest.raises(ValueError, match=r"\['rng'\] are reserved"):
        save_checkpoint(tmp_path, 1, tensors={"rng": {}}, optimizer=None, state={}, keep=1)


def test_check_resumable_names_the_changed_fields():
    saved = {"beta": 500.0, "epochs": 2, "target_modules": ["to_q"]}
    check_resumable("ckpt", saved, {**saved, "epochs": 4}, may_change=("epochs",))
    check_resumable("ckpt", saved, {**saved, "target_modules": ("to_q",)}, may_change=())
    with pytest.raises(ValueError, match=r"ckpt: cannot resume, config field\(s\) \['beta'\]"):
        check_resumable("ckpt", saved, {**saved, "beta": 1.0}, may_change=("epochs",))
