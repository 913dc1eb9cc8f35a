"""One of N processes of a distributed stage started on this node: `run_stage` starts
`python -m torch.distributed.run --standalone --nproc-per-node N -m
genalign.stages.worker --spec spec.json` when the stage's task has N GPUs
(GENALIGN_PROCESSES) and is not already under torchrun.

`run_stage` has already checked the config, materialised the inputs and chosen where the
outputs go; each worker only calls the stage's `run()` on those local paths. Rank 0 writes
the outputs and `result` (the stage's metrics and summary, strict JSON) and logs its steps
to the stage's MLflow run (`run_id`); the other ranks write their outputs into a scratch
directory that is dropped and log nowhere. `run_stage` then seals and publishes as for
one process.

spec.json: {"stage": name, "config": {...}, "paths": {name: path | [paths] | null},
"params": {name: int}, "result": path, "run_id": MLflow run id | null}
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from genalign.training.launch import is_main_process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genalign.stages.worker",
                                     description="One process of a distributed stage (started by run_stage).")
    parser.add_argument("--spec", required=True, type=Path, help="the worker's spec.json")
    args = parser.parse_args(argv)

    from genalign.config.pipelines import get_stage
    from genalign.stages import _encode
    from genalign.storage import atomic_write_text
    from genalign.tracking import MlflowTracker, NullTracker
    from genalign.training.distributed import teardown

    spec = json.loads(args.spec.read_text())
    stage = get_stage(spec["stage"])
    cfg = stage.config_class().from_dict(spec["config"], where=f"{args.spec}: config")
    main_process = is_main_process()
    with tempfile.TemporaryDirectory(prefix=f"genalign-{stage.name}-rank-") as scratch:
        kwargs: dict = {}
        for key, value in spec["paths"].items():
            if key in stage.outputs and not main_process:
                kwargs[key] = Path(scratch) / key  # only rank 0 writes the outputs
            elif isinstance(value, list):
                kwargs[key] = [Path(v) for v in value]
            else:
                kwargs[key] = None if value is None else Path(value)
        kwargs.update(spec["params"])
        tracker = MlflowTracker(spec["run_id"]) if main_process and spec["run_id"] else NullTracker()
        module = importlib.import_module(stage.module)
        result = module.run(cfg, **kwargs, tracker=tracker)
    if main_process:
        atomic_write_text(Path(spec["result"]), json.dumps(_encode(result)))
    teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
