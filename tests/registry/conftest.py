"""The registry suites run against both backends: the embedded SQLite file and a real PostgreSQL
server (tests/postgres_server.py), each with the file blob store under `data_dir/blobs`."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.registry import SqlRegistry
from server.registry.blobs.local import FileBlobStore
from server.registry.database import Database, sqlite_url
from tests.postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.registry.support import LIMITS, SHAPE
from tests.s3_server import s3_client, s3_server, s3_url  # noqa: F401  (fixtures for the blob-store tests)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, data_dir, request) -> str:
    if backend == "postgresql":
        return request.getfixturevalue("postgres_url")
    data_dir.mkdir(parents=True, exist_ok=True)
    return sqlite_url(data_dir / "registry.sqlite3")


@pytest.fixture
def open_registry(database_url, data_dir):
    """Opens registries on one database and `data_dir/blobs` (a re-open sees the same state) and
    closes them all afterwards."""
    opened: list[SqlRegistry] = []

    def _open(seed: int | None = 1234, limits=LIMITS, **options) -> SqlRegistry:
        registry = SqlRegistry(Database(database_url), FileBlobStore(data_dir / "blobs"), SHAPE, limits, seed=seed, **options)
        opened.append(registry)
        return registry

    yield _open
    for registry in opened:
        registry.close()


@pytest.fixture
def registry(open_registry) -> SqlRegistry:
    return open_registry()


@pytest.fixture
def tenant(registry) -> str:
    registry.create_tenant("acme")
    return "acme"
