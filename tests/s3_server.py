"""A real S3-protocol server for tests: a moto server process on a loopback port, and pytest fixtures.

Owns starting the process, waiting until it answers, and stopping and restarting it on the same port so a
test can simulate an outage of the blob store, and `hung()` stops it with SIGSTOP (it keeps its port and
its data but answers nothing) for a test of a hung store. moto keeps everything in memory: a restart comes back
empty (no buckets, no objects), so a test of an outage must create what it needs again after start().

Fixtures (import them into a conftest.py to use them):
- `s3_server`: one server for the session; `s3_url` makes sure it runs again if a test left it stopped;
- `s3_url`: a fresh bucket per test, yielded as `s3://<bucket>/some-prefix`, with the AWS_* variables
  set (fake credentials, the server's endpoint) for the test's duration;
- `s3_client`: a plain boto3 client on that server, for looking at or damaging objects directly.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.processes import stopped

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
START_TIMEOUT_S = 60.0  # importing moto takes seconds on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """A moto server process on 127.0.0.1:<port>, which may be stopped and started again on that port."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = Path(log_path)
        self._process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"moto server: expected it to keep running, got exit {code}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server: expected an answer within {START_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Ends the process; afterwards the port refuses connections (and everything stored is gone)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def hung(self):
        """A context in which the server process is stopped with SIGSTOP: connections are accepted by the
        kernel, nothing answers. SIGCONT after the block; everything stored is still there."""
        assert self._process is not None, "moto server: expected it to be running before hanging it"
        return stopped([self._process.pid])

    def log(self) -> str:
        return self._log.read_text(errors="replace")[-4000:]

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False


def client_for(endpoint: str):
    import boto3

    from server.registry.blobs.s3 import client_config

    return boto3.session.Session(**{k.lower(): v for k, v in FAKE_CREDENTIALS.items()}).client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=client_config()
    )


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
