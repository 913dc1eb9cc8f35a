"""The Kubernetes manifests of k8s/, checked without a cluster.

Both overlays are rendered with `kubectl kustomize` and every object is validated
strictly (unknown fields are errors) against the Kubernetes OpenAPI schemas bundled in
kubernetes-validate. Then the properties the manifests promise: every container
constrained and non-root, every pod within the Pod Security Standards' "restricted"
profile, no Secret in the renders, the pipeline Role exactly as small as written, MLflow
authenticated and reachable only from its clients, names that agree across files. The TrainJob example is validated with the
Kubeflow Trainer API models (kubeflow-trainer-api). What needs a cluster (admission,
CRDs, controllers, pulling images) is not checked here.
"""

import configparser
import copy
import importlib.util
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


def pod_template(workload: dict) -> dict:
    """The pod a workload makes: {"metadata": ..., "spec": ...}."""
    if workload["kind"] == "Pod":
        return workload
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]
    return workload["spec"]["template"]


def pod_spec(workload: dict) -> dict:
    return pod_template(workload)["spec"]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def container(workload: dict, name: str) -> dict:
    found = {c["name"]: c for c in containers(pod_spec(workload)) + pod_spec(workload).get("ephemeralContainers", [])}
    assert name in found, f"no container {name} in {workload['metadata']['name']}; found {sorted(found)}"
    return found[name]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


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
    ("ConfigMap", "mlflow-auth-config"),
    ("Service", "mlflow"),
    ("Deployment", "mlflow"),
    ("NetworkPolicy", "mlflow"),
    ("Ingress", "mlflow"),
    ("Job", "mlflow-users"),
    ("CronJob", "mlflow-backup"),
}
WORKLOADS = {"mlflow", "postgres", "mlflow-users", "mlflow-backup"}
# Long-running servers, which get probes; Jobs run to completion.
SERVERS = {"Deployment", "StatefulSet", "DaemonSet"}


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
    assert {w["metadata"]["name"] for w in workloads} == WORKLOADS
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
            assert not c["image"].endswith(":latest") and ":" in c["image"], where
        if w["kind"] in SERVERS:
            for c in spec["containers"]:
                assert "livenessProbe" in c and "readinessProbe" in c, (w["metadata"]["name"], c["name"])


# The Pod Security Standards, "restricted" profile, which includes "baseline"; the rules
# as https://kubernetes.io/docs/concepts/security/pod-security-standards/ lists them.
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
# baseline "Sysctls": the safe set
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def pod_security_violations(template: dict) -> list[str]:
    """What in the pod `template` ({"metadata", "spec"}) breaks the restricted profile."""
    spec, annotations = template["spec"], template.get("metadata", {}).get("annotations", {})
    bad = []
    pod_sc = spec.get("securityContext", {})
    # baseline: host namespaces, HostProcess, hostPath and host ports, privileged,
    # capabilities, AppArmor, SELinux, /proc mount, seccomp not Unconfined, sysctls
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(f"{key}: true")
    bad += [f"sysctl {s['name']}" for s in pod_sc.get("sysctls", []) if s["name"] not in SAFE_SYSCTLS]
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and not (value == "runtime/default" or value.startswith("localhost/")):
            bad.append(f"AppArmor annotation {key}: {value}")
    # restricted: volume types
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"volume {v['name']}: {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")

    every = containers(spec) + spec.get("ephemeralContainers", [])

    def context_rules(sc: dict, where: str) -> None:
        if sc.get("windowsOptions", {}).get("hostProcess"):
            bad.append(f"{where}: windowsOptions.hostProcess")
        se = sc.get("seLinuxOptions", {})
        if se.get("type") not in (None, "", *SELINUX_TYPES) or se.get("user") or se.get("role"):
            bad.append(f"{where}: seLinuxOptions {se}")
        if sc.get("appArmorProfile", {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            bad.append(f"{where}: appArmorProfile {sc['appArmorProfile']}")
        if sc.get("seccompProfile", {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            bad.append(f"{where}: seccompProfile {sc['seccompProfile']}")
        if sc.get("runAsNonRoot") is False:
            bad.append(f"{where}: runAsNonRoot: false")
        if sc.get("runAsUser") == 0:
            bad.append(f"{where}: runAsUser: 0")

    context_rules(pod_sc, "pod")
    for c in every:
        where = f"container {c['name']}"
        sc = c.get("securityContext", {})
        context_rules(sc, where)
        if sc.get("privileged"):
            bad.append(f"{where}: privileged")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{where}: procMount {sc['procMount']}")
        bad += [f"{where}: hostPort {p['hostPort']}" for p in c.get("ports", []) if p.get("hostPort")]
        # restricted: privilege escalation, non-root, seccomp, capabilities
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{where}: runAsNonRoot is not true")
        if sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{where}: no seccompProfile RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{where}: capabilities do not drop ALL")
        if not set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}:
            bad.append(f"{where}: capabilities add {sorted(set(caps['add']) - {'NET_BIND_SERVICE'})}")
    return bad


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_standard(renders, overlay):
    """Deployments, StatefulSets, Jobs and CronJobs' job templates, init containers included:
    https://kubernetes.io/docs/concepts/security/pod-security-standards/ ("Restricted")."""
    workloads = [o for o in renders[overlay] if o["kind"] in WORKLOAD_KINDS]
    assert {w["kind"] for w in workloads} == {"Deployment", "StatefulSet", "Job", "CronJob"}
    assert any(pod_spec(w).get("initContainers") for w in workloads)
    for w in workloads:
        assert pod_security_violations(pod_template(w)) == [], f"{w['kind']}/{w['metadata']['name']} ({overlay})"


def test_the_pod_security_check_finds_each_kind_of_violation(renders):
    """The checker is not vacuous: a pod that breaks each rule once is caught on each."""
    template = copy.deepcopy(pod_template(one(renders["dev"], "Deployment", "mlflow")))
    spec = template["spec"]
    spec |= {"hostNetwork": True, "hostPID": True}
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    spec["securityContext"] |= {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}
    template["metadata"]["annotations"] = {APPARMOR_ANNOTATION + "mlflow": "unconfined"}
    init, main = spec["initContainers"][0], spec["containers"][0]
    init["securityContext"] |= {"privileged": True, "runAsUser": 0, "seccompProfile": {"type": "Unconfined"}}
    del init["securityContext"]["allowPrivilegeEscalation"]
    main["securityContext"]["capabilities"] = {"drop": ["NET_RAW"], "add": ["SYS_ADMIN", "NET_BIND_SERVICE"]}
    main["securityContext"]["seLinuxOptions"] = {"type": "spc_t"}
    main["ports"][0]["hostPort"] = 5000
    found = "\n".join(pod_security_violations(template))
    for expected in ("hostNetwork", "hostPID", "sysctl kernel.msgmax", "AppArmor annotation", "volume host: ['hostPath']",
                     "create-auth-database: privileged", "create-auth-database: runAsUser: 0",
                     "create-auth-database: seccompProfile", "create-auth-database: allowPrivilegeEscalation",
                     "mlflow: capabilities do not drop ALL", "mlflow: capabilities add ['SYS_ADMIN']",
                     "mlflow: seLinuxOptions", "mlflow: hostPort 5000"):
        assert expected in found, (expected, found)
    spec["securityContext"]["runAsNonRoot"] = False
    del init["securityContext"]["runAsNonRoot"]
    assert "container create-auth-database: runAsNonRoot is not true" in pod_security_violations(template)


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
    pin = re.search(r'"mlflow\[auth\]==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    c = pod_spec(one(renders["dev"], "Deployment", "mlflow"))["containers"][0]
    assert c["image"] == f"ghcr.io/genalign/mlflow-server:{pin}"
    dockerfile = (K8S / "mlflow-server" / "Dockerfile").read_text()
    installs = [i.strip('"') for i in re.search(r"^RUN pip install (.+)$", dockerfile, re.MULTILINE).group(1).split()]
    # the auth extra: `--app-name basic-auth` needs Flask-WTF (mlflow/server/auth/__init__.py)
    assert f"mlflow[auth]=={pin}" in installs
    assert {i.split("==")[0] for i in installs} == {"mlflow[auth]", "Flask-WTF", "psycopg2-binary", "boto3"}
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
        "--app-name": "basic-auth",
        "--host": "0.0.0.0",
        "--port": "5000",
        "--backend-store-uri": "$(MLFLOW_BACKEND_STORE_URI)",
        "--artifacts-destination": "s3://$(S3_BUCKET)/mlflow",
        "--serve-artifacts": None,
        "--allowed-hosts": "$(MLFLOW_SERVER_ALLOWED_HOSTS)",
    }
    env = {e["name"]: e for e in c["env"]}
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the image has psycopg2
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql+psycopg2://")
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
            "from": [
                {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}},
                {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow-backup"}}},
            ],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }
    ]
    # the selectors pick the pods of the server and of the backups
    for kind, name in (("Deployment", "mlflow"), ("CronJob", "mlflow-backup")):
        assert pod_template(one(render, kind, name))["metadata"]["labels"]["app.kubernetes.io/name"] == name


# --- MLflow: authentication, network access, users, backups -------------------------


def auth_ini(render: list[dict]) -> configparser.ConfigParser:
    ini = configparser.ConfigParser()
    ini.read_string(one(render, "ConfigMap", "mlflow-auth-config")["data"]["basic_auth.ini"])
    return ini


def cpu_image() -> str:
    """The genalign-cpu image the pipelines are compiled with by default (components/images.py)."""
    source = (ROOT / "components" / "images.py").read_text()
    registry = re.search(r'"GENALIGN_IMAGE_REGISTRY", "([^"]+)"', source).group(1)
    tag = re.search(r'"GENALIGN_IMAGE_TAG", "([^"]+)"', source).group(1)
    return f"{registry}/genalign-cpu:{tag}"


def test_mlflow_runs_the_basic_auth_app_with_no_secret_in_its_settings(renders):
    render = renders["dev"]
    deployment = one(render, "Deployment", "mlflow")
    c = container(deployment, "mlflow")
    assert c["args"][:3] == ["server", "--app-name", "basic-auth"]
    env = env_of(c)
    # the settings file: a key of the ConfigMap, mounted read-only
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "mlflow-auth-config" and mount["readOnly"] is True
    assert path.name in one(render, "ConfigMap", "mlflow-auth-config")["data"]

    ini = auth_ini(render)
    # keys MLflow's auth config reads (mlflow/server/auth/config.py), and no admin name or
    # password
    from mlflow.server.auth.config import AuthConfig  # a NamedTuple

    shipped = configparser.ConfigParser()
    shipped.read(Path(importlib.util.find_spec("mlflow").origin).parent / "server" / "auth" / "basic_auth.ini")
    assert set(ini["mlflow"]) <= set(AuthConfig._fields)
    assert not {"admin_username", "admin_password"} & set(ini["mlflow"])
    assert ini["mlflow"]["default_permission"] == "READ"
    assert ini["mlflow"]["authorization_function"] == shipped["mlflow"]["authorization_function"]
    # the database: on the Service postgres, no user and no password in the URI (libpq
    # takes PGUSER and PGPASSWORD), the driver the image has
    m = re.fullmatch(r"postgresql\+psycopg2://([a-z0-9-]+):(\d+)/([a-z0-9_]+)", ini["mlflow"]["database_uri"])
    assert m, ini["mlflow"]["database_uri"]
    service = one(render, "Service", m.group(1))
    assert int(m.group(2)) in {p["port"] for p in service["spec"]["ports"]}
    assert env["PGUSER"]["valueFrom"]["secretKeyRef"] == {"name": "genalign-postgres", "key": "POSTGRES_USER"}
    # the admin and the signing key, from the operator's Secret
    for var, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "username"), ("MLFLOW_AUTH_ADMIN_PASSWORD", "password"),
                     ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "genalign-mlflow-admin", "key": key}, var


def test_the_auth_database_is_created_and_backed_up_under_one_name(renders):
    render = renders["dev"]
    database = auth_ini(render)["mlflow"]["database_uri"].rsplit("/", 1)[1]
    create = container(one(render, "Deployment", "mlflow"), "create-auth-database")
    dump = container(one(render, "CronJob", "mlflow-backup"), "dump")
    for c in (create, dump):
        env = env_of(c)
        assert env["AUTH_DATABASE"]["value"] == database, c["name"]
        assert env["PGHOST"]["value"] == "postgres" and env["PGPORT"]["value"] == "5432", c["name"]
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "genalign-postgres", "key": "POSTGRES_PASSWORD"}
    assert 'createdb "$AUTH_DATABASE"' in create["command"][-1]
    # the client tools of the server's release
    postgres = container(one(render, "StatefulSet", "postgres"), "postgres")
    assert create["image"] == dump["image"] == postgres["image"]


def test_mlflow_network_policy_admits_only_its_clients_and_the_ingress_controller(renders):
    from pipelines.cluster import MLFLOW_CLIENT_LABEL

    render = renders["dev"]
    policy = one(render, "NetworkPolicy", "mlflow")["spec"]
    deployment = one(render, "Deployment", "mlflow")
    assert policy["podSelector"]["matchLabels"].items() <= pod_template(deployment)["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"], "egress is the operator's"
    port = next(p["containerPort"] for p in container(deployment, "mlflow")["ports"] if p["name"] == "http")
    client = {MLFLOW_CLIENT_LABEL[0]: MLFLOW_CLIENT_LABEL[1]}
    assert policy["ingress"] == [
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
         "ports": [{"protocol": "TCP", "port": port}]},
        {"from": [{"podSelector": {"matchLabels": client}}], "ports": [{"protocol": "TCP", "port": port}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"genalign.io/pipelines": "true"}},
                   "podSelector": {"matchLabels": client}}],
         "ports": [{"protocol": "TCP", "port": port}]},
    ]
    # the users Job talks to MLflow; the backups talk to PostgreSQL only
    assert client.items() <= pod_template(one(render, "Job", "mlflow-users"))["metadata"]["labels"].items()
    assert MLFLOW_CLIENT_LABEL[0] not in pod_template(one(render, "CronJob", "mlflow-backup"))["metadata"]["labels"]


def test_the_readme_overlay_for_other_namespaces_renders(tmp_path):
    """The overlay k8s/README.md shows for another ingress controller and namespace label."""
    readme = (K8S / "README.md").read_text()
    block = re.search(r"```yaml\n(# k8s/overlays/mine/kustomization.yaml\n.*?)```", readme, re.DOTALL)
    assert block, "the overlay example in k8s/README.md"
    copy_of_k8s = tmp_path / "k8s"
    shutil.copytree(K8S, copy_of_k8s)
    (copy_of_k8s / "overlays" / "mine").mkdir()
    (copy_of_k8s / "overlays" / "mine" / "kustomization.yaml").write_text(block.group(1))
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    proc = subprocess.run([kubectl, "kustomize", str(copy_of_k8s / "overlays" / "mine")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    policy = one([d for d in yaml.safe_load_all(proc.stdout) if d], "NetworkPolicy", "mlflow")["spec"]
    assert policy["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "traefik"}
    assert policy["ingress"][2]["from"][0]["namespaceSelector"]["matchLabels"] == {"example.com/team": "ml"}
    assert policy["ingress"][2]["from"][0]["podSelector"] == policy["ingress"][1]["from"][0]["podSelector"]


def test_users_job_runs_the_library_as_the_admin_for_the_pipelines_secret(renders):
    import genalign.registry_access as module

    render = renders["dev"]
    job = one(render, "Job", "mlflow-users")
    c = container(job, "mlflow-users")
    assert c["command"] == ["python", "-m", module.__name__] and c["image"] == cpu_image()
    env = env_of(c)
    tracking = one(render, "ConfigMap", "genalign-tracking")
    ref = env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]
    assert ref["name"] == tracking["metadata"]["name"] and ref["key"] in tracking["data"]
    secrets = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {
        "MLFLOW_TRACKING_USERNAME": {"name": module.ADMIN_SECRET, "key": "username"},
        "MLFLOW_TRACKING_PASSWORD": {"name": module.ADMIN_SECRET, "key": "password"},
        "GENALIGN_PIPELINE_USERNAME": {"name": module.PIPELINE_SECRET, "key": "username"},
        "GENALIGN_PIPELINE_PASSWORD": {"name": module.PIPELINE_SECRET, "key": "password"},
    }
    assert env["GENALIGN_PIPELINE_PREFIX"]["value"] == module.DEFAULT_PREFIX
    # every GENALIGN_ variable the Job sets is one the module reads
    source = Path(module.__file__).read_text()
    assert all(f'"{name}"' in source for name in env if name.startswith("GENALIGN_"))
    spec = job["spec"]
    assert pod_spec(job)["restartPolicy"] == "Never" and spec["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0


def test_backup_cronjob_dumps_both_databases_and_uploads_them_with_the_library(renders):
    import genalign.backup as module

    render = renders["dev"]
    cron = one(render, "CronJob", "mlflow-backup")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert pod_spec(cron)["restartPolicy"] == "Never"

    dump, upload = container(cron, "dump"), container(cron, "upload")
    assert [c["name"] for c in pod_spec(cron)["initContainers"]] == ["dump"]
    script = dump["command"][-1]
    assert re.search(r'for db in "\$POSTGRES_DB" "\$AUTH_DATABASE"; do\n\s+pg_dump --format=custom ', script)
    assert env_of(dump)["POSTGRES_DB"]["valueFrom"]["secretKeyRef"] == {"name": "genalign-postgres", "key": "POSTGRES_DB"}
    folder = re.search(r'--file="([^"$]+)/\$db\.dump"', script).group(1)

    assert upload["image"] == cpu_image()
    assert upload["command"] == ["python", "-m", module.__name__, folder]
    mounts = {c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]} for c in (dump, upload)}
    assert mounts["dump"][folder] == mounts["upload"][folder]
    volume = next(v for v in pod_spec(cron)["volumes"] if v["name"] == mounts["dump"][folder])
    assert "emptyDir" in volume
    env = env_of(upload)
    assert env["S3_BUCKET"]["valueFrom"]["secretKeyRef"] == {"name": "genalign-s3", "key": "bucket"}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["name"] == "genalign-s3"
    assert env["BACKUP_PREFIX"]["value"] == module.DEFAULT_PREFIX
    assert env["BACKUP_KEEP"]["value"].isdigit() and int(env["BACKUP_KEEP"]["value"]) >= 1
    source = Path(module.__file__).read_text()
    assert all(f'"{name}"' in source for name in ("S3_BUCKET", "BACKUP_PREFIX", "BACKUP_KEEP"))
    # the gpu overlay's database is larger: so is the room for its dumps
    sizes = {
        overlay: parse_quantity(next(v for v in pod_spec(one(renders[overlay], "CronJob", "mlflow-backup"))["volumes"]
                                     if v["name"] == volume["name"])["emptyDir"]["sizeLimit"])
        for overlay in OVERLAYS
    }
    assert sizes["dev"] < sizes["gpu"]


# --- secrets and RBAC -------------------------------------------------------------


SECRET_REFS = {
    "genalign-s3": {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL",
        "bucket",
    },
    "genalign-postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "genalign-mlflow-admin": {"username", "password", "flask-secret-key"},
    "genalign-mlflow-pipeline": {"username", "password"},
}
EXAMPLE_SECRETS = {
    "genalign-s3": K8S / "examples" / "secret-s3.example.yaml",
    "genalign-postgres": K8S / "examples" / "secret-postgres.example.yaml",
    "genalign-mlflow-admin": K8S / "examples" / "secret-mlflow-admin.example.yaml",
    "genalign-mlflow-pipeline": K8S / "examples" / "secret-mlflow-pipeline.example.yaml",
}
CREDENTIAL = re.compile(r"PASSWORD|SECRET|ACCESS_KEY", re.IGNORECASE)


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
        if CREDENTIAL.search(key):
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
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
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
    # the tasks' MLflow user is the one the mlflow-users Job sets up
    from genalign.config.cluster import DEFAULT_MLFLOW_KEYS

    assert profile["mlflow_secret"] == "genalign-mlflow-pipeline"
    users = env_of(container(one(render, "Job", "mlflow-users"), "mlflow-users"))
    assert users["GENALIGN_PIPELINE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": profile["mlflow_secret"], "key": "password",
    }
    assert set(DEFAULT_MLFLOW_KEYS) == {"username", "password"} <= SECRET_REFS[profile["mlflow_secret"]]
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
    # the pipelines' MLflow user, and the label the MLflow NetworkPolicy admits
    credentials = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"][1:]}
    assert credentials == {
        "MLFLOW_TRACKING_USERNAME": {"name": "genalign-mlflow-pipeline", "key": "username"},
        "MLFLOW_TRACKING_PASSWORD": {"name": "genalign-mlflow-pipeline", "key": "password"},
    }
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
    assert replicated["template"]["spec"]["template"]["metadata"]["labels"] == {"genalign.io/mlflow-client": "true"}
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
