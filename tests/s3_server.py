"""The S3 server's pytest fixtures (the server itself is harness.s3's; import these into a conftest.py):
- `s3_server`: one moto server for the session; `s3_url` makes sure it runs again if a test left it stopped;
- `s3_url`: a fresh bucket per test, yielded as `s3://<bucket>/some-prefix`, with the AWS_* variables
  set (fake credentials, the server's endpoint) for the test's duration;
- `s3_client`: a plain boto3 client on that server, for looking at or damaging objects directly.
"""

from __future__ import annotations

import os
import secrets

import pytest

from harness.s3 import FAKE_CREDENTIALS, S3Server, client_for


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto") / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_url(s3_server, monkeypatch) -> str:
    s3_server.start()  # a no-op unless an outage test left it stopped
    settings = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    # Nothing from the developer's own AWS setup may leak in (a profile, a session token, a config file).
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    bucket = f"test-{secrets.token_hex(6)}"
    client_for(s3_server.endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/some-prefix"


@pytest.fixture
def s3_client(s3_url, s3_server):
    client = client_for(s3_server.endpoint)
    yield client
    client.close()
