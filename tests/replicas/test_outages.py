"""SPEC 4's outages, on real replicas: with PostgreSQL stopped for 30 s, warm classify calls keep
answering 200, cold ones 503 (never 401/404), uploads 503 within 3 s, /readyz stays 200, /v1/info and
the registry_up gauge say what is down, and all is whole within 5 s of its return; with the S3 server
down, warm tasks serve and uploads answer 503 storing nothing."""

from __future__ import annotations

import time

import pytest

from tests.replicas.cluster import create_tenant, start_replicas, wait_until
from tests.replicas.conftest import new_bucket
from tests.replicas.test_replicas import classify, upload
from tests.s3_server import S3Server, client_for

OUTAGE_S = 30.0
WRITE_ANSWER_WITHIN_S = 3.0
WHOLE_WITHIN_S = 5.0

pytestmark = pytest.mark.slow


def info(replica) -> dict:
    with replica.client() as client:
        return client.get("/v1/info").json()["registry"]


def registry_up_gauge(replica, component: str) -> float:
    with replica.client() as client:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f'prefix_server_registry_up{{component="{component}"}}'):
                return float(line.split()[-1])
    raise AssertionError(f"no registry_up gauge for {component}")


def warm_up(a, b, make_artifact_bytes) -> tuple[str, str]:
    """Before a database outage: tenant 'warm' with task 'hot' classified on both replicas and task
    'untouched' on neither, and tenant 'cold' never used on B. Returns both tenants' keys."""
    key = create_tenant(a, "warm")
    cold_key = create_tenant(a, "cold")
    assert upload(a, key, "hot", make_artifact_bytes(1)).status_code == 201
    assert upload(a, key, "untouched", make_artifact_bytes(2)).status_code == 201
    for replica in (a, b):
        assert classify(replica, key, "hot").status_code == 200
    return key, cold_key


def test_the_database_down_for_30_s(tmp_path, postgres_server, s3_server, tiny_backbone_dir, make_artifact_bytes):
    a, b = start_replicas(
        ["a", "b"], tmp_path, backbone=tiny_backbone_dir, database_url=postgres_server.fresh_database(),
        blob_url=new_bucket(s3_server), s3_endpoint=s3_server.endpoint,
    )
    try:
        key, cold_key = warm_up(a, b, make_artifact_bytes)
        postgres_server.stop()
        try:
            _during_the_database_outage(a, b, key, cold_key, make_artifact_bytes)
        finally:
            postgres_server.start()
        back = time.monotonic()
        whole, took = wait_until(
            lambda: classify(b, key, "untouched").status_code == 200 and classify(b, cold_key, "x").status_code == 404
            and upload(a, key, "after", make_artifact_bytes(3)).status_code == 201,
            WHOLE_WITHIN_S * 2, interval_s=0.1,
        )
        assert whole and time.monotonic() - back < WHOLE_WITHIN_S, f"whole again only after {took:.1f} s"
        wait_until(lambda: info(b)["database"]["up"], 3)
        assert info(b)["database"]["up"] and registry_up_gauge(b, "database") == 1.0
    finally:
        a.stop()
        b.stop()


def _during_the_database_outage(a, b, key, cold_key, make_artifact_bytes) -> None:
    started = time.monotonic()
    rounds = 0
    while time.monotonic() - started < OUTAGE_S:
        for replica in (a, b):
            assert classify(replica, key, "hot").status_code == 200, replica.log_tail()
            with replica.client() as client:
                assert client.get("/readyz").status_code == 200
        cold_task = classify(b, key, "untouched")
        assert cold_task.status_code == 503 and cold_task.headers["retry-after"] == "1", cold_task.text
        cold_tenant = classify(b, cold_key, "anything")
        assert cold_tenant.status_code == 503, cold_tenant.text  # not 401: the key is unknown, not wrong
        began = time.monotonic()
        refused = upload(a, key, "hot", make_artifact_bytes(100 + rounds))
        assert refused.status_code == 503 and time.monotonic() - began < WRITE_ANSWER_WITHIN_S, refused.text
        rounds += 1
        time.sleep(0.5)
    assert info(b)["database"]["up"] is False and registry_up_gauge(b, "database") == 0.0
    assert info(b)["blobs"]["up"] is True


def test_the_blob_store_down(tmp_path, postgres_server, tiny_backbone_dir, make_artifact_bytes):
    s3 = S3Server(tmp_path / "s3.log")  # its own: a moto restart loses everything
    s3.start()
    bucket = "outage"
    client_for(s3.endpoint).create_bucket(Bucket=bucket)
    a, b = start_replicas(
        ["a", "b"], tmp_path, backbone=tiny_backbone_dir, database_url=postgres_server.fresh_database(),
        blob_url=f"s3://{bucket}/p", s3_endpoint=s3.endpoint,
    )
    try:
        key = create_tenant(a, "blobs")
        assert upload(a, key, "warm", make_artifact_bytes(1)).status_code == 201
        assert upload(a, key, "cold", make_artifact_bytes(2)).status_code == 201
        assert classify(b, key, "warm").status_code == 200  # loaded on B
        s3.stop()
        for _ in range(5):
            assert classify(b, key, "warm").status_code == 200
            cold = classify(b, key, "cold")  # B never loaded it, and its blob cache does not have it
            assert cold.status_code == 503 and "blob store" in cold.json()["error"]["message"], cold.text
            began = time.monotonic()
            refused = upload(a, key, "new", make_artifact_bytes(3))
            assert refused.status_code == 503 and time.monotonic() - began < WRITE_ANSWER_WITHIN_S, refused.text
        with a.client(key) as client:
            assert client.get("/v1/tasks/new").status_code == 404  # nothing stored
            assert len(client.get("/v1/tasks/warm").json()["versions"]) == 1
        down, _ = wait_until(lambda: info(b)["blobs"]["up"] is False, 3)
        assert down and registry_up_gauge(b, "blobs") == 0.0 and info(b)["database"]["up"]
    finally:
        a.stop()
        b.stop()
        s3.stop()
