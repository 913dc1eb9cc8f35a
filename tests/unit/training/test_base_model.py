"""Base-model identity: sha256 over the files' hashes, independent of where the directory
lives; an adapter on another base fails with both paths."""

import hashlib
import json
import shutil

import pytest

from genalign.storage import ArtifactError
from genalign.training.base_model import GENALIGN_JSON, check_adapter_base, model_dir_sha256

FILES = ("config.json", "model.safetensors")
CONFIG = b'{"hidden": 16}'


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_bytes(CONFIG)
    (d / "model.safetensors").write_bytes(b"weights")
    return d


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hash_of_named_files_by_hand(model_dir):
    lines = f"config.json:{_sha(CONFIG)}\nmodel.safetensors:{_sha(b'weights')}\n"
    assert model_dir_sha256(model_dir, FILES) == _sha(lines.encode())


def test_hash_depends_on_bytes_not_on_location(model_dir, tmp_path):
    copy = shutil.copytree(model_dir, tmp_path / "elsewhere")
    assert model_dir_sha256(copy, FILES) == model_dir_sha256(model_dir, FILES)
    (copy / "model.safetensors").write_bytes(b"weightz")
    assert model_dir_sha256(copy, FILES) != model_dir_sha256(model_dir, FILES)
    (model_dir / "README.md").write_text("not part of the identity")
    assert model_dir_sha256(model_dir, FILES) == model_dir_sha256(
        shutil.copytree(model_dir, tmp_path / "again"), FILES
    )


def test_every_file_sorted_by_relative_path_when_files_is_none(model_dir):
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "a.txt").write_bytes(b"a")
    expected = model_dir_sha256(model_dir, ["config.json", "model.safetensors", "sub/a.txt"])
    assert model_dir_sha256(model_dir) == expected


def test_missing_file_is_named(model_dir, tmp_path):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"not a PartDiT directory \(no model.safetensors\)"):
        model_dir_sha256(model_dir, FILES, kind="PartDiT")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="no files"):
        model_dir_sha256(empty)


def _adapter(tmp_path, meta):
    d = tmp_path / "adapter"
    d.mkdir(exist_ok=True)
    (d / GENALIGN_JSON).write_text(json.dumps({"kind": "adapter", **meta}))
    return d


def test_check_adapter_base(model_dir, tmp_path):
    sha = model_dir_sha256(model_dir, FILES)
    adapter = _adapter(tmp_path, {"base_model": "tiny://dit", "base_model_sha256": sha})
    check_adapter_base(adapter, model_dir, FILES)

    other = shutil.copytree(model_dir, tmp_path / "other")
    (other / "model.safetensors").write_bytes(b"retrained")
    with pytest.raises(ArtifactError, match="trained on base model 'tiny://dit'") as e:
        check_adapter_base(adapter, other, FILES)
    assert str(adapter) in str(e.value) and str(other) in str(e.value)
    assert sha[:16] in str(e.value)


def test_check_adapter_base_needs_a_recorded_base(model_dir, tmp_path):
    with pytest.raises(ArtifactError, match="not a genalign adapter"):
        check_adapter_base(tmp_path, model_dir, FILES)
    adapter = _adapter(tmp_path, {"base_model": "x"})
    with pytest.raises(ArtifactError, match="no base_model_sha256 recorded"):
        check_adapter_base(adapter, model_dir, FILES)
