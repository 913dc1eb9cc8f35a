"""Configuration of the register-model stage: the MLflow registered model and its aliases."""

from __future__ import annotations

import dataclasses
import re

from genalign.config.base import Config, field

# MLflow's rules (mlflow.utils.validation): an alias is letters, digits, '_' and '-', at
# most 255 characters; 'latest' and v<number> are reserved for version lookups.
_ALIAS = re.compile(r"[\w-]{1,255}")
_RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)
# MLflow refuses '/' and ':' in a registered model name; '@' would make the
# mlflow://models/<name>@<alias> references of this project ambiguous.
_NAME_FORBIDDEN = ("/", ":", "@")


def _check_alias(alias: str, where: str) -> None:
    if not _ALIAS.fullmatch(alias):
        raise ValueError(
            f"{where}: expected an MLflow alias (1-255 letters, digits, '_' or '-'), got {alias!r}"
        )
    if _RESERVED_ALIAS.fullmatch(alias):
        raise ValueError(
            f"{where}: {alias!r} is reserved by MLflow ('latest' and v<number> name versions); "
            "expected another alias"
        )


@dataclasses.dataclass(frozen=True)
class RegisterModelConfig(Config):
    """Registering a trained model (an adapter and its base) in the MLflow model registry."""

    model_name: str = field("genalign-part-dpo", help="registered model name")
    aliases: list[str] = field(default_factory=lambda: ["candidate"], help="aliases always moved to the new version")
    champion_alias: str = field("champion", help="alias moved only when the evaluation gate passes")
    require_gate: bool = field(True, help="move the champion alias only when the gate passed")

    def __post_init__(self) -> None:
        name = self.model_name
        if not name.strip() or name != name.strip():
            raise ValueError(
                "model_name: expected a non-empty registered model name without surrounding "
                f"spaces, got {name!r}"
            )
        if any(c in name for c in _NAME_FORBIDDEN) or name == "." or name.startswith(".."):
            raise ValueError(
                "model_name: expected an MLflow registered model name: no '/', ':' or '@', "
                f"and not '.', '..' or '..<name>', got {name!r}"
            )
        for i, alias in enumerate(self.aliases):
            _check_alias(alias, f"aliases[{i}]")
        if len(set(self.aliases)) != len(self.aliases):
            raise ValueError(f"aliases: expected each alias once, got {list(self.aliases)}")
        _check_alias(self.champion_alias, "champion_alias")
        if self.champion_alias in self.aliases:
            raise ValueError(
                f"aliases: contains the champion alias {self.champion_alias!r}; aliases move to "
                "every new version, so the champion would move past a failed evaluation gate. "
                "Expected it only as champion_alias"
            )
