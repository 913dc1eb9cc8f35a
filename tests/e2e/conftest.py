"""Pipeline runs that several e2e modules read, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from genalign.cli import main


@pytest.fixture(scope="session")
def part_dpo_run(tmp_path_factory) -> Path:
    """part-dpo on its e2e preset through kfp.local with the embedded MLflow store: the
    run directory. test_part_dpo_pipeline checks it against the stages run directly;
    test_tracking_server against the same pipeline on a tracking server."""
    root = tmp_path_factory.mktemp("part-dpo")
    assert main(["run", "part-dpo", "--preset", "e2e", "--pipeline-root", str(root / "kfp")]) == 0
    (run_dir,) = list((root / "kfp").iterdir())
    return run_dir
