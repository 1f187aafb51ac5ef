"""20 SIGKILLs of a replica at random moments of an upload loop: every version it acknowledged is
readable through the other replica, versions stay gap-free, the route pins the newest, and no row
references a blob that is not in the store."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from server.registry.blobs.s3 import S3BlobStore
from tests.replicas.cluster import Replica, create_tenant, replica_env, start_replicas
from tests.replicas.conftest import new_bucket

KILLS = 20

pytestmark = pytest.mark.slow


def upload_until_killed(victim: Replica, key: str, make_artifact_bytes, seeds, acknowledged: list) -> None:
    """Uploads new bytes in a loop until the replica stops answering; records every 201."""
    with victim.client(key, timeout=5) as client:
        while True:
            seed = next(seeds)
            try:
                response = client.put("/v1/tasks/main", files={"file": ("p.safetensors", make_artifact_bytes(seed))})
            except httpx.HTTPError:
                return  # killed mid-request: this upload may or may not have committed
            assert response.status_code == 201, response.text
            acknowledged.append((response.json()["version"], response.json()["sha256"]))


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
    try:
        key = create_tenant(survivor, "crash", max_artifact_bytes=10**9)
        for _ in range(KILLS):
            victim.launch()
            victim.wait_ready()
            loop = threading.Thread(target=upload_until_killed, args=(victim, key, make_artifact_bytes, seeds, acknowledged))
            loop.start()
            time.sleep(rng.uniform(0.05, 0.6))
            victim.kill()
            loop.join(timeout=10)
        with survivor.client(key) as client:
            task = client.get("/v1/tasks/main").json()
    finally:
        victim.kill()
        survivor.stop()
    assert len(acknowledged) >= KILLS, "the loop hardly uploaded: the kills did not land inside uploads"
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
