"""schemathesis against a real `serve` process (multi-tenant, tiny backbone): every operation of the
OpenAPI document, positive and negative examples, each sent with no key, a tenant's key and the admin
token. No answer may be a 5xx, and every answer must be in the document: a documented status, content
type, headers (Retry-After, WWW-Authenticate) and body schema.

Without a key every secured operation must answer 401. `positive_data_acceptance` is left out: schema-valid data may still be
refused for what only the server knows (an unknown task: 404; a random upload that is no artifact: 422), as documented."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import ignored_auth, missing_required_header, positive_data_acceptance

from harness.processes import stop_process
from server.api.app import create_app
from server.artifact import artifact_to_bytes
from server.settings import Settings
from tests.api.test_server_process import ADMIN, start_server
from tests.helpers import make_artifact

pytestmark = pytest.mark.slow
# The key is set here for each call (none, a tenant's, the admin's), so the checks that drop it themselves
# are replaced by the assertion below: without a key, every secured operation answers 401.
EXCLUDED = [positive_data_acceptance, missing_required_header, ignored_auth]
MAX_EXAMPLES = 6  # per operation and generation mode: about a minute on 2 shared cores


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory, tiny_backbone_dir, tiny_engine):
    folder = tmp_path_factory.mktemp("fuzz")
    proc, base = start_server(tiny_backbone_dir, folder / "data", folder / "server.log", PREFIX_SERVER_LOG_LEVEL="WARNING")
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        key = httpx.post(f"{base}/v1/admin/tenants", json={"name": "fuzz"}, headers=admin).json()["api_key"]
        data = artifact_to_bytes(make_artifact(tiny_engine.shape, 4, 3, seed=1))
        for headers in (admin, {"Authorization": f"Bearer {key}"}):  # a real task for either caller
            httpx.put(f"{base}/v1/tasks/a", files={"file": ("a.safetensors", data)}, headers=headers).raise_for_status()
        yield base, key, folder / "server.log"
    finally:
        stop_process(proc)


def _document() -> dict:
    """The multi-tenant document, built in process: schemathesis parametrizes at collection, before the
    server runs (its lazy fixture loader does not work with pytest 9); the test checks the served one is it."""
    return create_app(Settings(backbone="unused", prefixes_dir="", admin_token=ADMIN)).openapi()


DOCUMENT = _document()
SECURED_METHODS = {path: {m for m, op in ops.items() if op.get("security")} for path, ops in DOCUMENT["paths"].items()}
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(modes=["positive", "negative"], max_examples=MAX_EXAMPLES, deterministic=True)


def test_the_served_document_is_the_fuzzed_one(fuzzed_server):
    base, _, _ = fuzzed_server
    assert httpx.get(f"{base}/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_in_the_document_and_none_is_a_5xx(case, fuzzed_server):
    base, key, log_path = fuzzed_server
    secured = bool(case.operation.definition.raw.get("security"))
    for auth in (None, f"Bearer {key}", f"Bearer {ADMIN}"):
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if auth:
            headers["Authorization"] = auth
        case.headers = headers
        response = case.call_and_validate(base_url=base, excluded_checks=EXCLUDED, timeout=30)
        if auth is None and secured:  # never served without a key; schema-valid requests are 401
            positive = case.meta is None or not case.meta.generation.mode.is_negative
            expected = (401,) if positive and case.method.lower() in SECURED_METHODS.get(case.path, ()) else (401, 405, 413, 422)
            assert response.status_code in expected, (case.method, case.path, response.status_code, response.text)
    assert "Traceback" not in log_path.read_text()
