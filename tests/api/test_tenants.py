"""Authentication, tenants and isolation (multi-tenant mode), and single-tenant mode."""

from __future__ import annotations

from tests.api.conftest import ADMIN, bearer, upload


def _tenant(client, name, **limits):
    body = {"name": name, **({"limits": limits} if limits else {})}
    response = client.post("/v1/admin/tenants", json=body, headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    return response.json()["api_key"]


def test_keys_are_required_and_checked(mt_client):
    missing = mt_client.get("/v1/tasks")
    assert missing.status_code == 401 and "Bearer" in missing.json()["error"]["message"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert mt_client.get("/v1/tasks", headers=bearer("wrong")).status_code == 401
    assert mt_client.get("/v1/tasks", headers={"Authorization": "Basic abc"}).status_code == 401
    assert mt_client.get("/healthz").status_code == 200  # operations stay open
    assert mt_client.get("/v1/info").status_code == 401  # every /v1 call carries a key (SPEC)
    assert mt_client.get("/v1/info", headers=bearer(ADMIN)).json()["multi_tenant"] is True


def test_admin_creates_tenants_and_keys_are_shown_once(mt_client):
    key = _tenant(mt_client, "acme")
    assert key and mt_client.get("/v1/tasks", headers=bearer(key)).json()["tasks"] == []
    again = mt_client.post("/v1/admin/tenants", json={"name": "acme"}, headers=bearer(ADMIN))
    assert again.status_code == 409
    bad = mt_client.post("/v1/admin/tenants", json={"name": "Not OK"}, headers=bearer(ADMIN))
    assert bad.status_code == 422
    as_tenant = mt_client.post("/v1/admin/tenants", json={"name": "evil"}, headers=bearer(key))
    assert as_tenant.status_code == 404


def test_tenants_are_isolated(mt_client, artifact_bytes):
    key_a, key_b = _tenant(mt_client, "alpha"), _tenant(mt_client, "beta")
    assert upload(mt_client, "secret", artifact_bytes(seed=1), key=key_a).status_code == 201
    for call in (
        lambda: mt_client.get("/v1/tasks/secret", headers=bearer(key_b)),
        lambda: mt_client.post("/v1/classify", json={"task": "secret", "inputs": ["x"]}, headers=bearer(key_b)),
        lambda: mt_client.put("/v1/tasks/secret/route", json={"version": 1}, headers=bearer(key_b)),
        lambda: mt_client.delete("/v1/tasks/secret", headers=bearer(key_b)),
    ):
        response = call()
        assert response.status_code == 404, response.text
    assert mt_client.get("/v1/tasks", headers=bearer(key_b)).json()["tasks"] == []
    # beta may use the same task name for its own, different task
    assert upload(mt_client, "secret", artifact_bytes(seed=2), key=key_b).json()["version"] == 1
    a = mt_client.post("/v1/classify", json={"task": "secret", "inputs": ["x"]}, headers=bearer(key_a)).json()
    b = mt_client.post("/v1/classify", json={"task": "secret", "inputs": ["x"]}, headers=bearer(key_b)).json()
    assert a["results"] != b["results"]
    assert mt_client.get("/v1/tasks/secret", headers=bearer(key_a)).json()["versions"][0]["version"] == 1


def test_tenant_task_quota(mt_client, artifact_bytes):
    key = _tenant(mt_client, "small", max_tasks=1)
    assert upload(mt_client, "one", artifact_bytes(), key=key).status_code == 201
    assert upload(mt_client, "one", artifact_bytes(seed=5), key=key).status_code == 201  # a version, not a task
    refused = upload(mt_client, "two", artifact_bytes(), key=key)
    assert refused.status_code == 409 and "1" in refused.json()["error"]["message"]


def test_single_tenant_mode_needs_no_key_and_has_no_admin(client):
    assert client.get("/v1/tasks").status_code == 200
    refused = client.post("/v1/admin/tenants", json={"name": "x"})
    assert refused.status_code == 409 and "single-tenant" in refused.json()["error"]["message"]


def test_info_and_operations(client, tiny_engine):
    info = client.get("/v1/info").json()
    assert info["backbone"]["fingerprint"] == tiny_engine.files.fingerprint
    assert info["backbone"]["num_layers"] == 2 and info["backbone"]["hidden_size"] == 32
    assert info["limits"]["max_prefix_len"] == 126
    assert client.get("/readyz").json() == {"status": "ready"}
    client.post("/v1/classify", json={"task": "none", "inputs": ["x"]})
    metrics = client.get("/metrics").text
    assert "prefix_server_requests_total" in metrics and "prefix_server_batch_size_bucket" in metrics
    assert client.get("/nope").json()["error"]["code"] == "not_found"
    assert client.get("/healthz").headers["x-request-id"]
