"""Operations in-process: /metrics only for the admin in multi-tenant mode, latency by tenant, the
build-info gauge, /readyz unready while draining."""

from __future__ import annotations

from server import __version__
from tests.api.conftest import ADMIN, bearer, upload


def test_metrics_are_the_admins_in_multi_tenant_mode(mt_client, artifact_bytes, tiny_engine):
    assert mt_client.get("/metrics").status_code == 401
    key = mt_client.post("/v1/admin/tenants", json={"name": "acme"}, headers=bearer(ADMIN)).json()["api_key"]
    assert mt_client.get("/metrics", headers=bearer(key)).status_code == 401  # a tenant sees no one's traffic
    assert upload(mt_client, "t", artifact_bytes(), key=key).status_code == 201
    assert mt_client.post("/v1/classify", json={"task": "t", "inputs": ["x"]}, headers=bearer(key)).status_code == 200
    text = mt_client.get("/metrics", headers=bearer(ADMIN)).text
    assert 'prefix_server_request_seconds_count{tenant="acme"} 1.0' in text
    (info,) = [line for line in text.splitlines() if line.startswith("prefix_server_build_info{")]
    assert f'version="{__version__}"' in info and f'fingerprint="{tiny_engine.files.fingerprint}"' in info
    assert "prefix_server_engine_restarts_total" in text


def test_readyz_is_unready_while_draining(client):
    services = client.app.state.services
    services.draining = True
    try:
        response = client.get("/readyz")
        assert response.status_code == 503 and "shutting down" in response.json()["error"]["message"]
    finally:
        services.draining = False
    assert client.get("/readyz").status_code == 200
