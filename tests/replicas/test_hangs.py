"""SPEC 4 with the database or the blob store hung for real, on real replicas: the server process is
stopped with SIGSTOP, so connections stay open and its kernel still accepts new ones, but nothing answers
(what a wedged host or a long pause looks like, unlike the refused connections of test_outages.py).
Meanwhile uploads answer 503 within 3 s, a crowd of them too; warm reads keep answering 200 (tenants,
routes and prefixes a replica holds, prefixes in its blob cache); cold ones answer 503 with Retry-After,
never 401, 404 or 500; /readyz stays 200. Within 5 s of SIGCONT all is whole again, and nothing refused
was half-written."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.replicas import test_replicas
from tests.replicas.cluster import create_tenant, wait_until
from tests.replicas.test_outages import info, registry_up_gauge, warm_up
from tests.replicas.test_replicas import classify, upload

cluster = test_replicas.cluster  # the fixture: replicas A and B for this module, on a fresh database and bucket

HUNG_S = 8.0  # longer than the lookup cache's TTL (5 s): warm entries are served past their refresh time
WRITE_ANSWER_WITHIN_S = 3.0
WHOLE_WITHIN_S = 5.0
CROWD = 8

pytestmark = pytest.mark.slow


def test_a_hung_blob_store(cluster, s3_server, make_artifact_bytes):
    a, b = cluster
    key = create_tenant(a, "blobs")
    assert upload(a, key, "warm", make_artifact_bytes(1)).status_code == 201
    assert upload(a, key, "cold", make_artifact_bytes(2)).status_code == 201  # in A's blob cache, not B's
    assert classify(b, key, "warm").status_code == 200  # loaded on B
    with s3_server.hung():
        rounds = _while_hung(a, b, key, "warm", make_artifact_bytes, "blob store", lambda: classify(b, key, "cold"))
        assert classify(a, key, "cold").status_code == 200  # A never loaded it: its blob cache answers
        down, _ = wait_until(lambda: info(b)["blobs"]["up"] is False, 3)
        assert down and registry_up_gauge(b, "blobs") == 0.0 and info(b)["database"]["up"]
    _whole_again(a, b, key, lambda: classify(b, key, "cold").status_code == 200, make_artifact_bytes)
    _nothing_half_written(a, b, key, rounds)


def test_a_hung_database(cluster, postgres_server, make_artifact_bytes):
    a, b = cluster
    key, cold_key = warm_up(a, b, make_artifact_bytes)  # 'hot' warm on both, 'untouched' and tenant 'cold' cold on B
    with postgres_server.hung():
        rounds = _while_hung(a, b, key, "hot", make_artifact_bytes, "database", lambda: classify(b, key, "untouched"))
        cold_tenant = classify(b, cold_key, "anything")
        assert cold_tenant.status_code == 503 and cold_tenant.headers["retry-after"], cold_tenant.text  # not 401
        began = time.monotonic()
        with a.client() as admin:
            refused = admin.post("/v1/admin/tenants", json={"name": "later"})
        assert refused.status_code == 503 and time.monotonic() - began < WRITE_ANSWER_WITHIN_S, refused.text
        down, _ = wait_until(lambda: info(b)["database"]["up"] is False, 3)
        assert down and registry_up_gauge(b, "database") == 0.0 and info(b)["blobs"]["up"]
    _whole_again(
        a, b, key,
        lambda: classify(b, key, "untouched").status_code == 200 and classify(b, cold_key, "x").status_code == 404,
        make_artifact_bytes,
    )
    _nothing_half_written(a, b, key, rounds)
    with a.client() as admin:
        assert "later" not in [t["name"] for t in admin.get("/v1/admin/tenants").json()["tenants"]]


def _while_hung(a, b, key, warm_task, make_artifact_bytes, component, cold) -> int:
    """Rounds of calls for HUNG_S: what must keep answering does, the rest (`cold()`, uploads to task
    'new') is refused in time, saying which `component` is missing. Returns how many uploads were refused."""
    started, refused = time.monotonic(), 0
    while time.monotonic() - started < HUNG_S:
        for replica in (a, b):
            assert classify(replica, key, warm_task).status_code == 200, replica.log_tail()
            with replica.client() as client:
                assert client.get("/readyz").status_code == 200
        answer = cold()
        assert answer.status_code == 503 and answer.headers["retry-after"], answer.text  # not 404, not 500
        assert component in answer.json()["error"]["message"], answer.text
        with ThreadPoolExecutor(CROWD) as pool:  # a crowd of uploads at once: none waits longer
            artifacts = [make_artifact_bytes(100 + refused + i) for i in range(CROWD)]
            timed = list(pool.map(lambda data: _timed_upload(a, key, "new", data), artifacts))
        for response, took in timed:
            assert response.status_code == 503 and took < WRITE_ANSWER_WITHIN_S, (took, response.text)
            assert response.json()["error"]["code"] == "registry_unavailable" and response.headers["retry-after"]
            assert component in response.json()["error"]["message"], response.text
        refused += CROWD
    return refused


def _timed_upload(replica, key, task, data):
    began = time.monotonic()
    response = upload(replica, key, task, data)
    return response, time.monotonic() - began


def _whole_again(a, b, key, cold_answers, make_artifact_bytes) -> None:
    back = time.monotonic()
    whole, took = wait_until(
        lambda: cold_answers() and upload(a, key, "after", make_artifact_bytes(3)).status_code == 201,
        WHOLE_WITHIN_S * 2, interval_s=0.1,
    )
    assert whole and time.monotonic() - back < WHOLE_WITHIN_S, f"whole again only after {took:.1f} s"


def _nothing_half_written(a, b, key, refused: int) -> None:
    """No refused upload became a version, and every version of the tenant serves (its blob is there)."""
    assert refused > 0
    for replica in (a, b):
        with replica.client(key) as client:
            assert client.get("/v1/tasks/new").status_code == 404
            tasks = [t["task"] for t in client.get("/v1/tasks").json()["tasks"]]
            for task in tasks:
                for version in client.get(f"/v1/tasks/{task}").json()["versions"]:
                    served = client.post("/v1/classify", json={"task": task, "version": version["version"], "inputs": ["x"]})
                    assert served.status_code == 200, (task, version["version"], served.text)
