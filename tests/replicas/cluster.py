"""Real `prefix-server serve` replicas on one PostgreSQL database and one S3 server, for the replica
tests: start several at once, kill one with SIGKILL, restart it, and talk to each over HTTP.

Each replica has a data dir of its own (only its blob cache lives there) and runs the engine in its
own process, as served; the backbone is the tiny random one, so a replica is ready in seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.postgres_server import free_port
from tests.processes import children as _children
from tests.s3_server import FAKE_CREDENTIALS

ADMIN = "replica-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
READY_TIMEOUT_S = 90.0


@dataclass
class Replica:
    name: str
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=log,
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log_tail()}"
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{self.name} did not become ready:\n{self.log_tail()}"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server and its engine process (no shutdown of any kind)."""
        if self.proc is not None and self.proc.poll() is None:
            children = _children(self.proc.pid)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def client(self, key: str | None = ADMIN, timeout: float = 10.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=timeout)


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
    for replica in replicas:
        replica.launch()
    for replica in replicas:
        replica.wait_ready()
    return replicas


def create_tenant(replica: Replica, name: str, **limits) -> str:
    body = {"name": name, **({"limits": limits} if limits else {})}
    response = httpx.post(f"{replica.base}/v1/admin/tenants", json=body, headers=ADMIN_HEADERS, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["api_key"]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.01):
    """Polls `predicate` until it returns a truthy value; returns (value, seconds it took)."""
    started = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            return value, time.monotonic() - started
        time.sleep(interval_s)

