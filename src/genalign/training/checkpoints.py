"""Training checkpoints: safetensors and JSON only, written atomically, the last N kept.

One checkpoint is a directory `<out_dir>/checkpoints/step_00000050/`:

    <name>.safetensors     each named group of tensors (the adapter, an EMA, ...)
    optimizer.safetensors  the optimizer's per-parameter state ("state.<index>.<key>")
    optimizer.json         the optimizer's param_groups (hyper-parameters, param indices)
    scheduler.json         the learning-rate scheduler's state_dict, when there is one
    rng.safetensors        torch's CPU RNG state (+ CUDA's, + named torch.Generators)
    trainer_state.json     {"step": ..., whatever else the trainer records}

Nothing is pickled, so nothing on load runs code: tensors come back through safetensors,
everything else through JSON (an optimizer state that is not all tensors is refused when
saved). A checkpoint is written into a temporary sibling and renamed into place
(`genalign.storage.atomic_dir`), so every directory named `step_<8 digits>` is complete and
a crash mid-save leaves the previous ones. With the data order a pure function of the
step number (as the trainers draw it), restoring the tensors, the optimizer, the
scheduler and the RNG states resumes to the same weights as an uninterrupted run.

    save_checkpoint(out_dir, step, tensors={"adapter": trainable}, optimizer=opt,
                    state={"seconds": s, "config": cfg.to_dict()}, keep=2)
    path = latest_checkpoint(out_dir)
    state = read_checkpoint_state(path)          # check it fits before touching the model
    restore_checkpoint(path, params={"adapter": trainable}, optimizer=opt)
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from genalign.storage import ArtifactError, atomic_dir, atomic_write_json

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"
RNG_FILE = "rng.safetensors"
_CHECKPOINT_RE = re.compile(r"^step_(\d{8})$")
_GENERATOR_PREFIX = "generator."


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives under `out_dir`."""
    return Path(out_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """The complete checkpoints under `out_dir`, oldest step first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if _CHECKPOINT_RE.match(p.name) and (p / STATE_FILE).is_file()
    )


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint with the highest step; atomic_dir makes every visible one complete."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def remove_checkpoints(out_dir: Path) -> None:
    """Delete every checkpoint under `out_dir` (a fresh, not resumed, run)."""
    root = Path(out_dir) / CHECKPOINTS
    if root.exists():
        shutil.rmtree(root)


# --------------------------------------------------------------------------------------
# Optimizer and RNG state as tensors + JSON
# --------------------------------------------------------------------------------------


def optimizer_to_files(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state_dict as (tensors for safetensors, param_groups for JSON)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"optimizer state {index}.{key} is a {type(value).__name__}, not a tensor"
                )
            tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
        for group in state["param_groups"]
    ]
    return tensors, {"param_groups": groups}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state_dict back from `optimizer_to_files`' two halves."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, torch.Tensor]:
    """torch's CPU RNG state, CUDA's (one row per device) when present, and each named
    generator's, as tensors."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    for name, generator in (generators or {}).items():
        rng[_GENERATOR_PREFIX + name] = generator.get_state()
    return rng


def set_rng_state(
    rng: Mapping[str, torch.Tensor], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Restore what `rng_state` returned (CUDA's only where CUDA is present)."""
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))
    for name, generator in (generators or {}).items():
        key = _GENERATOR_PREFIX + name
        if key not in rng:
            saved = sorted(
                k[len(_GENERATOR_PREFIX) :] for k in rng if k.startswith(_GENERATOR_PREFIX)
            )
            raise ArtifactError(f"rng state has no generator {name!r} (saved: {saved})")
        generator.set_state(rng[key])


# --------------------------------------------------------------------------------------
# Save / restore
# --------------------------------------------------------------------------------------


def save_checkpoint(
    out_dir: Path,
    step: int,
    *,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None,
    state: Mapping[str, Any],
    keep: int,
    scheduler: Any | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> Path:
    """Write the checkpoint of `step` under `out_dir` and keep the `keep` most recent ones.

    `tensors` maps a file stem to its tensors ({"adapter": {name: param}}); `state` is JSON
    recorded in trainer_state.json beside the step; `scheduler` is anything with a JSON-able
    `state_dict()` (torch's LRScheduler); `generators` are torch.Generators whose states
    go into the RNG file. Returns the checkpoint directory.
    """
    from safetensors.torch import save_file

    if "step" in state:
        raise ValueError(
            "save_checkpoint: `state` must not hold 'step'; it is recorded from `step`"
        )
    if keep < 1:
        raise ValueError(f"save_checkpoint: keep must be >= 1, got {keep}")
    reserved = {Path(OPTIMIZER_TENSORS).stem, Path(RNG_FILE).stem}
    clash = sorted(reserved & set(tensors))
    if clash:
        raise ValueError(f"save_checkpoint: tensor group name(s) {clash} are reserved")
    path = checkpoint_dir(out_dir, step)
    with atomic_dir(path) as tmp:
        for stem, group in tensors.items():
            save_file(
                {n: t.detach().cpu().contiguous() for n, t in group.items()},
                str(tmp / f"{stem}.safetensors"),
            )
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_files(optimizer)
            save_file(opt_tensors, str(tmp / OPTIMIZER_TENSORS))
            atomic_write_json(tmp / OPTIMIZER_JSON, opt_meta)
        if scheduler is not None:
            atomic_write_json(tmp / SCHEDULER_JSON, scheduler.state_dict())
        save_file(rng_state(generators), str(tmp / RNG_FILE))
        atomic_write_json(tmp / STATE_FILE, {**state, "step": step})
    prune_checkpoints(out_dir, keep)
    return path


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the `keep` highest-step checkpoints under `out_dir`."""
    root = Path(out_dir) / CHECKPOINTS
    kept = sorted(p for p in root.iterdir() if _CHECKPOINT_RE.match(p.name))
    for old in kept[:-keep]:
        shutil.rmtree(old)


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """trainer_state.json of the checkpoint at `path` (read before restoring anything, to
    check the run it belongs to)."""
    return json.loads((Path(path) / STATE_FILE).read_text())


def read_checkpoint_tensors(path: Path, stem: str) -> dict[str, torch.Tensor]:
    """The tensors saved under `stem` (e.g. an EMA's state_dict)."""
    from safetensors.torch import load_file

    file = Path(path) / f"{stem}.safetensors"
    if not file.is_file():
        raise ArtifactError(f"{file}: missing from the checkpoint")
    return load_file(str(file))


def restore_checkpoint(
    path: Path,
    *,
    params: Mapping[str, Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> None:
    """Copy the checkpoint at `path` into live objects: each group of `params` (file stem ->
    {name: tensor}, names must match exactly), the optimizer, the scheduler, the RNG state
    and `generators`."""
    from safetensors.torch import load_file

    path = Path(path)
    for stem, live in params.items():
        saved = read_checkpoint_tensors(path, stem)
        if set(saved) != set(live):
            missing, unexpected = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
            raise ArtifactError(
                f"{path}/{stem}.safetensors: parameter names do not match the {stem} "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        with torch.no_grad():
            for name, tensor in live.items():
                tensor.copy_(saved[name])
    if optimizer is not None:
        optimizer.load_state_dict(
            optimizer_from_files(
                load_file(str(path / OPTIMIZER_TENSORS)),
                json.loads((path / OPTIMIZER_JSON).read_text()),
            )
        )
    if scheduler is not None:
        scheduler.load_state_dict(json.loads((path / SCHEDULER_JSON).read_text()))
    set_rng_state(load_file(str(path / RNG_FILE)), generators)


def check_resumable(
    path: Path, saved_config: dict[str, Any], config: dict[str, Any], may_change: Sequence[str]
) -> None:
    """Raise ValueError naming the fields, other than `may_change`, in which the run's
    `config` differs from the checkpoint's: resuming those would not continue the same run."""

    def comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
        plain = json.loads(json.dumps(cfg_dict))  # tuples -> lists, as the JSON file has them
        return {k: v for k, v in plain.items() if k not in may_change}

    saved, current = comparable(saved_config), comparable(config)
    changed = sorted(k for k in current if saved.get(k) != current[k])
    if changed:
        raise ValueError(
            f"{path}: cannot resume, config field(s) {changed} differ from the checkpoint's "
            f"(only {list(may_change)} may change); pass resume=False or a fresh out_dir"
        )
