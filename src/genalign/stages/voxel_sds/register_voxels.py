"""register-voxels: the optimised map exported to maps/ and registered as an MLflow model version.

What it leaves (`<name>` = `trained_map_<source>_<n>`, `source` from the world's
world.json, `n` one more than the largest n the registry holds for that source):

- `maps/<name>/map.json`: the optimised world (voxel_map's format) whose metadata is the
  map's own (prompt, variant, steps, guidance_scale, seed, source, renderer) plus `name`
  and `lineage`: the pipeline run, the world and prior it came from (the map manifest's
  inputs), the map artifact's content sha256, the report's sha256 and its `eval/*` metrics;
- `maps/registry.json`: `{"maps": [entry, ...]}`, each entry {name, source, n, prompt,
  path (relative to maps/), created (UTC), metrics, sha256, pipeline_run, world, prior,
  report_sha256, model_name, version}. Entries are keyed by `sha256`, the map artifact's
  content digest: a map registered before keeps its entry, its name and its MLflow
  version, so registering it again adds nothing;
- where: `maps_dir` when it is set (it is the maps/ folder itself: a local folder, updated
  under a lock with each file written atomically, or an `s3://` prefix: the map's folder
  uploaded first and registry.json last, one PUT, so a reader never finds an entry whose
  map is missing; two registers writing one s3:// registry at the same moment are not
  serialised, the later write wins), and always a copy in the registration artifact
  (`registration/maps/`: the registry as updated and this map's folder). Without
  `maps_dir` the artifact's registry is the only one, so every map there is n = 1;
- in this run: `map/` (map.json as exported, logits.safetensors and the model card
  genalign.json) and `evaluation/report.json`; a version of `model_name` whose source is
  `map/`, whose tags hold the lineage and the metrics (`eval.prompted_class_wins`, ...).
  The `aliases` move to it, `champion_alias` only when the report's
  `eval/prompted_class_wins` is 1 (the prompted class beat the control run's). A map
  already registered (tag `genalign.map_sha256`) is not registered again and its
  aliases are left where they are.

    genalign stage register-voxels --config cfg.yaml --in world=w --in map=m --in report=r \
        --out registration=g
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genalign.artifacts import (
    DATASET,
    MODEL,
    REGISTRATION,
    REPORT,
    ModelCard,
    content_digest,
    is_remote,
    publish,
    write_model_card,
)
from genalign.config.voxel_sds import RegisterVoxelsConfig
from genalign.data.voxel_map import VoxelMap, read_map, write_map
from genalign.stages import StageResult
from genalign.storage import (
    ArtifactError,
    atomic_dir,
    atomic_write_json,
    read_manifest,
    sha256_file,
    write_manifest,
)
from genalign.tracking import MlflowTracker, Tracker, register_model_version, registry_tracker

REGISTRY = "registry.json"
LOGITS = "logits.safetensors"
WINS = "eval/prompted_class_wins"
CONTENT_TAG = "genalign.map_sha256"
# What every entry holds (this stage writes them all; a hand-edited registry is checked)
_ENTRY_KEYS = {"name": str, "source": str, "n": int, "prompt": str, "path": str, "created": str,
               "metrics": dict, "sha256": str, "pipeline_run": str, "world": str, "prior": str,
               "report_sha256": str, "model_name": str, "version": str}


def run(cfg: RegisterVoxelsConfig, *, world: Path, map: Path, report: Path, registration: Path,
        tracker: Tracker) -> StageResult:
    read_manifest(world, DATASET)
    map_manifest = read_manifest(map, MODEL)
    read_manifest(report, REPORT)
    source = _field(_json(world / "world.json"), "source", world / "world.json")
    optimised = read_map(map / "map.json")
    prompt = _field(optimised.metadata, "prompt", f"{map / 'map.json'}: metadata")
    if not (map / LOGITS).is_file():
        raise ArtifactError(f"{map}: no {LOGITS}; expected an optimise-voxels map")
    metrics = _metrics(report / "report.json")
    wins = metrics[WINS] == 1.0
    digest = content_digest(map)

    tracker, pipeline_run = registry_tracker(tracker)
    store = _store(cfg.maps_dir)
    with store.locked():
        known = store.read()
        entry = next((e for e in known if e["sha256"] == digest), None)
        if entry is None:
            n = 1 + max((e["n"] for e in known if e["source"] == source), default=0)
            name = f"trained_map_{source}_{n}"
            entry = {
                "name": name, "source": source, "n": n, "prompt": prompt, "path": f"{name}/map.json",
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "metrics": metrics, "sha256": digest, "pipeline_run": pipeline_run,
                "world": str(map_manifest["inputs"].get("world", "")),
                "prior": str(map_manifest["inputs"].get("prior", "")),
                "report_sha256": sha256_file(report / "report.json"),
            }
        exported = _exported(optimised, entry)
        version, aliases, reused = _register(cfg, tracker, map, map_manifest, report, exported, entry, wins)
        updated = {**entry, "model_name": cfg.model_name, "version": version}
        if entry in known:  # registered before: the entry keeps its place
            entries = [updated if e["sha256"] == digest else e for e in known]
        else:
            entries = [*known, updated]
        if updated not in known:  # a map registered before and unchanged: nothing to write
            store.write(updated["name"], exported, entries)

    summary = {
        "model_name": cfg.model_name, "version": version, "aliases": aliases,
        "reference": f"mlflow://models/{cfg.model_name}/{version}", "run_id": tracker.run_id,
        "map": updated["name"], "source": source, "n": updated["n"], "prompt": prompt,
        "maps_dir": cfg.maps_dir, "champion": cfg.champion_alias in aliases, "reused": reused,
        "prompted_class_wins": metrics[WINS],
    }
    with atomic_dir(registration) as tmp:
        _write_local(tmp / "maps", updated["name"], exported, entries)
        atomic_write_json(tmp / "registration.json", summary)
        write_manifest(tmp, kind=REGISTRATION, config=cfg.to_dict(),
                       inputs={"world": str(world), "map": str(map), "report": str(report)},
                       hash_files=[f"maps/{REGISTRY}", f"maps/{updated['path']}"])
    return StageResult(metrics={"register/version": float(version), "register/n": float(updated["n"])},
                       summary=summary)


def _exported(optimised: VoxelMap, entry: dict[str, Any]) -> VoxelMap:
    """The map as maps/ holds it: its metadata plus its name and lineage, all from the
    entry, so the same entry always gives the same bytes."""
    lineage = {k: entry[k] for k in ("pipeline_run", "world", "prior", "sha256", "report_sha256", "metrics")}
    lineage["map_sha256"] = lineage.pop("sha256")
    metadata = {**optimised.metadata, "name": entry["name"], "lineage": lineage}
    return VoxelMap(optimised.blocks, world_scale=optimised.world_scale, sequence=optimised.sequence,
                    metadata=metadata)


def _register(cfg: RegisterVoxelsConfig, tracker: MlflowTracker, map: Path, map_manifest: dict,
              report: Path, exported: VoxelMap, entry: dict[str, Any], wins: bool) -> tuple[str, list[str], bool]:
    """(version, its aliases, whether it was registered before) of the map in `model_name`."""
    client = tracker.client
    same = [mv for mv in client.search_model_versions(f"name = '{cfg.model_name}'")
            if mv.tags.get(CONTENT_TAG) == entry["sha256"]]
    if same:
        version = str(min(int(mv.version) for mv in same))
        return version, sorted(client.get_model_version(cfg.model_name, version).aliases), True
    metrics = entry["metrics"]
    with tempfile.TemporaryDirectory(prefix="genalign-register-") as scratch:
        portable = Path(scratch) / "map"
        portable.mkdir()
        write_map(exported, portable / "map.json")
        shutil.copy2(map / LOGITS, portable / LOGITS)
        write_model_card(portable, ModelCard(
            kind="model", method="sds", arch="voxel-map", config=map_manifest["config"],
            metrics={k.removeprefix("eval/"): v for k, v in metrics.items()},
            extra={k: entry[k] for k in ("name", "source", "n", "prompt", "sha256", "world", "prior")},
        ))
        tracker.log_artifact(portable, "map")
    tracker.log_artifact(report / "report.json", "evaluation")
    tags = {
        "genalign.method": "sds",
        "genalign.arch": "voxel-map",
        "genalign.map_name": entry["name"],
        "genalign.map_source": entry["source"],
        "genalign.map_n": str(entry["n"]),
        CONTENT_TAG: entry["sha256"],
        "genalign.prompt": entry["prompt"],
        "genalign.world": entry["world"],
        "genalign.prior": entry["prior"],
        "genalign.report_sha256": entry["report_sha256"],
        "genalign.pipeline_run": entry["pipeline_run"],
    }
    tags.update({k.replace("/", "."): f"{v:.6g}" for k, v in metrics.items()})
    aliases = list(cfg.aliases) + ([cfg.champion_alias] if wins else [])
    shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in list(metrics.items())[:4])
    x, y, z = exported.dims
    version = register_model_version(
        tracker, name=cfg.model_name, artifact_path="map", tags=tags, aliases=aliases,
        description=(f"{entry['name']}: a {x}x{y}x{z} voxel world optimised by score distillation for "
                     f"{entry['prompt']!r} from world {entry['source']!r}; the prompted class "
                     f"{'beat' if wins else 'did not beat'} the control run's ({shown})"),
    )
    return version, aliases, False


# ---------------------------------------------------------------- inputs


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not JSON ({e})") from None


def _field(obj: Any, key: str, where: Any) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ArtifactError(f"{where}: missing field {key!r}")
    return obj[key]


def _metrics(path: Path) -> dict[str, float]:
    """The report's `eval/*` metrics; it must hold `eval/prompted_class_wins` (0 or 1)."""
    metrics = _field(_json(path), "metrics", path)
    if not isinstance(metrics, dict) or WINS not in metrics:
        raise ArtifactError(f"{path}: metrics has no {WINS!r}; expected an evaluate-voxels report")
    if metrics[WINS] not in (0, 1):
        raise ArtifactError(f"{path}: metrics[{WINS!r}] is {metrics[WINS]!r}; expected 0 or 1")
    return {k: float(v) for k, v in metrics.items() if k.startswith("eval/")}


def _check_registry(obj: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(obj, dict) or not isinstance(obj.get("maps"), list):
        raise ArtifactError(f"{where}: expected {{\"maps\": [entry, ...]}}")
    for i, entry in enumerate(obj["maps"]):
        for key, kind in _ENTRY_KEYS.items():
            if not isinstance(entry, dict) or not isinstance(entry.get(key), kind):
                raise ArtifactError(f"{where}: maps[{i}].{key}: expected a {kind.__name__}, got "
                                    f"{entry.get(key) if isinstance(entry, dict) else entry!r}")
    return obj["maps"]


# ---------------------------------------------------------------- maps/


def _write_local(maps: Path, name: str, exported: VoxelMap, entries: list[dict[str, Any]]) -> None:
    """The map's folder, then the registry that names it, each replaced atomically."""
    with atomic_dir(maps / name) as tmp:
        write_map(exported, tmp / "map.json")
    atomic_write_json(maps / REGISTRY, {"maps": entries})


class _NoStore:
    """No maps_dir: the registration artifact's registry is the only one."""

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        yield

    def read(self) -> list[dict[str, Any]]:
        return []

    def write(self, name: str, exported: VoxelMap, entries: list[dict[str, Any]]) -> None:
        pass


class _LocalStore:
    def __init__(self, maps: Path) -> None:
        self.maps = maps

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Registers sharing this folder take turns: each reads the registry and writes
        its entry under the lock, so two of them never take the same n."""
        self.maps.mkdir(parents=True, exist_ok=True)
        with open(self.maps / ".registry.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> list[dict[str, Any]]:
        path = self.maps / REGISTRY
        return _check_registry(_json(path), str(path)) if path.is_file() else []

    def write(self, name: str, exported: VoxelMap, entries: list[dict[str, Any]]) -> None:
        _write_local(self.maps, name, exported, entries)


class _S3Store:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        yield  # the object store has no lock (module doc)

    def read(self) -> list[dict[str, Any]]:
        # one object, not the whole prefix that artifacts.materialise would download
        from botocore.exceptions import ClientError

        from genalign.artifacts import _s3_client, _split

        bucket, prefix = _split(f"{self.uri}/{REGISTRY}")
        try:
            body = _s3_client().get_object(Bucket=bucket, Key=prefix)["Body"].read()
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return []
            raise
        where = f"{self.uri}/{REGISTRY}"
        try:
            return _check_registry(json.loads(body), where)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{where}: not JSON ({e})") from None

    def write(self, name: str, exported: VoxelMap, entries: list[dict[str, Any]]) -> None:
        with tempfile.TemporaryDirectory(prefix="genalign-maps-") as scratch:
            folder, registry = Path(scratch) / name, Path(scratch) / "registry"
            folder.mkdir()
            write_map(exported, folder / "map.json")
            publish(folder, f"{self.uri}/{name}")
            registry.mkdir()
            atomic_write_json(registry / REGISTRY, {"maps": entries})
            publish(registry, self.uri)


def _store(maps_dir: str | None) -> _NoStore | _LocalStore | _S3Store:
    if maps_dir is None:
        return _NoStore()
    return _S3Store(maps_dir) if is_remote(maps_dir) else _LocalStore(Path(maps_dir))
