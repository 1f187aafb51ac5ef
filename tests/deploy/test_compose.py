"""The Compose deployments, checked without a Docker engine: the single-server docker-compose.yml and
the replicated stack under deploy/compose (parsed as YAML, and validated against the Compose
specification where check-jsonschema is installed), and the stack's nginx configuration (read as text):
balancing, safe retries, uploads and timeouts."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests.deploy.support import COMPOSE_DIR, REQUEST_TIMEOUT_S, ROOT, _seconds, _shutdown_budget_s

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
