"""A real PostgreSQL server for the tests, started from the Debian package's binaries in a temporary
folder on a free port, owned by the test session (so a test can stop it and start it again).

initdb and pg_ctl refuse to run as root, so as root they run as the `postgres` user on a folder it
owns. `hung()` stops the server for real (SIGSTOP) for a test of a hung database. fsync is off: the
tests kill replicas, never the database host. Each test gets a database of its own (`fresh_database`),
so tests neither see nor wait for each other's rows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.processes import children, stopped


def postgres_bin_dir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path, root: Path):
        self.bin_dir, self.root = bin_dir, root
        self.data = root / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    @contextlib.contextmanager
    def hung(self):
        """The server stopped with SIGSTOP for the block, the postmaster first (so it forks nothing new),
        then every process it started (backends, background workers): connections stay open and new ones
        are still accepted by the kernel, but nothing answers. SIGCONT after the block."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        with stopped([postmaster]), stopped(children(postmaster)):
            yield

    def fresh_database(self) -> str:
        """Creates an empty database and returns its SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}{self.log_tail()}")


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
    """A fresh database on the running server (restarted first if a test left it stopped)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return postgres_server.fresh_database()
        except Exception:
            if time.monotonic() > deadline:
                raise
            try:
                postgres_server.start()
            except RuntimeError:
                time.sleep(0.5)
