"""A real S3-protocol server: a moto server process on a loopback port, for the tests
(tests/s3_server.py's fixtures) and the replica benchmark.

Owns starting the process, waiting until it answers, and stopping and restarting it on the same port so
a test can simulate an outage of the blob store, and `hung()` stops it with SIGSTOP (it keeps its port
and its data but answers nothing) for a test of a hung store. moto keeps everything in memory: a restart comes back
empty (no buckets, no objects), so a test of an outage must create what it needs again after start().
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from harness.processes import free_port, stop_process, stopped, wait_until

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
START_TIMEOUT_S = 120.0  # importing moto takes seconds, and tens of them on a loaded machine


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
        try:
            wait_until(self._answers, START_TIMEOUT_S, f"the moto server on port {self.port} to answer", 0.1)
        except (TimeoutError, RuntimeError) as error:
            self.stop()
            raise RuntimeError(f"moto server: {error}:\n{self.log()}") from None

    def stop(self) -> None:
        """Ends the process; afterwards the port refuses connections (and everything stored is gone)."""
        if self._process is not None:
            stop_process(self._process)
            self._process = None

    def hung(self):
        """A context in which the server process is stopped with SIGSTOP: connections are accepted by the
        kernel, nothing answers. SIGCONT after the block; everything stored is still there."""
        assert self._process is not None, "moto server: expected it to be running before hanging it"
        return stopped([self._process.pid])

    def log(self) -> str:
        return self._log.read_text(errors="replace")[-4000:]

    def _answers(self) -> bool:
        code = self._process.poll()
        if code is not None:
            raise RuntimeError(f"expected it to keep running, got exit {code}")
        try:
            with urllib.request.urlopen(f"{self.endpoint}/", timeout=5):
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
