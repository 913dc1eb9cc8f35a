"""The penetration scorer's worker processes give the scores one process gives."""

import dataclasses

import pytest

from genalign.config.score import PenetrationConfig
from genalign.scorers import penetration
from genalign.scorers.penetration import PenetrationScorer

UNIT = ([0, 0, 0], [1, 1, 1])


def box(lo, hi):
    import trimesh

    return trimesh.creation.box(bounds=[lo, hi])


def test_parallel_and_serial_scores_are_identical(tmp_path, monkeypatch):
    from genalign.models.part_codec import save_glb

    paths = []
    for i in range(4):
        path = tmp_path / f"object_{i}.glb"
        shift = 0.25 * i
        save_glb([box(*UNIT), box([1 - shift, 0.1, 0.1], [2 - shift, 0.9, 0.9])], path)
        paths.append(path)
    (tmp_path / "broken.glb").write_bytes(b"not a glb")
    paths.append(tmp_path / "broken.glb")
    pools = []

    class CountedPool(penetration.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(penetration, "ProcessPoolExecutor", CountedPool)
    serial = PenetrationScorer(PenetrationConfig(workers=1)).score_files(paths)
    assert pools == []
    # worker_start_s 0: the pool always pays, so it starts at once.
    parallel = PenetrationScorer(PenetrationConfig(workers=2, worker_start_s=0.0)).score_files(paths)
    assert len(pools) == 1
    assert [dataclasses.asdict(r) for r in serial] == [dataclasses.asdict(r) for r in parallel]
    assert [r.score for r in serial[:4]] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert serial[4].status == "failed" and "broken.glb" in serial[4].error
