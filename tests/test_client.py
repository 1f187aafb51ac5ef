"""The Python client (server/client.py): its retries of 429/503 against a mock transport (Retry-After,
backoff, bounded attempts and total time), and every call, sync and async, against a real `serve`."""

from __future__ import annotations

import asyncio
import email.utils
import time
from datetime import datetime

import httpx
import pytest

from harness.processes import stop_process
from server.artifact import artifact_to_bytes
from server.client import AsyncClient, Client, PrefixServerError, RetryPolicy, retry_wait
from tests.api.test_server_process import ADMIN, start_server
from tests.helpers import make_artifact

FAST = RetryPolicy(max_attempts=4, budget_s=5.0, backoff_s=0.01)


def scripted(*answers):
    """A transport answering with `answers` in turn (status, headers, body); records each request."""
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, headers, body = answers[min(len(seen), len(answers)) - 1]
        return httpx.Response(status, headers=headers, json=body)

    return httpx.MockTransport(handle), seen


OVERLOADED = (429, {"Retry-After": "0"}, {"error": {"code": "overloaded", "message": "the server queue is full"}})
ANSWER = (200, {}, {"task": "t", "version": 3, "results": [{"scores": {"a": 0.2, "b": 0.8}, "label": "b", "score": 0.8}]})


def test_429_is_retried_after_retry_after_then_answers():
    transport, seen = scripted(OVERLOADED, OVERLOADED, ANSWER)
    with Client("http://server", api_key="k", retry=FAST, transport=transport) as client:
        answer = client.classify("t", ["x", ("y", "z")])
    assert len(seen) == 3 and answer.version == 3 and answer.results[0].label == "b"
    assert seen[0].headers["authorization"] == "Bearer k"
    assert seen[0].read() == b'{"task":"t","inputs":["x",{"text":"y","text_pair":"z"}],"truncate":true}'


def test_retries_are_bounded_by_attempts_and_by_total_time():
    transport, seen = scripted(OVERLOADED)
    with Client("http://server", retry=FAST, transport=transport) as client, pytest.raises(PrefixServerError) as refused:
        client.classify("t", "x")
    assert len(seen) == 4 and (refused.value.status, refused.value.code) == (429, "overloaded")
    assert refused.value.message == "the server queue is full"
    slow = (503, {"Retry-After": "60"}, {"error": {"code": "not_ready", "message": "the backbone is loading"}})
    transport, seen = scripted(slow)
    started = time.monotonic()
    with Client("http://server", retry=FAST, transport=transport) as client, pytest.raises(PrefixServerError) as refused:
        client.info()
    assert len(seen) == 1 and refused.value.status == 503 and time.monotonic() - started < 1  # 60 s > the 5 s budget


def test_retry_wait_reads_both_forms_of_retry_after_and_backs_off_without_it():
    policy = RetryPolicy(max_attempts=5, budget_s=100, backoff_s=0.5)
    assert retry_wait(httpx.Response(429, headers={"Retry-After": "3"}), 1, 0, policy) == 3
    later = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 < retry_wait(httpx.Response(503, headers={"Retry-After": later}), 1, 0, policy) <= 10
    assert [retry_wait(httpx.Response(503), attempt, 0, policy) for attempt in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_wait(httpx.Response(503), 5, 0, policy) is None  # attempts used up
    assert retry_wait(httpx.Response(503, headers={"Retry-After": "3"}), 1, 98, policy) is None  # past the budget
    assert retry_wait(httpx.Response(422), 1, 0, policy) is None


def test_errors_without_the_servers_body_and_unreachable_servers():
    transport, _ = scripted((502, {}, None))
    with Client("http://server", transport=transport) as client, pytest.raises(PrefixServerError) as refused:
        client.list_tasks()
    assert (refused.value.status, refused.value.code) == (502, "http_502")
    with Client("http://127.0.0.1:9", retry=FAST) as client, pytest.raises(PrefixServerError) as refused:
        client.info()
    assert refused.value.status is None and refused.value.code == "unreachable"
    with pytest.raises(ValueError, match="expected an http\\(s\\) URL"):
        Client("ftp://server")
    with pytest.raises(ValueError, match="expected exactly one of version or weights"):
        Client("http://server").set_route("t")


def test_async_client_retries_the_same_way():
    transport, seen = scripted(OVERLOADED, ANSWER)

    async def run():
        async with AsyncClient("http://server", retry=FAST, transport=transport) as client:
            return await client.classify("t", ["x"], version=3, raw_scores=True)

    answer = asyncio.run(run())
    assert len(seen) == 2 and answer.results[0].scores == {"a": 0.2, "b": 0.8}
    assert b'"version":3' in seen[0].read() and b'"raw_scores":true' in seen[0].read()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_backbone_dir, tiny_engine):
    folder = tmp_path_factory.mktemp("client")
    proc, base = start_server(tiny_backbone_dir, folder / "data", folder / "server.log")
    artifacts = [artifact_to_bytes(make_artifact(tiny_engine.shape, 4, 3, seed=seed)) for seed in (1, 2)]
    try:
        yield base, artifacts, folder
    finally:
        stop_process(proc)


def test_every_call_against_a_server(server):
    base, (first, second), folder = server
    with Client(base, api_key=ADMIN) as admin:
        tenant = admin.create_tenant("acme")
        assert tenant.name == "acme" and tenant.api_key.startswith("psk_")
    path = folder / "second.safetensors"
    path.write_bytes(second)
    with Client(base, api_key=tenant.api_key) as client:
        assert client.info().backbone["num_layers"] == 2
        v1, v2 = client.upload("reviews", first), client.upload("reviews", path)
        assert (v1.version, v2.version, v1.labels, v1.problem_type) == (1, 2, ("label_0", "label_1", "label_2"), "single_label_classification")
        answer = client.classify("reviews", ["a triumph", ("is it good?", "it is")])
        assert answer.version == 2 and len(answer.results) == 2 and answer.results[0].label in v1.labels
        assert client.classify("reviews", "a triumph", version=1).version == 1
        assert client.set_route("reviews", version=1).version == 1
        assert client.classify("reviews", "a triumph").version == 1
        assert client.set_route("reviews", weights={1: 0.5, 2: 0.5}).weights == {1: 0.5, 2: 0.5}
        shown = client.get_task("reviews")
        assert [v.version for v in shown.versions] == [1, 2] and shown.active_versions == [1, 2]
        assert [v1, v2] == shown.versions  # an upload's Version is complete: size, creation time, metadata
        assert (v1.size_bytes, v2.size_bytes, v1.metadata) == (len(first), len(second), {"author": "tests"})
        assert datetime.fromisoformat(v1.created_at) <= datetime.fromisoformat(v2.created_at)
        assert [t.task for t in client.list_tasks()] == ["reviews"]
        client.delete_task("reviews")
        with pytest.raises(PrefixServerError) as refused:
            client.get_task("reviews")
        assert (refused.value.status, refused.value.code) == (404, "not_found")


def test_async_client_against_a_server(server):
    base, (first, _), _ = server

    async def run():
        async with AsyncClient(base, api_key=ADMIN) as admin:
            key = (await admin.create_tenant("async-co")).api_key
        async with AsyncClient(base, api_key=key) as client:
            version = await client.upload("t", first)
            answers = await asyncio.gather(*(client.classify("t", [f"text {i}"]) for i in range(8)))
            return version, answers

    version, answers = asyncio.run(run())
    assert version.version == 1 and all(a.version == 1 and len(a.results) == 1 for a in answers)


def test_a_request_over_the_tenants_queue_allowance_is_refused_as_invalid(server):
    """It could never be admitted, so it is a 422 naming the limit, not a 429 a client would retry."""
    base, (first, _), _ = server
    with Client(base, api_key=ADMIN) as admin:
        key = admin.create_tenant("tiny-queue", limits={"max_queued_inputs": 1}).api_key
    with Client(base, api_key=key, retry=RetryPolicy(max_attempts=3, budget_s=0.5)) as client:
        client.upload("t", first)
        assert len(client.classify("t", ["one"]).results) == 1
        with pytest.raises(PrefixServerError) as refused:
            client.classify("t", ["one", "two"])  # 2 inputs > the tenant's whole queue of 1
    assert (refused.value.status, refused.value.code) == (422, "invalid_input")
    assert "at most 1 inputs, tenant 'tiny-queue''s queue allowance, got 2" in refused.value.message
