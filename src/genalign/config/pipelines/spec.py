"""What a pipeline declaration is made of: stages, preset scalars, resume points.

Torch-free and kfp-free, so listing stages, loading a preset or checking a cluster
profile imports nothing heavy. `genalign.config.pipelines` holds one declaration per
pipeline and the one list every consumer reads.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from genalign.config.base import Config


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: `run(cfg, *, <inputs>, <outputs>, <params>, tracker)` in `module`.

    `name` is the stage's one name: the CLI's, the MLflow child run's and the cluster
    profile's key; the KFP component is `component` (the same words in snake case, whose
    task KFP names `name`), the config class `<Name>Config`.
    """

    name: str
    module: str  # genalign.stages.<package>.<module>, holding run()
    config: str  # "<module>:<Class>", imported only when the config is needed
    inputs: dict[str, str]  # input name -> artifact kind (genalign.artifacts.KINDS)
    outputs: dict[str, str]  # output name -> artifact kind
    params: tuple[str, ...] = ()  # integer parameters of run(): shard, iteration, ...
    fan_in: tuple[str, ...] = ()  # inputs that take a list of artifacts
    optional: tuple[str, ...] = ()  # inputs that may be left out (None)
    help: str = ""
    # Its outputs depend on torch's thread count (it trains: genalign.training.numerics),
    # so the thread count is part of what makes them reusable.
    numerics: bool = False
    # Its trainer runs data-parallel on several processes (genalign.training.distributed):
    # the cluster profile may give it gpus > 1 (one process per GPU) and nodes > 1 (a
    # Kubeflow Trainer TrainJob). A stage without it runs in one process and is refused
    # nodes > 1.
    distributed: bool = False

    @property
    def component(self) -> str:
        return self.name.replace("-", "_")

    def check_names(self, inputs: dict[str, Any], outputs: dict[str, Any], params: dict[str, Any]) -> None:
        """Raise ConfigError unless `inputs`, `outputs` and `params` name what `run()` takes."""
        from genalign.config.base import ConfigError

        for group, names, given, optional in (
            ("input", tuple(self.inputs), inputs, self.optional),
            ("output", tuple(self.outputs), outputs, ()),
            ("parameter", self.params, params, ()),
        ):
            if not set(names) - set(optional) <= set(given) <= set(names):
                raise ConfigError(f"stage {self.name}: {group}s {sorted(given)} given, expected {sorted(names)}"
                                  + (f" (optional: {sorted(optional)})" if optional else ""))

    def config_class(self) -> type[Config]:
        module, _, cls = self.config.partition(":")
        return getattr(importlib.import_module(module), cls)


@dataclasses.dataclass(frozen=True)
class Scalar:
    """A top-level pipeline parameter beside the stage sections."""

    type: type
    default: Any
    help: str
    minimum: int | None = None  # for int scalars


# Every pipeline's record of which preset its arguments came from (the parent MLflow run's
# genalign.preset tag); `load_preset` fills it with the preset's name.
PRESET = Scalar(str, "tiny", "the preset these arguments came from (configs/<pipeline>/<preset>.yaml)")


@dataclasses.dataclass(frozen=True)
class Resume:
    """Outputs of a finished stage that a resumed run imports instead of recomputing.

    `offset` is relative to the iteration resumed at (-1: the iteration before); None for
    stages that run once. An `optional` point is imported when the earlier run finished
    it, and run again otherwise."""

    stage: str
    outputs: tuple[str, ...]
    offset: int | None = None
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """One pipeline: its stages by preset section, its scalars, shape, resume and report."""

    name: str
    description: str
    factory: str  # "pipelines.<module>:make_<name>(profile, **structure)"
    sections: dict[str, Stage]  # preset section -> the stage whose config it is
    scalars: dict[str, Scalar]
    report: str  # the stage whose `report` output is the run's result
    register: str  # the stage whose `registration` output names the registered version
    iterations: tuple[str, str] | None = None  # (section, field): on-policy rounds, unrolled at compile time
    phases: tuple[str, str] | None = None  # (section, field): a list of training phases, one task each
    resume: tuple[Resume, ...] = ()

    @property
    def stages(self) -> dict[str, Stage]:
        return {s.name: s for s in self.sections.values()}

    def docstring(self) -> str:
        """The pipeline function's docstring: kfp turns its `Args:` into the descriptions
        of the pipeline's parameters that the Kubeflow UI shows."""
        lines = [self.description, "", "Args:"]
        for section, stage in self.sections.items():
            lines.append(f"    {section}: config of stage {stage.name} ({stage.help}); its fields: "
                         f"`genalign stage {stage.name} --help`")
        lines += [f"    {name}: {scalar.help}" for name, scalar in self.scalars.items()]
        return "\n".join(lines)

    def structure(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """What the compiled shape depends on: the number of iterations or of training
        phases, if it has any (both are unrolled at compile time)."""
        shape: dict[str, Any] = {}
        if self.iterations is not None:
            section, key = self.iterations
            shape["iterations"] = int(arguments[section][key])
        if self.phases is not None:
            section, key = self.phases
            shape["phases"] = len(arguments[section][key])
        return shape
