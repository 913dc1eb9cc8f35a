"""KFP pipelines: compositions of components, one module per pipeline, no logic.

`PIPELINES` maps the pipeline name used by `genalign run/compile` to its function.
"""

PIPELINE_MODULES = {"part-dpo": "pipelines.part_dpo:part_dpo"}
