"""Real `prefix-server serve` replicas on one PostgreSQL database and one S3 bucket (SPEC 4), for the
replica tests and the replica benchmark: start several at once, SIGKILL one, launch it again on its
port, and talk to each over HTTP with the admin token.

Each replica has a data dir of its own (only its blob cache lives there) and, unless told otherwise,
runs the engine in its own process, as served.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.processes import ServeProcess
from harness.s3 import FAKE_CREDENTIALS

ADMIN = "replica-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Replica(ServeProcess):
    def client(self, key: str | None = ADMIN, timeout: float = 60.0) -> httpx.Client:
        return super().client(key, timeout)


def replica_env(name: str, workdir: Path, backbone: Path, database_url: str, blob_url: str, s3_endpoint: str,
                **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFIX_SERVER_", "AWS_"))}
    env.update(
        PREFIX_SERVER_BACKBONE=str(backbone),
        PREFIX_SERVER_DATA_DIR=str(workdir / name),
        PREFIX_SERVER_PREFIXES_DIR="",
        PREFIX_SERVER_ADMIN_TOKEN=ADMIN,
        PREFIX_SERVER_DATABASE_URL=database_url,
        PREFIX_SERVER_BLOB_URL=blob_url,
        PREFIX_SERVER_MAX_WAIT_MS="2",
        PREFIX_SERVER_TORCH_THREADS="1",
        AWS_ENDPOINT_URL=s3_endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        **FAKE_CREDENTIALS,
    )
    env.update(overrides)
    return env


def start_replicas(names: list[str], workdir: Path, **env_args) -> list[Replica]:
    """Launches them all at once, then waits for each: they come up side by side, as in a rollout."""
    replicas = [Replica(n, replica_env(n, workdir, **env_args), workdir / f"{n}.log") for n in names]
    try:
        for replica in replicas:
            replica.launch()
        for replica in replicas:
            replica.wait_ready()
    except BaseException:
        for replica in replicas:
            replica.kill()
        raise
    return replicas


def create_tenant(replica: Replica, name: str, **limits) -> str:
    body = {"name": name, **({"limits": limits} if limits else {})}
    response = httpx.post(f"{replica.base}/v1/admin/tenants", json=body, headers=ADMIN_HEADERS, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["api_key"]
