"""The lean GLB reader gives the arrays `load_glb` gives, and says what is wrong with a
file that is not a GLB of parts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genalign.models.part_codec import PartParams, load_glb, part_mesh, read_glb_parts, save_glb


def parts(seed: int, subdivide: bool = False):
    rng = np.random.default_rng(seed)
    meshes = []
    for kind in ("box", "cylinder", "box"):
        mesh = part_mesh(PartParams(kind, tuple(rng.uniform(-1, 1, 3)), tuple(rng.uniform(0.05, 0.5, 3)),
                                    float(rng.uniform(0, math.pi))))
        meshes.append(mesh.subdivide() if subdivide else mesh)
    return meshes


def same_as_load_glb(path):
    read = read_glb_parts(path)
    loaded = load_glb(path)
    assert len(read) == len(loaded)
    for (vertices, faces), mesh in zip(read, loaded, strict=True):
        assert vertices.dtype == np.float64 and faces.dtype == np.int64
        assert np.array_equal(vertices, np.asarray(mesh.vertices))
        assert np.array_equal(faces, np.asarray(mesh.faces))


@pytest.mark.parametrize("subdivide", [False, True])
def test_arrays_are_load_glbs_bit_for_bit(tmp_path, subdivide):
    path = tmp_path / "o.glb"
    save_glb(parts(0, subdivide), path)
    same_as_load_glb(path)


def test_a_layout_save_glb_does_not_write_goes_through_trimesh(tmp_path):
    import trimesh

    scene = trimesh.Scene()
    for i, mesh in enumerate(parts(1)):
        transform = trimesh.transformations.translation_matrix([i, 0.5, 0])
        scene.add_geometry(mesh, node_name=f"part_{i:02d}", geom_name=f"part_{i:02d}", transform=transform)
    path = tmp_path / "moved.glb"
    path.write_bytes(scene.export(file_type="glb"))
    same_as_load_glb(path)


def test_bad_files_name_the_file_and_the_fault(tmp_path):
    good = tmp_path / "good.glb"
    save_glb(parts(2), good)
    data = good.read_bytes()
    with pytest.raises(FileNotFoundError):
        read_glb_parts(tmp_path / "missing.glb")
    (tmp_path / "text.glb").write_bytes(b"glTF this is not a binary gltf")
    with pytest.raises(ValueError, match=r"text\.glb: cannot read GLB: not a binary glTF 2\.0 file"):
        read_glb_parts(tmp_path / "text.glb")
    (tmp_path / "cut.glb").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.glb: .*truncated"):
        read_glb_parts(tmp_path / "cut.glb")
    (tmp_path / "empty.glb").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.glb: .*shorter than a GLB header"):
        read_glb_parts(tmp_path / "empty.glb")
