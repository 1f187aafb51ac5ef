"""Fixtures of the replica tests: a PostgreSQL server and an S3 server for the session (both real
processes), and random artifacts for the tiny backbone the replicas serve."""

from __future__ import annotations

import secrets

import pytest

from server.artifact import artifact_to_bytes
from tests.helpers import make_artifact
from tests.postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.s3_server import client_for, s3_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.postgres]


@pytest.fixture(scope="session")
def make_artifact_bytes(tiny_engine):
    def build(seed: int, **kwargs) -> bytes:
        return artifact_to_bytes(make_artifact(tiny_engine.shape, seed=seed, **kwargs))

    return build


def new_bucket(server) -> str:
    """A fresh bucket on the (running) S3 server; returns its s3:// URL with a key prefix."""
    server.start()
    bucket = f"replicas-{secrets.token_hex(5)}"
    client_for(server.endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prefixes"
