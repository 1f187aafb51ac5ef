"""The PostgreSQL server's pytest fixtures (the server itself is harness.postgres's): one server for the
session, owned by it (so a test can stop it and start it again), and a fresh database per test."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from harness.postgres import PostgresServer, postgres_bin_dir
from harness.processes import wait_until


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not found: .ci/run installs the postgresql package")
        pytest.skip("PostgreSQL binaries not found (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="prefix-server-pg-"))
    os.chmod(root, 0o755)
    server = PostgresServer(bin_dir, root)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(RuntimeError):  # a test left it stopped
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database on the running server (started again first if a test left it stopped)."""
    import psycopg

    def fresh_database() -> str | None:
        try:
            return postgres_server.fresh_database()
        except psycopg.OperationalError:
            with contextlib.suppress(RuntimeError):  # already starting, or up again meanwhile
                postgres_server.start()
            return None

    return wait_until(fresh_database, 120, "the PostgreSQL server to create a database", interval_s=0.5)
