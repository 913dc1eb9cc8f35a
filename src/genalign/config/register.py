"""Configuration of the register-model stage: the MLflow registered model and its aliases."""

from __future__ import annotations

import dataclasses

from genalign.config.base import Config, field


@dataclasses.dataclass(frozen=True)
class RegisterModelConfig(Config):
    """Registering a trained model (an adapter and its base) in the MLflow model registry."""

    model_name: str = field("genalign-part-dpo", help="registered model name")
    aliases: list[str] = field(default_factory=lambda: ["candidate"], help="aliases always moved to the new version")
    champion_alias: str = field("champion", help="alias moved only when the evaluation gate passes")
    require_gate: bool = field(True, help="move the champion alias only when the gate passed")
