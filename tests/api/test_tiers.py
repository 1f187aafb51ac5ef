"""SPEC 6 over HTTP: the X-Prefix-Task header, a task's residency per tier, results after eviction
equal to those before, /metrics the same size however many tasks were touched; pinned tasks (the
setting and the admin call), which stay on the device and follow their task's new versions."""

from __future__ import annotations

import re

from harness.processes import wait_until
from tests.api.conftest import ADMIN, bearer, make_settings, running_client, upload


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
            "version": 1, "sha256": "", "device": False, "host": False, "pinned": False,
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


def pinned_versions(client) -> list[dict]:
    return [v for task in client.get("/v1/admin/pinned-tasks", headers=bearer(ADMIN)).json()["tasks"] for v in task["versions"]]


def test_pinned_tasks_stay_on_the_device_and_follow_new_versions(tmp_path, tiny_backbone_dir, artifact_bytes):
    data = [artifact_bytes(seed=i, prefix_len=8) for i in range(5)]
    settings = make_settings(tmp_path / "data", tiny_backbone_dir, admin_token=ADMIN, registry_ttl_s=0.1,
                             device_cache_bytes=2 * len(data[0]))  # room for two tasks
    with running_client(settings) as client:
        key = client.post("/v1/admin/tenants", json={"name": "acme"}, headers=bearer(ADMIN)).json()["api_key"]
        for i in range(4):
            assert upload(client, f"t{i}", data[i], key=key).status_code == 201
        pinned = client.put("/v1/admin/pinned-tasks", json={"tasks": ["acme/t0"]}, headers=bearer(ADMIN))
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["tasks"][0]["versions"][0] | {"sha256": ""} == {
            "version": 1, "sha256": "", "device": True, "host": True, "pinned": True}
        for i in (1, 2, 3, 1):  # each would have evicted t0 by now
            assert classify(client, f"t{i}", **bearer(key)).status_code == 200
        assert client.get("/v1/tasks/t0/residency", headers=bearer(key)).json()["versions"][0]["device"] is True

        too_many = client.put("/v1/admin/pinned-tasks", json={"tasks": ["acme/t0", "acme/t1", "acme/t2"]}, headers=bearer(ADMIN))
        assert too_many.status_code == 409 and "expected pinned tasks within the device budget" in too_many.text
        missing = client.put("/v1/admin/pinned-tasks", json={"tasks": ["acme/t0", "acme/nope"]}, headers=bearer(ADMIN))
        assert missing.status_code == 404 and "acme/nope" in missing.text
        assert client.put("/v1/admin/pinned-tasks", json={"tasks": ["t0"]}, headers=bearer(ADMIN)).status_code == 422
        assert [v["version"] for v in pinned_versions(client)] == [1]  # none of the refusals changed the pins

        assert upload(client, "t0", data[4], key=key).status_code == 201  # version 2 takes the route
        wait_until(lambda: [(v["version"], v["pinned"], v["device"]) for v in pinned_versions(client)] == [(2, True, True)],
                   30, "the pin to follow t0 to its version 2")


def test_the_setting_pins_a_task_uploaded_after_the_start(tmp_path, tiny_backbone_dir, artifact_bytes):
    settings = make_settings(tmp_path / "data", tiny_backbone_dir, registry_ttl_s=0.1, pinned_tasks="default/later")
    with running_client(settings) as client:
        assert upload(client, "later", artifact_bytes(seed=3)).status_code == 201
        wait_until(lambda: client.get("/v1/tasks/later/residency").json()["versions"][0]["pinned"], 30,
                   "the pinned task to be loaded once it exists")
        assert client.get("/v1/tasks/later/residency").json()["versions"][0]["device"] is True
