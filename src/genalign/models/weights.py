"""Loading a model's weights file with errors that name the file and the tensor.

    load_checked(model, directory / "model.safetensors", config_path.name)

`load_state_dict` raises on a mismatch too, but with the module's attribute names and no
file; a wrong checkpoint beside a config should say which file and what differs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genalign.storage import ArtifactError


def load_checked(model: torch.nn.Module, weights_path: Path, config_name: str) -> None:
    """Load the safetensors file `weights_path` into `model` (strict), after checking that
    its tensor names and shapes are those the config (`config_name`) builds."""
    from safetensors.torch import load_file

    state = load_file(str(weights_path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"{weights_path}: tensors do not match {config_name}; missing {missing}, unexpected {unexpected}"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ArtifactError(
                f"{weights_path}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"{config_name} gives {list(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
