"""Atomic outputs and manifests."""

import json

import pytest

from genalign.storage import ArtifactError, atomic_dir, read_manifest, write_manifest


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "art"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temp dir left behind
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_manifest_kind_and_hashes(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"a": 1}\n')
    m = write_manifest(tmp_path, kind="samples", counts={"n": 1}, hash_files=["rows.jsonl"])
    assert len(m["hashes"]["rows.jsonl"]) == 64
    assert read_manifest(tmp_path, "samples")["counts"] == {"n": 1}
    with pytest.raises(ArtifactError, match="kind is 'samples', expected one of \\['pairs'\\]"):
        read_manifest(tmp_path, "pairs")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        read_manifest(tmp_path / "missing", "pairs")
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="invalid JSON"):
        read_manifest(tmp_path, "samples")


def test_manifest_rejects_nan(tmp_path):
    with pytest.raises(ValueError):
        write_manifest(tmp_path, kind="x", counts={"bad": float("nan")})
    assert not (tmp_path / "manifest.json").exists()
    json.dumps({})
