from __future__ import annotations

from pathlib import Path

import pytest

from server.registry import SqliteRegistry
from tests.registry.support import LIMITS, SHAPE
from tests.s3_server import s3_client, s3_server, s3_url  # noqa: F401  (fixtures for the blob-store tests)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def open_registry(data_dir):
    """Opens registries on `data_dir` (a re-open sees the same state) and closes them all afterwards."""
    opened: list[SqliteRegistry] = []

    def _open(seed: int | None = 1234, limits=LIMITS) -> SqliteRegistry:
        registry = SqliteRegistry(data_dir, SHAPE, limits, seed=seed)
        opened.append(registry)
        return registry

    yield _open
    for registry in opened:
        registry.close()


@pytest.fixture
def registry(open_registry) -> SqliteRegistry:
    return open_registry()


@pytest.fixture
def tenant(registry) -> str:
    registry.create_tenant("acme")
    return "acme"
