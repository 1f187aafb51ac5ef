"""The OpenAPI document (server/api/openapi.py) and the fixes the fuzzing found: bodies refused while
streaming are 413, not 400; an undecodable body is 422; 405 names every method of the path, also
under /v2; every 503 says when to retry. /docs and /redoc work offline."""

from __future__ import annotations

import re

from server.api.openapi import OPERATIONS
from tests.api.conftest import ADMIN, bearer, make_settings, running_client, upload


def test_multi_tenant_document_has_the_bearer_scheme_and_real_error_bodies(mt_client):
    document = mt_client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "a tenant's API key or the admin token"}
    classify = document["paths"]["/v1/classify"]["post"]
    assert classify["security"] == [{"bearerAuth": []}]
    assert set(classify["responses"]) == {"200", "401", "404", "413", "422", "429", "503", "504"}
    assert classify["responses"]["429"]["headers"]["Retry-After"]["required"]
    assert classify["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert classify["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ClassifyResponse"}
    tei = document["paths"]["/v1/tasks/{task}/predict"]["post"]["responses"]["404"]["content"]["application/json"]
    assert tei["schema"] == {"$ref": "#/components/schemas/TeiError"}
    assert "security" not in document["paths"]["/healthz"]["get"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert documented == set(OPERATIONS)


def test_docs_pages_load_everything_from_the_server_itself(client):
    """Swagger UI and ReDoc on a machine without internet: every script, style and icon is local."""
    for page, script in (("/docs", "SwaggerUIBundle"), ("/redoc", "Redoc")):
        html = client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "http://" not in html.text and "https://" not in html.text, html.text
        urls = [a or b for a, b in re.findall(r'(?:src|href|spec-url)="([^"]+)"|url: \'([^\']+)\'', html.text)]
        assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls), urls
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            asset = client.get(url)
            assert asset.status_code == 200, url
            if url.endswith(".js"):
                assert script in asset.text[:5000] and len(asset.content) > 100_000  # the real bundle, not a stub
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_single_tenant_document_asks_for_no_key(client):
    document = client.get("/openapi.json").json()
    assert "securitySchemes" not in document["components"]
    classify = document["paths"]["/v1/classify"]["post"]
    assert "security" not in classify and "401" not in classify["responses"]


def test_a_body_too_large_while_streaming_is_413_in_each_protocol(tmp_path, tiny_backbone_dir):
    with running_client(make_settings(tmp_path / "data", tiny_backbone_dir, max_request_bytes=1000)) as client:
        def chunks():
            return iter([b'{"task": "t", "inputs": ["', b"a" * 2000, b'"]}'])  # chunked: no Content-Length
        v1 = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        assert v1.status_code == 413 and v1.json()["error"]["code"] == "payload_too_large"
        tei = client.post("/v1/tasks/t/predict", content=b" " * 2000, headers={"content-type": "application/json"})
        assert tei.status_code == 413 and tei.json()["error_type"] == "payload_too_large"  # declared: TEI's body too
        assert "at most 1000 bytes, got 2000" in tei.json()["error"]


def test_an_undecodable_body_is_422(mt_client):
    response = mt_client.post("/v1/admin/tenants", content=b"\xff\xfe{", headers={**bearer(ADMIN), "content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"
    assert "expected application/json that parses" in response.json()["error"]["message"]


def test_405_names_every_method_of_the_path(client, artifact_bytes):
    upload(client, "t", artifact_bytes())
    response = client.request("OPTIONS", "/v1/tasks/t")
    assert response.status_code == 405 and response.headers["allow"] == "DELETE, GET, PUT"
    kserve = client.put("/v2/health/live")
    assert kserve.status_code == 405 and kserve.headers["allow"] == "GET" and "expected GET, got PUT" in kserve.json()["error"]
    assert client.get("/v2/nowhere").status_code == 404


def test_not_ready_503_says_when_to_retry():
    from server.api.errors import error_response

    assert error_response(503, "the backbone is loading").headers["retry-after"] == "1"
