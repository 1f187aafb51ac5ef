"""20 SIGKILLs of a replica at random moments of an upload loop: every version it acknowledged is
readable through the other replica, versions stay gap-free, the route pins the newest, and no row
references a blob that is not in the store.

Each kill waits for the round's first acknowledged upload, then lands at a random point within the
time an upload takes on this machine: on a fast machine or a loaded one, the kills land inside uploads."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from harness.processes import wait_until
from server.registry.blobs.s3 import S3BlobStore
from tests.replicas.cluster import Replica, create_tenant, replica_env, start_replicas
from tests.replicas.conftest import new_bucket

KILLS = 20
ROUND_TIMEOUT_S = 180.0  # for a round's first upload, and for the loop to end after a kill: only a broken run waits this long

pytestmark = pytest.mark.slow


class UploadLoop(threading.Thread):
    """Uploads new bytes to the victim, back to back, until it is killed; records every 201."""

    def __init__(self, victim: Replica, key: str, make_artifact_bytes, seeds, acknowledged: list):
        super().__init__(daemon=True)
        self.victim, self.key, self.make_artifact_bytes, self.seeds = victim, key, make_artifact_bytes, seeds
        self.acknowledged = acknowledged  # (version, sha256), shared by all rounds
        self.seconds: list[float] = []  # how long each of this round's acknowledged uploads took
        self.in_flight = False  # a request is sent and not yet answered
        self.unavailable = 0  # 503s: the registry is busy or down, nothing acknowledged, the loop goes on
        self.error: str | None = None  # anything else that ended the loop before the kill
        self.killed = threading.Event()

    def run(self) -> None:
        try:
            with self.victim.client(self.key, timeout=ROUND_TIMEOUT_S) as client:
                while self._upload(client):
                    pass
        except BaseException as error:  # noqa: BLE001 — reported by the test: an exception in a thread would otherwise vanish
            self.error = repr(error)

    def _upload(self, client: httpx.Client) -> bool:
        data = self.make_artifact_bytes(next(self.seeds))
        began = time.monotonic()
        self.in_flight = True
        try:
            response = client.put("/v1/tasks/main", files={"file": ("p.safetensors", data)})
        except httpx.HTTPError as error:
            if not self.killed.is_set():
                self.error = f"before the kill: {error!r}"
            return False  # killed mid-request: this upload may or may not have committed
        finally:
            self.in_flight = False
        if response.status_code == 503:
            self.unavailable += 1
            return True
        if response.status_code != 201:
            self.error = f"expected 201, got {response.status_code}: {response.text}"
            return False
        self.acknowledged.append((response.json()["version"], response.json()["sha256"]))
        self.seconds.append(time.monotonic() - began)
        return True


def kill_during_uploads(victim: Replica, loop: UploadLoop, rng: random.Random) -> bool:
    """One round: the loop's first upload is acknowledged, then the kill comes at a random point of an
    upload's duration. Returns whether a request was in flight when the kill came."""
    loop.start()
    wait_until(lambda: loop.seconds or loop.error or not loop.is_alive(), ROUND_TIMEOUT_S, "the round's first acknowledged upload")
    assert loop.error is None, loop.error
    time.sleep(rng.uniform(0, loop.seconds[-1]))  # the scenario's random moment, scaled to this machine
    loop.killed.set()
    inside = loop.in_flight
    victim.kill()
    loop.join(ROUND_TIMEOUT_S)
    assert not loop.is_alive(), "the upload loop did not end after the kill"
    assert loop.error is None, loop.error
    return inside


def test_sigkills_during_uploads_lose_nothing_committed_and_leave_nothing_dangling(
    tmp_path, postgres_server, s3_server, tiny_backbone_dir, make_artifact_bytes, monkeypatch
):
    database_url, blob_url = postgres_server.fresh_database(), new_bucket(s3_server)
    args = dict(backbone=tiny_backbone_dir, database_url=database_url, blob_url=blob_url, s3_endpoint=s3_server.endpoint)
    (survivor,) = start_replicas(["survivor"], tmp_path, **args)
    # The victim runs its engine in-process: it restarts 20 times, and the upload path needs no engine.
    victim = Replica("victim", replica_env("victim", tmp_path, **args, PREFIX_SERVER_ENGINE_PROCESS="false"),
                     tmp_path / "victim.log")
    rng = random.Random(20261202)
    seeds = iter(range(1000, 10**6))
    acknowledged: list[tuple[int, str]] = []
    inside: list[bool] = []
    try:
        key = create_tenant(survivor, "crash", max_artifact_bytes=10**9)
        for _ in range(KILLS):
            victim.launch()
            victim.wait_ready()
            inside.append(kill_during_uploads(victim, UploadLoop(victim, key, make_artifact_bytes, seeds, acknowledged), rng))
        with survivor.client(key) as client:
            task = client.get("/v1/tasks/main").json()
    finally:
        victim.kill()
        survivor.stop()
    assert sum(inside) >= KILLS // 2, f"only {sum(inside)} of {KILLS} kills landed inside an upload"
    stored = {v["version"]: v["sha256"] for v in task["versions"]}
    assert sorted(stored) == list(range(1, len(stored) + 1)), "versions have gaps"
    assert all(stored.get(version) == sha for version, sha in acknowledged), "an acknowledged upload was lost"
    assert task["route"] == {"version": len(stored)}
    for name, value in {"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    bucket, _, prefix = blob_url.removeprefix("s3://").partition("/")
    store = S3BlobStore(bucket, prefix)
    for sha in set(stored.values()):
        assert len(store.read(sha)) > 0  # present, and its bytes hash to its name
