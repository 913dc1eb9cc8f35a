"""KFP pipelines: compositions of components, one module per pipeline, no logic.

`PIPELINE_MODULES` maps the pipeline name used by `genalign run/compile/submit` to its
factory, `make_<pipeline>(profile: dict | None)`, which returns the pipeline function
with a cluster profile's settings applied (none for `genalign run`). Compiled IR of each
pipeline (tiny preset, no profile) is kept in `pipelines/compiled/<name>.yaml`.
"""

PIPELINE_MODULES = {
    "part-dpo": "pipelines.part_dpo:make_part_dpo",
    "planner-dpo": "pipelines.planner_dpo:make_planner_dpo",
}
