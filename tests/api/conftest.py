"""Fixtures that run the real app (lifespan included) on the tiny backbone."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from harness.processes import wait_until
from server.api.app import create_app
from server.artifact import artifact_to_bytes
from server.settings import Settings
from tests.helpers import make_artifact

ADMIN = "admin-secret-token"


def make_settings(data_dir, backbone, **overrides) -> Settings:
    """The engine runs in the test process here (fast to start); test_server_process and
    tests/engine/test_process run it in its own process, as `serve` does by default."""
    values = dict(backbone=str(backbone), data_dir=data_dir, prefixes_dir="", max_wait_ms=1.0, engine_process=False)
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_client(settings: Settings):
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 120, "the app to answer /readyz with 200")
        yield client


@pytest.fixture
def client(tmp_path, tiny_backbone_dir):
    with running_client(make_settings(tmp_path / "data", tiny_backbone_dir)) as client:
        yield client


@pytest.fixture
def mt_client(tmp_path, tiny_backbone_dir):
    """Multi-tenant: an admin token is configured."""
    with running_client(make_settings(tmp_path / "data", tiny_backbone_dir, admin_token=ADMIN)) as client:
        yield client


@pytest.fixture
def artifact_bytes(tiny_engine):
    def build(**kwargs) -> bytes:
        return artifact_to_bytes(make_artifact(tiny_engine.shape, **kwargs))

    return build


def upload(client, task, data, key=None, filename="prefix.safetensors"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.put(f"/v1/tasks/{task}", files={"file": (filename, data)}, headers=headers)


def bearer(key):
    return {"Authorization": f"Bearer {key}"}
