"""prepare-voxels and register-voxels called through run_stage.

prepare-voxels writes the world, its training and held-out cameras and world.json for a
ground plane, a source map.json (resized, extent kept; also from s3://) and a cameras
folder; every bad input (a map or cameras file that does not match its format, an init
map without a source, a world_scale that would change a source's extent) stops it with
an error naming the file and the field before any output exists. register-voxels exports
maps/trained_map_<source>_<n>/map.json with its lineage, keeps maps/registry.json keyed
by the map's content (a map registered again adds no entry and no MLflow version), and
moves the champion alias only when the prompted class wins. The maps and reports given to
register-voxels are made here, in the optimise-voxels and evaluate-voxels formats.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from genalign.config.base import ConfigError
from genalign.config.presets import load_preset
from genalign.data.voxel_map import VoxelMap, VoxelMapError, read_map, write_map
from genalign.render.cameras import CameraError, orbit_cameras, read_cameras, write_cameras
from genalign.stages import run_stage
from genalign.storage import write_manifest

pytestmark = pytest.mark.integration

PREPARE = load_preset("voxel-sds", "e2e")["prepare"]


def prepare(tmp_path: Path, **changes) -> Path:
    out = tmp_path / "world"
    run_stage("prepare-voxels", {**PREPARE, **changes}, inputs={}, outputs={"world": out})
    return out


def source_map(dims=(16, 8, 16), world_scale=1.0) -> VoxelMap:
    blocks = np.zeros(dims, dtype=np.uint8)
    blocks[:, 0, :] = 1  # Grass ground
    blocks[6:10, 1:6, 6:10] = 3  # a Stone pillar
    return VoxelMap(blocks, world_scale=world_scale, sequence=3, metadata={"prompt": "a pillar"})


# ---------------------------------------------------------------- prepare-voxels


def test_a_ground_world_with_orbit_views(tmp_path):
    world = prepare(tmp_path)
    start = read_map(world / "map.json")
    assert start.dims == (8, 8, 8) and start.world_scale == 2.0
    assert start.count == 64 and set(np.unique(start.blocks[:, 0, :])) == {1}  # the Grass layer only
    train, heldout = read_cameras(world / "cameras.json"), read_cameras(world / "heldout_cameras.json")
    assert (len(train), len(heldout)) == (8, 2) and (train.width, train.height) == (32, 32)
    # the held-out orbit is another seed: none of its views is a training view
    assert not any(np.allclose(h, t, atol=1e-4) for h in heldout.world_to_camera.numpy()
                   for t in train.world_to_camera.numpy())
    info = json.loads((world / "world.json").read_text())
    assert info == {"source": "ground", "source_path": None, "init": "ground", "dims": [8, 8, 8],
                    "world_scale": 2.0, "views": 8, "heldout_views": 2, "image_size": [32, 32]}
    manifest = json.loads((world / "manifest.json").read_text())
    assert manifest["kind"] == "dataset" and manifest["counts"] == {"blocks": 64, "views": 8, "heldout_views": 2}


def test_a_source_map_is_resized_to_dims_keeping_its_extent(tmp_path):
    folder = tmp_path / "worlds" / "pillar"
    folder.mkdir(parents=True)
    write_map(source_map(), folder / "map.json")
    # 16 voxels of 1.0 on 8 voxels: 2.0 a voxel keeps the world 16 units wide
    world = prepare(tmp_path, init="map", source=str(folder / "map.json"), dims=[8, 8, 8], world_scale=2.0)
    start = read_map(world / "map.json")
    assert start.dims == (8, 8, 8) and start.world_scale == 2.0
    assert start.metadata == {"prompt": "a pillar"} and start.sequence == 3
    assert (start.blocks[3:5, 1:6, 3:5] == 3).all() and start.blocks[0, 1:, 0].max() == 0
    info = json.loads((world / "world.json").read_text())
    assert info["source"] == "pillar" and info["init"] == "map" and info["source_path"] == str(folder / "map.json")


def test_a_source_map_file_is_named_after_its_stem_and_kept_at_its_dims(tmp_path):
    write_map(source_map((8, 8, 8), world_scale=2.0), tmp_path / "my castle.json")
    world = prepare(tmp_path, init="map", source=str(tmp_path / "my castle.json"))
    assert read_map(world / "map.json") == source_map((8, 8, 8), world_scale=2.0)
    assert json.loads((world / "world.json").read_text())["source"] == "my-castle"


def test_a_world_scale_that_would_change_the_sources_extent_is_refused(tmp_path):
    write_map(source_map(), tmp_path / "map.json")
    with pytest.raises(ConfigError, match=r"world_scale: 3\.0, .* only at world_scale 2; set world_scale: 2"):
        prepare(tmp_path, init="map", source=str(tmp_path / "map.json"), world_scale=3.0)
    assert not (tmp_path / "world").exists()


def test_a_cameras_folder_gives_the_views(tmp_path):
    cams = tmp_path / "cams"
    train = orbit_cameras(3, (8, 8, 8), world_scale=2.0, size=48, seed=5)
    heldout = orbit_cameras(2, (8, 8, 8), world_scale=2.0, size=48, seed=6)
    write_cameras(train, cams / "cameras.json")
    write_cameras(heldout, cams / "heldout_cameras.json")
    world = prepare(tmp_path, cameras=str(cams))
    got = read_cameras(world / "cameras.json")
    assert len(got) == 3 and np.allclose(got.world_to_camera, train.world_to_camera, atol=1e-6)
    assert np.allclose(read_cameras(world / "heldout_cameras.json").world_to_camera, heldout.world_to_camera,
                       atol=1e-6)
    assert json.loads((world / "world.json").read_text())["image_size"] == [48, 48]

    # without held-out views of its own, the held-out orbit (orbit.size) must match its size
    (cams / "heldout_cameras.json").unlink()
    with pytest.raises(CameraError, match=r"orbit\.heldout \(orbit\.size 32\): held-out images are 32x32, "
                                          r"the training views' .*cams/cameras\.json\) 48x48"):
        prepare(tmp_path / "other", cameras=str(cams))
    world = prepare(tmp_path / "same", cameras=str(cams), orbit={**PREPARE["orbit"], "size": 48})
    assert len(read_cameras(world / "heldout_cameras.json")) == 2


def map_file(blocks: list, **top) -> dict:
    return {"worldConfig": {"dimensions": {"x": 8, "y": 8, "z": 8}, "worldScale": 2.0}, "blocks": blocks, **top}


BAD_MAPS = [
    (map_file([{"position": [0, 0, 0], "blockType": "Grass"}, {"position": [3, 8, 1], "blockType": "Stone"}]),
     r"map\.json: blocks\[1\]\.position\[1\]: y = 8 is outside the world; expected 0 <= y < 8"),
    (map_file([{"position": [0, 0, 0], "blockType": "Lava"}]),
     r"map\.json: blocks\[0\]\.blockType: unknown material 'Lava'"),
    (map_file([{"position": [1, 0, 1], "blockType": "Grass"}, {"position": [1, 0, 1], "blockType": "Sand"}]),
     r"map\.json: blocks\[0\]\.position and blocks\[1\]\.position are both \[1, 0, 1\]"),
    ({"blocks": []}, r"map\.json: missing field 'worldConfig'"),
]


@pytest.mark.parametrize("content, message", BAD_MAPS, ids=["outside", "block-type", "duplicate", "no-config"])
def test_a_bad_map_stops_before_any_output(tmp_path, content, message):
    (tmp_path / "map.json").write_text(json.dumps(content))
    with pytest.raises(VoxelMapError, match=message):
        prepare(tmp_path, init="map", source=str(tmp_path / "map.json"))
    assert not (tmp_path / "world").exists()


def camera_file(**view_changes) -> dict:
    """A cameras.json of two views, the second one changed."""
    good = {"name": "v0", "width": 32, "height": 32, "intrinsics": [[40, 0, 16], [0, 40, 16], [0, 0, 1]],
            "world_to_camera": np.eye(4).tolist()}
    return {"convention": "opencv", "views": [good, {**good, "name": "v1", **view_changes}]}


SINGULAR = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 5], [0, 0, 0, 1]]  # the rotation's third row is 0


@pytest.mark.parametrize("content, message", [
    (camera_file(world_to_camera=SINGULAR),
     r"cameras\.json: views\[1\]\.world_to_camera: the rotation is singular .* not invertible"),
    (camera_file(width=0), r"cameras\.json: views\[1\]: width must be an integer in \[1, 4096\], got 0"),
    (camera_file(height=5000), r"cameras\.json: views\[1\]: height must be an integer in \[1, 4096\], got 5000"),
], ids=["singular", "zero-width", "too-tall"])
def test_a_bad_cameras_file_stops_before_any_output(tmp_path, content, message):
    (tmp_path / "cams").mkdir()
    (tmp_path / "cams" / "cameras.json").write_text(json.dumps(content))
    with pytest.raises(CameraError, match=message):
        prepare(tmp_path, cameras=str(tmp_path / "cams"))
    assert not (tmp_path / "world").exists()


def test_a_missing_cameras_file_or_source_is_named(tmp_path):
    (tmp_path / "cams").mkdir()
    with pytest.raises(CameraError, match=r"cams/cameras\.json: cameras file not found"):
        prepare(tmp_path, cameras=str(tmp_path / "cams"))
    with pytest.raises(VoxelMapError, match=r"nowhere/map\.json: map file not found"):
        prepare(tmp_path, init="map", source=str(tmp_path / "nowhere" / "map.json"))
    assert not (tmp_path / "world").exists()


def test_init_map_needs_a_source_and_only_it_takes_one(tmp_path):
    with pytest.raises(ConfigError, match=r"source: needed exactly when init is 'map' \(init 'map', source None\)"):
        prepare(tmp_path, init="map")
    with pytest.raises(ConfigError, match=r"source: needed exactly when init is 'map' \(init 'ground'"):
        prepare(tmp_path, source="x/map.json")
    assert not (tmp_path / "world").exists()


@pytest.fixture
def s3(moto_s3):
    """An in-process S3 (moto) with the bucket "worlds"."""
    moto_s3.create_bucket(Bucket="worlds")
    return moto_s3


def test_a_source_and_cameras_on_s3(tmp_path, s3):
    write_map(source_map((8, 8, 8), world_scale=2.0), tmp_path / "map.json")
    s3.upload_file(str(tmp_path / "map.json"), "worlds", "castle/map.json")
    write_cameras(orbit_cameras(2, (8, 8, 8), world_scale=2.0, size=32, seed=1), tmp_path / "cameras.json")
    s3.upload_file(str(tmp_path / "cameras.json"), "worlds", "views/cameras.json")
    world = prepare(tmp_path, init="map", source="s3://worlds/castle/map.json", cameras="s3://worlds/views")
    assert read_map(world / "map.json") == source_map((8, 8, 8), world_scale=2.0)
    assert len(read_cameras(world / "cameras.json")) == 2
    assert json.loads((world / "world.json").read_text())["source"] == "castle"
    # errors name the URI, not the scratch copy
    s3.put_object(Bucket="worlds", Key="bad/map.json", Body=json.dumps({"blocks": []}).encode())
    with pytest.raises(VoxelMapError, match=r"^s3://worlds/bad/map\.json: missing field 'worldConfig'"):
        prepare(tmp_path / "bad", init="map", source="s3://worlds/bad/map.json")


# ---------------------------------------------------------------- register-voxels


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return prepare(tmp_path_factory.mktemp("register-world"))


def fake_map(out: Path, *, seed: int, prompt: str = "a stone tower") -> Path:
    """A map artifact as optimise-voxels writes it: map.json (its metadata), the logits,
    the trajectory and the manifest naming its inputs."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    blocks = np.zeros((8, 8, 8), dtype=np.uint8)
    blocks[:, 0, :] = 1
    blocks[3:5, 1:1 + int(rng.integers(2, 7)), 3:5] = 3
    out.mkdir(parents=True)
    write_map(VoxelMap(blocks, world_scale=2.0, metadata={
        "prompt": prompt, "variant": 0, "steps": 4, "guidance_scale": 50.0, "seed": seed, "source": "ground",
        "renderer": "torch"}), out / "map.json")
    save_file({"occupancy": rng.normal(size=(8, 8, 8)).astype(np.float32),
               "materials": rng.normal(size=(8, 8, 8, 7)).astype(np.float32)}, str(out / "logits.safetensors"))
    (out / "trajectory.json").write_text(json.dumps([{"step": 0, "loss": 1.0}]))
    write_manifest(out, kind="model", config={"prompt": prompt, "steps": 4},
                   inputs={"world": "s3://runs/r1/world", "prior": "s3://runs/r1/prior"})
    return out


def fake_report(out: Path, *, wins: int) -> Path:
    out.mkdir(parents=True)
    metrics = {"eval/prompted_class_wins": float(wins), "eval/prompted_class_score": 0.7,
               "eval/control_class_score": 0.4, "eval/floating_share": 0.0, "eval/gate_passed": float(wins)}
    (out / "report.json").write_text(json.dumps({"title": "voxel-sds", "metrics": metrics}))
    write_manifest(out, kind="report", hash_files=["report.json"])
    return out


def register(config: dict, world: Path, map_dir: Path, report: Path, out: Path):
    return run_stage("register-voxels", config, inputs={"world": world, "map": map_dir, "report": report},
                     outputs={"registration": out})


def test_register_numbers_maps_per_source_and_moves_the_champion_only_on_a_win(world, tmp_path):
    from mlflow.tracking import MlflowClient

    from genalign.tracking import tracking_uri

    name = "genalign-voxel-map-registry-test"
    config = {"model_name": name, "maps_dir": str(tmp_path / "maps")}
    first = register(config, world, fake_map(tmp_path / "m1", seed=1), fake_report(tmp_path / "r1", wins=1),
                     tmp_path / "g1")
    second = register(config, world, fake_map(tmp_path / "m2", seed=2, prompt="a sand pyramid"),
                      fake_report(tmp_path / "r2", wins=0), tmp_path / "g2")
    assert (first.summary["map"], second.summary["map"]) == ("trained_map_ground_1", "trained_map_ground_2")
    assert first.summary["aliases"] == ["candidate", "champion"] and second.summary["aliases"] == ["candidate"]

    maps = tmp_path / "maps"
    registry = json.loads((maps / "registry.json").read_text())["maps"]
    assert [(e["name"], e["source"], e["n"], e["prompt"], e["version"]) for e in registry] == [
        ("trained_map_ground_1", "ground", 1, "a stone tower", first.summary["version"]),
        ("trained_map_ground_2", "ground", 2, "a sand pyramid", second.summary["version"])]
    assert registry[0]["path"] == "trained_map_ground_1/map.json" and registry[0]["created"].endswith("+00:00")
    assert registry[0]["metrics"]["eval/prompted_class_wins"] == 1.0
    assert not [p.name for p in maps.iterdir() if p.name.endswith(".tmp")]  # written atomically

    exported = read_map(maps / "trained_map_ground_1" / "map.json")
    original = read_map(tmp_path / "m1" / "map.json")
    assert np.array_equal(exported.blocks, original.blocks)
    lineage = exported.metadata.pop("lineage")
    assert exported.metadata == {**original.metadata, "name": "trained_map_ground_1"}
    assert lineage["prior"] == "s3://runs/r1/prior" and lineage["world"] == "s3://runs/r1/world"
    assert lineage["map_sha256"] == registry[0]["sha256"] and lineage["metrics"]["eval/prompted_class_score"] == 0.7
    assert lineage["pipeline_run"].startswith("manual-")

    # the registration artifact holds a copy: the registry as updated and this map's folder
    copy = tmp_path / "g2" / "maps"
    assert json.loads((copy / "registry.json").read_text())["maps"] == registry
    assert (copy / "trained_map_ground_2" / "map.json").read_bytes() == \
        (maps / "trained_map_ground_2" / "map.json").read_bytes()

    client = MlflowClient(tracking_uri())
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == first.summary["version"]
    assert champion.tags["genalign.map_name"] == "trained_map_ground_1"
    assert champion.tags["eval.prompted_class_wins"] == "1"
    assert str(client.get_model_version_by_alias(name, "candidate").version) == second.summary["version"]
    files = {a.path for a in client.list_artifacts(champion.run_id, "map")}
    assert files == {"map/map.json", "map/logits.safetensors", "map/genalign.json"}


def test_registering_the_same_map_again_adds_no_entry_and_no_version(world, tmp_path):
    from mlflow.tracking import MlflowClient

    from genalign.tracking import tracking_uri

    name = "genalign-voxel-map-idempotent-test"
    config = {"model_name": name, "maps_dir": str(tmp_path / "maps")}
    map_dir, report = fake_map(tmp_path / "m", seed=3), fake_report(tmp_path / "r", wins=1)
    first = register(config, world, map_dir, report, tmp_path / "g1")
    before = (tmp_path / "maps" / "registry.json").read_bytes()
    # the same output again: run_stage reuses it
    assert register(config, world, map_dir, report, tmp_path / "g1").reused
    # another output (another pipeline run) of the same map: the registry keys it by content
    again = register(config, world, map_dir, report, tmp_path / "g2")
    assert not again.reused and again.summary["reused"]
    assert again.summary["map"] == "trained_map_ground_1" and again.summary["version"] == first.summary["version"]
    assert (tmp_path / "maps" / "registry.json").read_bytes() == before
    assert len(MlflowClient(tracking_uri()).search_model_versions(f"name = '{name}'")) == 1


def test_without_maps_dir_the_registration_artifact_holds_the_export(world, tmp_path):
    result = register({"model_name": "genalign-voxel-map-nodir-test"}, world, fake_map(tmp_path / "m", seed=4),
                      fake_report(tmp_path / "r", wins=0), tmp_path / "g")
    assert result.summary["map"] == "trained_map_ground_1" and result.summary["aliases"] == ["candidate"]
    (entry,) = json.loads((tmp_path / "g" / "maps" / "registry.json").read_text())["maps"]
    assert entry["name"] == "trained_map_ground_1"
    assert read_map(tmp_path / "g" / "maps" / "trained_map_ground_1" / "map.json").metadata["name"] == entry["name"]


def test_maps_on_s3(world, tmp_path, s3):
    config = {"model_name": "genalign-voxel-map-s3-test", "maps_dir": "s3://worlds/maps"}
    register(config, world, fake_map(tmp_path / "m1", seed=5), fake_report(tmp_path / "r1", wins=0), tmp_path / "g1")
    second = register(config, world, fake_map(tmp_path / "m2", seed=6), fake_report(tmp_path / "r2", wins=1),
                      tmp_path / "g2")
    assert second.summary["map"] == "trained_map_ground_2"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="worlds", Prefix="maps/")["Contents"]}
    assert keys == {"maps/registry.json", "maps/trained_map_ground_1/map.json", "maps/trained_map_ground_2/map.json"}
    registry = json.loads(s3.get_object(Bucket="worlds", Key="maps/registry.json")["Body"].read())["maps"]
    assert [e["n"] for e in registry] == [1, 2]


def test_register_refuses_a_report_without_the_verdict_before_registering(world, tmp_path):
    report = tmp_path / "r"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({"metrics": {"eval/prompted_class_score": 0.5}}))
    write_manifest(report, kind="report")
    with pytest.raises(Exception, match=r"report\.json: metrics has no 'eval/prompted_class_wins'"):
        register({"model_name": "genalign-voxel-map-bad-test", "maps_dir": str(tmp_path / "maps")}, world,
                 fake_map(tmp_path / "m", seed=7), report, tmp_path / "g")
    assert not (tmp_path / "g").exists() and not (tmp_path / "maps").exists()
