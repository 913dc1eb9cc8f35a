"""The Kubernetes manifests of k8s/, checked without a cluster.

Both overlays are rendered with `kubectl kustomize` and every object is validated
strictly (unknown fields are errors) against the Kubernetes OpenAPI schemas bundled in
kubernetes-validate. Then the properties the manifests promise: every container
constrained and non-root, no Secret in the renders, the pipeline Role exactly as small
as written, names that agree across files. The TrainJob example is validated with the
Kubeflow Trainer API models (kubeflow-trainer-api). What needs a cluster (admission,
CRDs, controllers, pulling images) is not checked here.
"""

import copy
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "gpu")
# The oldest Kubernetes release still maintained upstream when these manifests were
# written, and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
NAMESPACE = "genalign"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize overlays cannot be rendered")
    out = {}
    for overlay in OVERLAYS:
        proc = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay}:\n{proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def objects(render: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render if o["kind"] == kind}


def one(render: list[dict], kind: str, name: str) -> dict:
    found = objects(render, kind)
    assert name in found, f"no {kind}/{name} in the render; found {sorted(found)}"
    return found[name]


def pod_spec(workload: dict) -> dict:
    if workload["kind"] == "Pod":
        return workload["spec"]
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def parse_quantity(q: str | int) -> float:
    """A Kubernetes quantity ("250m", "2Gi", "4") as a number, for comparisons."""
    units = {
        "m": 1e-3,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
    }
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m and (m.group(2) == "" or m.group(2) in units), f"unparsed quantity {q!r}"
    return float(m.group(1)) * units.get(m.group(2), 1)


# --- rendering and schema ---------------------------------------------------------


EXPECTED = {
    ("Namespace", "genalign"),
    ("ConfigMap", "genalign-tracking"),
    ("ConfigMap", "kfp-launcher"),
    ("ServiceAccount", "genalign-pipeline"),
    ("Role", "genalign-pipeline"),
    ("RoleBinding", "genalign-pipeline"),
    ("PersistentVolumeClaim", "genalign-model-cache"),
    ("Service", "postgres"),
    ("StatefulSet", "postgres"),
    ("NetworkPolicy", "postgres"),
    ("Service", "mlflow"),
    ("Deployment", "mlflow"),
    ("Ingress", "mlflow"),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects_in_one_namespace(renders, overlay):
    render = renders[overlay]
    got = {(o["kind"], o["metadata"]["name"]) for o in render}
    extra = {("ConfigMap", "genalign-cluster-profile")} if overlay == "gpu" else set()
    assert got == EXPECTED | extra
    for o in render:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, (o["kind"], o["metadata"]["name"])
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "genalign"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schema_strictly(renders, overlay, version):
    for o in renders[overlay]:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(
                f"{o['kind']}/{o['metadata']['name']} ({overlay}, Kubernetes {version}): "
                f"{e.message} at {'/'.join(map(str, e.path))}"
            ) from None


def test_strict_validation_rejects_an_unknown_field(renders):
    """The validator really is strict: a misspelt field fails."""
    deployment = copy.deepcopy(one(renders["dev"], "Deployment", "mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# --- workloads --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_a_restricted_security_context(renders, overlay):
    workloads = [o for o in renders[overlay] if o["kind"] in WORKLOAD_KINDS]
    assert {w["metadata"]["name"] for w in workloads} == {"mlflow", "postgres"}
    for w in workloads:
        spec = pod_spec(w)
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, w["metadata"]["name"]
        for c in containers(spec):
            where = f"{w['kind']}/{w['metadata']['name']} container {c['name']} ({overlay})"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{where}: resources.{part}"
            for r in ("cpu", "memory"):
                assert parse_quantity(res["requests"][r]) <= parse_quantity(res["limits"][r]), where
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) > 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert "livenessProbe" in c and "readinessProbe" in c, where
            assert not c["image"].endswith(":latest") and ":" in c["image"], where


def test_probes_are_what_each_server_answers(renders):
    render = renders["dev"]
    mlflow = pod_spec(one(render, "Deployment", "mlflow"))["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert mlflow[probe]["httpGet"] == {"path": "/health", "port": "http"}
    postgres = pod_spec(one(render, "StatefulSet", "postgres"))["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "pg_isready" in " ".join(postgres[probe]["exec"]["command"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_variable_references_resolve_to_variables_defined_before(renders, overlay):
    """$(VAR) in env values sees only earlier entries; in args, any entry.

    Overlay patches reorder env lists, so this is checked on the renders.
    """
    for w in (o for o in renders[overlay] if o["kind"] in WORKLOAD_KINDS):
        for c in containers(pod_spec(w)):
            defined: list[str] = []
            for e in c.get("env", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
                    assert ref in defined, (
                        f"{c['name']}: {e['name']} uses $({ref}) before it is set"
                    )
                defined.append(e["name"])
            for arg in c.get("command", []) + c.get("args", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    assert ref in defined, f"{c['name']}: argument {arg!r} uses unset $({ref})"


def test_mlflow_server_matches_the_project_pin_and_its_image_recipe(renders):
    pin = re.search(r'"mlflow==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    c = pod_spec(one(renders["dev"], "Deployment", "mlflow"))["containers"][0]
    assert c["image"] == f"ghcr.io/genalign/mlflow-server:{pin}"
    dockerfile = (K8S / "mlflow-server" / "Dockerfile").read_text()
    installs = re.search(r"^RUN pip install (.+)$", dockerfile, re.MULTILINE).group(1).split()
    assert f"mlflow=={pin}" in installs
    assert {i.split("==")[0] for i in installs} == {"mlflow", "psycopg2-binary", "boto3"}
    assert all("==" in i for i in installs), "every package pinned"
    assert re.search(r"^USER [1-9][0-9]*:[1-9][0-9]*$", dockerfile, re.MULTILINE), (
        "numeric non-root user"
    )

    args = c["command"] + c["args"]
    assert args[:2] == ["mlflow", "server"]
    flags = {"--serve-artifacts"}
    opts, rest = {}, args[2:]
    while rest:
        opt = rest.pop(0)
        opts[opt] = None if opt in flags else rest.pop(0)
    assert opts == {
        "--host": "0.0.0.0",
        "--port": "5000",
        "--backend-store-uri": "$(MLFLOW_BACKEND_STORE_URI)",
        "--artifacts-destination": "s3://$(S3_BUCKET)/mlflow",
        "--serve-artifacts": None,
        "--allowed-hosts": "$(MLFLOW_SERVER_ALLOWED_HOSTS)",
    }
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://")
    assert "PASSWORD" not in env["MLFLOW_BACKEND_STORE_URI"]["value"], (
        "password stays out of the URI"
    )
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "genalign-postgres",
        "key": "POSTGRES_PASSWORD",
    }
    assert env["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"]["value"] == "true"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    # a read-only root filesystem needs a writable /tmp for HOME and temporary files
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {
        v["name"]: v for v in pod_spec(one(renders["dev"], "Deployment", "mlflow"))["volumes"]
    }
    assert "emptyDir" in volumes[mounts["/tmp"]] and env["HOME"]["value"] == "/tmp"


def test_tracking_uri_ingress_and_allowed_hosts_agree(renders):
    render = renders["dev"]
    uri = one(render, "ConfigMap", "genalign-tracking")["data"]["MLFLOW_TRACKING_URI"]
    m = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", uri)
    assert m, uri
    service = one(render, "Service", m.group(1))
    assert service["metadata"]["namespace"] == m.group(2)
    assert int(m.group(3)) in {p["port"] for p in service["spec"]["ports"]}

    c = pod_spec(one(render, "Deployment", "mlflow"))["containers"][0]
    allowed = next(
        e["value"] for e in c["env"] if e["name"] == "MLFLOW_SERVER_ALLOWED_HOSTS"
    ).split(",")
    # MLflow compares the Host header exactly, port included (mlflow.server.security_utils)
    assert uri.removeprefix("http://") in allowed
    host = one(render, "Ingress", "mlflow")["spec"]["rules"][0]["host"]
    assert host == "mlflow.example.com" and allowed[0] == host
    assert "localhost:*" in allowed


def test_postgres_keeps_its_data_on_the_claim_and_admits_only_mlflow(renders):
    render = renders["dev"]
    sts = one(render, "StatefulSet", "postgres")
    assert sts["spec"]["serviceName"] == "postgres"
    assert one(render, "Service", "postgres")["spec"]["clusterIP"] == "None"
    c = pod_spec(sts)["containers"][0]
    assert re.fullmatch(r"postgres:16\.\d+", c["image"]), "a pinned PostgreSQL 16 release"
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    pgdata = next(e["value"] for e in c["env"] if e["name"] == "PGDATA")
    data_mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == claim)
    assert pgdata.startswith(data_mount + "/")
    policy = one(render, "NetworkPolicy", "postgres")["spec"]
    assert policy["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }
    ]


# --- secrets and RBAC -------------------------------------------------------------


SECRET_REFS = {
    "genalign-s3": {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL",
        "bucket",
    },
    "genalign-postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
}
EXAMPLE_SECRETS = {
    "genalign-s3": K8S / "examples" / "secret-s3.example.yaml",
    "genalign-postgres": K8S / "examples" / "secret-postgres.example.yaml",
}


def secret_key_refs(render: list[dict]) -> dict[str, set[str]]:
    refs: dict[str, set[str]] = {}
    for w in (o for o in render if o["kind"] in WORKLOAD_KINDS):
        for c in containers(pod_spec(w)):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    refs.setdefault(ref["name"], set()).add(ref["key"])
    return refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_hold_no_secret_and_no_credential(renders, overlay):
    render = renders[overlay]
    assert not objects(render, "Secret"), "Secrets are created by the user, never rendered"
    text = yaml.safe_dump_all(render)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id"
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a password in a URI"
    for w in (o for o in render if o["kind"] in WORKLOAD_KINDS):
        for c in containers(pod_spec(w)):
            for e in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|ACCESS_KEY", e["name"]):
                    assert "valueFrom" in e and "value" not in e, (
                        f"{e['name']} must come from a Secret"
                    )
    assert secret_key_refs(render) == SECRET_REFS


@pytest.mark.parametrize("name", sorted(EXAMPLE_SECRETS))
def test_example_secrets_have_the_referenced_keys_and_only_placeholders(renders, name):
    path = EXAMPLE_SECRETS[name]
    (secret,) = load_all(path)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    assert secret["metadata"] == {"name": name, "namespace": NAMESPACE}
    data = secret["stringData"]
    assert SECRET_REFS[name] <= set(data)
    for key, value in data.items():
        if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
            assert value == "REPLACE_ME", f"{path.name}: {key} must be a placeholder"
    # the examples are never part of a kustomization
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "examples" not in kustomization.read_text(), kustomization


ROLE_RULES = [
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["genalign-tracking", "kfp-launcher"],
        "verbs": ["get"],
    },
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["genalign-s3"],
        "verbs": ["get"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    {
        "apiGroups": ["argoproj.io"],
        "resources": ["workflowtaskresults"],
        "verbs": ["create", "patch"],
    },
    {
        "apiGroups": ["trainer.kubeflow.org"],
        "resources": ["trainjobs"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_role_is_exactly_the_minimal_rule_set(renders, overlay):
    render = renders[overlay]
    assert not objects(render, "ClusterRole") and not objects(render, "ClusterRoleBinding")
    assert one(render, "Role", "genalign-pipeline")["rules"] == ROLE_RULES
    for rule in ROLE_RULES:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    binding = one(render, "RoleBinding", "genalign-pipeline")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "genalign-pipeline",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "genalign-pipeline", "namespace": NAMESPACE}
    ]
    one(render, "ServiceAccount", "genalign-pipeline")


def test_kfp_launcher_names_the_bucket_and_the_secret_keys(renders):
    data = one(renders["dev"], "ConfigMap", "kfp-launcher")["data"]
    assert set(data) == {"defaultPipelineRoot", "providers"}
    (example,) = load_all(EXAMPLE_SECRETS["genalign-s3"])
    assert data["defaultPipelineRoot"] == f"s3://{example['stringData']['bucket']}/pipelines"
    providers = yaml.safe_load(data["providers"])
    # the fields KFP's launcher parses (backend/src/v2/config/s3.go, S3ProviderDefault)
    default = providers["s3"]["default"]
    assert set(default) <= {
        "endpoint",
        "region",
        "disableSSL",
        "forcePathStyle",
        "maxRetries",
        "credentials",
    }
    assert "://" not in default["endpoint"], "host[:port]; disableSSL chooses the scheme"
    assert default["credentials"] == {
        "fromEnv": False,
        "secretRef": {
            "secretName": "genalign-s3",
            "accessKeyKey": "AWS_ACCESS_KEY_ID",
            "secretKeyKey": "AWS_SECRET_ACCESS_KEY",
        },
    }


# --- overlays ---------------------------------------------------------------------


def test_dev_is_small_and_gpu_is_larger(renders):
    dev, gpu = renders["dev"], renders["gpu"]
    assert one(dev, "Deployment", "mlflow")["spec"]["replicas"] == 1

    def sizes(render, kind, name):
        c = pod_spec(one(render, kind, name))["containers"][0]
        return {
            f"{p}.{r}": parse_quantity(c["resources"][p][r])
            for p in ("requests", "limits")
            for r in ("cpu", "memory")
        }

    for kind, name in (("Deployment", "mlflow"), ("StatefulSet", "postgres")):
        small, large = sizes(dev, kind, name), sizes(gpu, kind, name)
        assert all(small[k] < large[k] for k in small), (name, small, large)

    def storage(render):
        pvc = one(render, "PersistentVolumeClaim", "genalign-model-cache")["spec"]
        vct = one(render, "StatefulSet", "postgres")["spec"]["volumeClaimTemplates"][0]["spec"]
        return (
            parse_quantity(pvc["resources"]["requests"]["storage"]),
            parse_quantity(vct["resources"]["requests"]["storage"]),
            pvc["accessModes"],
        )

    dev_cache, dev_db, dev_modes = storage(dev)
    gpu_cache, gpu_db, gpu_modes = storage(gpu)
    assert dev_cache < gpu_cache and dev_db < gpu_db
    assert gpu_modes == ["ReadWriteMany"] and gpu_cache == 200 * 2**30
    assert dev_modes == ["ReadWriteOnce"], "one node: the local-path provisioners offer RWO"


def test_gpu_overlay_publishes_the_example_cluster_profile(renders):
    example = (K8S / "cluster-profile.example.yaml").read_text()
    assert (K8S / "overlays" / "gpu" / "cluster-profile.yaml").read_text() == example
    cm = one(renders["gpu"], "ConfigMap", "genalign-cluster-profile")
    assert cm["data"] == {"cluster-profile.yaml": example}


def test_cluster_profile_names_what_the_base_creates_and_places_gpu_tasks_validly(renders):
    profile = yaml.safe_load((K8S / "cluster-profile.example.yaml").read_text())
    render = renders["gpu"]
    assert profile["namespace"] == NAMESPACE
    one(render, "ServiceAccount", profile["service_account"])
    one(render, "ConfigMap", profile["tracking_configmap"])
    one(render, "PersistentVolumeClaim", profile["model_cache_pvc"])
    assert profile["s3_secret"] in SECRET_REFS
    gpu = profile["gpu"]
    assert gpu["resource"] == "nvidia.com/gpu"
    assert gpu["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert set(profile["stages"]) >= {"rollout-parts", "train-flow-dpo", "evaluate-parts"}
    assert profile["stages"]["train-flow-dpo"]["gpus"] == 8
    assert (
        profile["stages"]["rollout-parts"]["gpus"]
        == profile["stages"]["evaluate-parts"]["gpus"]
        == 1
    )
    # Each stage as the pod a compiler would make of it: a valid core PodSpec.
    for stage, want in profile["stages"].items():
        assert set(want) <= {"gpus", "cpu", "memory", "nodes"}, stage
        amounts = {"cpu": str(want["cpu"]), "memory": str(want["memory"])}
        spec = {
            "containers": [
                {
                    "name": "main",
                    "image": "example:1",
                    "resources": {"requests": amounts, "limits": amounts},
                }
            ]
        }
        if want.get("gpus"):
            spec["containers"][0]["resources"]["limits"][gpu["resource"]] = str(want["gpus"])
            spec |= {"nodeSelector": gpu["node_selector"], "tolerations": gpu["tolerations"]}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": stage}, "spec": spec}
        kubernetes_validate.validate(pod, K8S_VERSIONS[0], strict=True)


# --- TrainJob example ---------------------------------------------------------------


def test_trainjob_example_is_a_valid_trainer_v2_trainjob():
    from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob

    (job,) = load_all(K8S / "trainjob.example.yaml")
    # The generated models ignore unknown keys; a lossless round trip proves there are none.
    assert TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job
    misspelt = copy.deepcopy(job)
    misspelt["spec"]["trainer"]["numNode"] = 2
    assert TrainerV1alpha1TrainJob.from_dict(misspelt).to_dict() != misspelt

    # CRD rules the models do not carry (x-kubernetes-validations of trainjobs, v2.3.0)
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63

    spec = job["spec"]
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert spec["runtimeRef"]["name"] == "torch-distributed"
    trainer = spec["trainer"]
    assert trainer["image"].startswith("ghcr.io/genalign/genalign-cuda:")
    assert trainer["command"] == ["torchrun"] and trainer["numNodes"] > 1
    assert trainer["args"][:4] == ["--no-python", "genalign", "stage", "train-flow-dpo"]
    # torch-distributed sets the PET_* rendezvous variables; setting one is an error
    assert not [e for e in trainer.get("env", []) if e["name"].startswith("PET_")]
    tracking = trainer["env"][0]["valueFrom"]["configMapKeyRef"]
    (configmap,) = load_all(K8S / "base" / "tracking-configmap.yaml")
    assert tracking["name"] == configmap["metadata"]["name"]
    assert tracking["key"] in configmap["data"]

    profile = yaml.safe_load((K8S / "cluster-profile.example.yaml").read_text())
    assert spec["runtimeRef"]["name"] == profile["trainer_runtime"]
    stage = profile["stages"]["train-flow-dpo"]
    per_node = trainer["resourcesPerNode"]
    assert (
        per_node["limits"][profile["gpu"]["resource"]]
        == str(stage["gpus"])
        == str(trainer["numProcPerNode"])
    )
    assert per_node["requests"]["memory"] == stage["memory"]

    (patch,) = spec["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"  # the replicated job of torch-distributed
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == profile["gpu"]["node_selector"]
    assert pod["tolerations"] == profile["gpu"]["tolerations"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {profile["model_cache_pvc"]}
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert profile["model_cache_mount"] in {m["mountPath"] for m in container["volumeMounts"]}
    for path in (a.split("=", 1)[-1] for a in trainer["args"] if a.startswith("/") or "=/" in a):
        assert path.startswith(profile["model_cache_mount"] + "/"), path
