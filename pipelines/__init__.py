"""KFP pipelines: compositions of components, one module per pipeline, no logic.

Each module has a factory `make_<pipeline>(profile: dict | None, **structure)` that
returns the pipeline function with a cluster profile's settings applied (none for
`genalign run`); the pipelines' declarations (`genalign.config.pipelines`) name it.
Compiled IR of each pipeline (tiny preset, no profile) is kept in
`pipelines/compiled/<name>.yaml` (`make pipelines`).
"""
