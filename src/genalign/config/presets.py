"""Pipeline presets: `configs/<pipeline>/<preset>.yaml`, one config mapping per stage.

`load_preset` applies `--set section.key=value` overrides, then validates every section
against its dataclass before anything runs, so a typo fails in a second, naming the
file and the key, not an hour into a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from genalign.config.base import ConfigError, load_yaml
from genalign.config.pipelines import get_pipeline


def configs_dir() -> Path:
    env = os.environ.get("GENALIGN_CONFIGS")
    if env:
        return Path(env)
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / "configs").is_dir():
            return root / "configs"
    raise ConfigError("no configs/ directory found; run from the repository root or set GENALIGN_CONFIGS")


def preset_path(pipeline: str, preset: str) -> Path:
    if preset.endswith((".yaml", ".yml")):
        return Path(preset)
    return configs_dir() / pipeline / f"{preset}.yaml"


def parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.beta=500")
    return key.split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `section.key=value` overrides to a nested mapping in place (and return it)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k} is not a mapping")
        node[keys[-1]] = value
    return data


def load_preset(pipeline: str, preset: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The validated, fully explicit arguments of `pipeline` for `preset` (+ overrides)."""
    decl = get_pipeline(pipeline)
    path = preset_path(pipeline, preset)
    if not path.is_file():
        available = sorted(p.stem for p in (configs_dir() / pipeline).glob("*.yaml"))
        raise ConfigError(f"{path}: no such preset; presets of {pipeline}: {available}")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data.setdefault("preset", path.stem)
    apply_overrides(data, overrides)
    sections, scalars = decl.sections, decl.scalars
    unknown = sorted(set(data) - set(sections) - set(scalars))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys are {sorted(sections) + sorted(scalars)}")
    args: dict[str, Any] = {}
    for name, stage in sections.items():
        args[name] = stage.config_class().from_dict(data.get(name) or {}, where=f"{path}: {name}").to_args()
    for name, scalar in scalars.items():
        value = data.get(name, scalar.default)
        if not isinstance(value, scalar.type) or isinstance(value, bool):
            raise ConfigError(f"{path}: {name}: expected {scalar.type.__name__} ({scalar.help}), got {value!r}")
        if scalar.minimum is not None and value < scalar.minimum:
            raise ConfigError(f"{path}: {name}: expected an integer >= {scalar.minimum} ({scalar.help}), got {value}")
        args[name] = value
    return args
