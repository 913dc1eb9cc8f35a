"""Synthetic hands written by two worker processes are the bytes one process writes."""

from pathlib import Path

from genalign.data.synthetic_hands import SyntheticHandsSpec, write_synthetic_dexycb


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_workers_write_what_one_writes(tmp_path):
    spec = SyntheticHandsSpec(subjects=2, sequences_per_subject=3, serials=2, frames_per_sequence=2,
                              left_share=0.5, occluder_share=0.5)
    one = write_synthetic_dexycb(tmp_path / "one", spec)
    two = write_synthetic_dexycb(tmp_path / "two", spec, workers=2)
    assert one == two and one["sequences"] == 6 and one["frames"] == 24
    assert files(tmp_path / "one") == files(tmp_path / "two")
