"""SPEC 6 over HTTP: the X-Prefix-Task header, a task's residency per tier, results after eviction
equal to those before, /metrics the same size however many tasks were touched."""

from __future__ import annotations

import re

from tests.api.conftest import make_settings, running_client, upload


def classify(client, task, text="a fine day", **headers):
    return client.post("/v1/classify", json={"task": task, "inputs": [text]}, headers=headers)


def test_the_task_header_must_name_the_bodys_task(client, artifact_bytes):
    assert upload(client, "reviews", artifact_bytes(seed=1)).status_code == 201
    assert classify(client, "reviews", **{"X-Prefix-Task": "reviews"}).status_code == 200
    refused = classify(client, "reviews", **{"X-Prefix-Task": "spam"})
    assert refused.status_code == 422
    assert "header X-Prefix-Task: expected the request's task 'reviews', got 'spam'" in refused.json()["error"]["message"]
    infer = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a fine day"]}]}
    kserve = client.post("/v2/models/reviews/infer", json=infer, headers={"X-Prefix-Task": "other"})
    assert kserve.status_code == 422  # the KServe path's model name is the task the header must name


def test_residency_follows_the_device_tier_and_results_survive_eviction(tmp_path, tiny_backbone_dir, artifact_bytes):
    data = [artifact_bytes(seed=i, prefix_len=8) for i in range(3)]
    one_task = len(data[0])  # a device budget of about one task: each classify evicts the one before
    settings = make_settings(tmp_path / "data", tiny_backbone_dir, device_cache_bytes=one_task, host_cache_bytes=10**7)
    with running_client(settings) as client:
        for i, blob in enumerate(data):
            assert upload(client, f"t{i}", blob).status_code == 201
        assert client.get("/v1/tasks/t0/residency").json()["versions"][0] | {"sha256": ""} == {
            "version": 1, "sha256": "", "device": False, "host": False,
        }
        first = classify(client, "t0").json()["results"]
        assert client.get("/v1/tasks/t0/residency").json()["versions"][0]["device"] is True
        classify(client, "t1"), classify(client, "t2")
        evicted = client.get("/v1/tasks/t0/residency").json()["versions"][0]
        assert (evicted["device"], evicted["host"]) == (False, True)
        assert classify(client, "t0").json()["results"] == first


def series(metrics_text: str) -> list[str]:
    """The names and labels of every sample, values left out."""
    return sorted(re.sub(r" [^ ]+$", "", line) for line in metrics_text.splitlines() if line and not line.startswith("#"))


def test_metrics_do_not_grow_with_the_tasks_touched(client, artifact_bytes):
    def touch(names):
        for name in names:
            assert upload(client, name, artifact_bytes(seed=hash(name) % 1000)).status_code == 201
            assert classify(client, name).status_code == 200

    touch([f"a{i}" for i in range(3)])
    before = series(client.get("/metrics").text)
    touch([f"b{i}" for i in range(30)])
    after = series(client.get("/metrics").text)
    assert after == before
    for tier in ("device", "host"):
        assert f'prefix_server_tier_bytes{{tier="{tier}"}}' in after
