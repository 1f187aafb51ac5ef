"""The OpenAPI document: what each operation answers on success (server/api/response_schemas.py), every
error status it can send with the body its protocol uses, and the bearer security scheme, so Swagger
UI's Authorize button works and generated clients send the key.

A post-processing of FastAPI's own document, because the routes return orjson responses directly
(server/api/responses.py) and `response_model` would validate and re-encode every answer. The
document follows the server's mode: with an admin token the key is required and 401 documented;
without one, neither. An operation missing from the table below fails the document's build (tests/api/test_openapi.py
builds it), and tests/api/test_openapi_fuzz.py checks the table against the running server.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from server.api import response_schemas as rs

V1, KSERVE, TEI, HF = "v1", "kserve", "tei", "hf"
ERROR_BODIES = {V1: rs.ErrorBody, KSERVE: rs.ProtocolError, TEI: rs.TeiError, HF: rs.ProtocolError}
ERROR_MEANINGS = {
    400: "the request does not follow the protocol", 401: "missing or unknown API key",
    404: "not found (also another tenant's task: existence is not leaked)", 409: "conflict",
    413: "body too large (refused before it is read)", 422: "invalid input or artifact",
    429: "overloaded: retry after Retry-After seconds", 503: "not ready, or the registry or engine unreachable",
    504: "timed out; its queued inputs were dropped",
}
SCHEME = "bearerAuth"
_CLASSIFY_ERRORS = (404, 413, 422, 429, 503, 504)
_TASK_ERRORS = (404, 422, 503)  # 422: not a task name
_ADMIN_ERRORS = (404, 409, 422, 503)  # 404: a tenant key asking; 409: single-tenant mode or a clash

# (method, path) -> (family, success status, success model or None, error statuses, needs a key)
OPERATIONS: dict[tuple[str, str], tuple[str, int, object, tuple[int, ...], bool]] = {
    ("GET", "/healthz"): (V1, 200, rs.Health, (), False),
    ("GET", "/readyz"): (V1, 200, rs.Ready, (503,), False),
    ("GET", "/metrics"): (V1, 200, None, (404,), True),  # multi-tenant: the admin token; 404 on METRICS_PORT
    ("GET", "/v1/info"): (V1, 200, rs.Info, (503,), True),
    ("POST", "/v1/classify"): (V1, 200, rs.ClassifyResponse, _CLASSIFY_ERRORS, True),
    ("POST", "/v1/admin/tenants"): (V1, 201, rs.TenantCreated, (*_ADMIN_ERRORS, 413), True),
    ("GET", "/v1/admin/tenants"): (V1, 200, rs.TenantList, (404, 409, 503), True),
    ("DELETE", "/v1/admin/tenants/{name}"): (V1, 204, None, _ADMIN_ERRORS, True),
    ("POST", "/v1/admin/tenants/{name}/keys"): (V1, 201, rs.KeyRotated, _ADMIN_ERRORS, True),
    ("GET", "/v1/admin/pinned-tasks"): (V1, 200, rs.PinnedTasks, (404, 409, 503), True),
    ("PUT", "/v1/admin/pinned-tasks"): (V1, 200, rs.PinnedTasks, (*_ADMIN_ERRORS, 413), True),
    ("GET", "/v1/tasks"): (V1, 200, rs.TaskList, (503,), True),
    ("PUT", "/v1/tasks/{task}"): (V1, 201, rs.Version, (409, 413, 422, 503), True),
    ("GET", "/v1/tasks/{task}"): (V1, 200, rs.TaskDetail, _TASK_ERRORS, True),
    ("DELETE", "/v1/tasks/{task}"): (V1, 204, None, _TASK_ERRORS, True),
    ("GET", "/v1/tasks/{task}/residency"): (V1, 200, rs.Residency, _TASK_ERRORS, True),
    ("PUT", "/v1/tasks/{task}/route"): (V1, 200, rs.RouteSet, (*_TASK_ERRORS, 413), True),
    ("DELETE", "/v1/tasks/{task}/versions/{version}"): (V1, 204, None, (404, 409, 422, 503), True),
    ("POST", "/v1/tasks/{task}/predict"): (TEI, 200, list[rs.Ranked] | list[list[rs.Ranked]], _CLASSIFY_ERRORS, True),
    ("POST", "/models/{task}"): (HF, 200, list[list[rs.Ranked]] | rs.SpanResult | list[rs.SpanResult], _CLASSIFY_ERRORS, True),
    ("GET", "/v2/health/live"): (KSERVE, 200, rs.KServeLive, (), False),
    ("GET", "/v2/health/ready"): (KSERVE, 200, rs.KServeReady, (), False),
    ("GET", "/v2"): (KSERVE, 200, rs.KServeServerMetadata, (), False),
    ("GET", "/v2/models/{task}"): (KSERVE, 200, rs.KServeModelMetadata, _TASK_ERRORS, True),
    ("GET", "/v2/models/{task}/versions/{version}"): (KSERVE, 200, rs.KServeModelMetadata, _TASK_ERRORS, True),
    ("GET", "/v2/models/{task}/ready"): (KSERVE, 200, rs.KServeModelReady, _TASK_ERRORS, True),
    ("GET", "/v2/models/{task}/versions/{version}/ready"): (KSERVE, 200, rs.KServeModelReady, _TASK_ERRORS, True),
    ("POST", "/v2/models/{task}/infer"): (KSERVE, 200, rs.KServeInferResponse, (400, *_CLASSIFY_ERRORS), True),
    ("POST", "/v2/models/{task}/versions/{version}/infer"): (KSERVE, 200, rs.KServeInferResponse, (400, *_CLASSIFY_ERRORS), True),
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "required": True, "schema": {"type": "integer"}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}}
_KSERVE_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/KServeInferRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": "binary tensor data: the JSON request, then the tensors' bytes; "
                                                    "the Inference-Header-Content-Length header gives the JSON's length"},
    },
}


def install_openapi(app: FastAPI, multi_tenant: bool) -> None:
    """Replaces app.openapi with the document described above, built once on first use."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=_description(multi_tenant), routes=app.routes)
            app.openapi_schema = complete(document, multi_tenant)
        return app.openapi_schema

    app.openapi = openapi


def _description(multi_tenant: bool) -> str:
    mode = ("Multi-tenant: every call but health and readiness carries `Authorization: Bearer <key>` "
            "(a tenant key, or the admin token; /metrics takes the admin token only)." if multi_tenant else
            "Single-tenant (no admin token configured): no key is needed; every caller is tenant `default`.")
    return ("P-tuning v2 prefix classifiers over one shared backbone (SPEC sections 2 and 5). " + mode +
            " Errors of the v1 API are `{\"error\": {\"code\", \"message\"}}`; KServe v2 and the Hugging Face API answer "
            "`{\"error\": message}`, TEI `{\"error\", \"error_type\"}`.")


def complete(document: dict, multi_tenant: bool) -> dict:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if multi_tenant:
        components["securitySchemes"] = {SCHEME: {"type": "http", "scheme": "bearer", "description": "a tenant's API key or the admin token"}}
    refs = _register_models(schemas)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if (method.upper(), path) not in OPERATIONS:
                raise RuntimeError(f"server/api/openapi.py: expected every operation in OPERATIONS, got none for {method.upper()} {path}")
            family, status, model, errors, keyed = OPERATIONS[(method.upper(), path)]
            operation["responses"] = _responses(family, status, model, errors, keyed and multi_tenant, refs, method, path)
            if keyed and multi_tenant:
                operation["security"] = [{SCHEME: []}]
            if path.endswith("/infer"):
                operation["requestBody"] = _KSERVE_INFER_BODY
    return document


def _register_models(schemas: dict) -> dict[object, dict]:
    """Adds every response model to the components; returns model -> the schema that refers to it."""
    models = [m for m in vars(rs).values() if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == rs.__name__]
    keyed, defs = models_json_schema([(m, "serialization") for m in models], ref_template="#/components/schemas/{model}")
    schemas.update(defs.get("$defs", {}))
    refs: dict[object, dict] = {m: keyed[(m, "serialization")] for m in models}
    for _, _, model, _, _ in OPERATIONS.values():
        if model is not None and model not in refs:  # a list or union of models
            refs[model] = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
            refs[model].pop("$defs", None)
    return refs


def _responses(family, status, model, errors, keyed, refs, method, path) -> dict:
    responses: dict[str, dict] = {}
    if model is None and status == 200:  # /metrics
        responses["200"] = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    elif model is None:
        responses[str(status)] = {"description": "done; no body"}
    else:
        content = {"application/json": {"schema": refs[model]}}
        if path.endswith("/infer"):  # binary tensor data answers when asked for
            content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        responses[str(status)] = {"description": "OK", "content": content}
    if path == "/v2/health/ready":
        responses["503"] = {"description": "not ready", "content": {"application/json": {"schema": refs[rs.KServeReady]}}}
    error_ref = {"$ref": f"#/components/schemas/{ERROR_BODIES[family].__name__}"}
    for code in sorted(set(errors) | ({401} if keyed else set())):
        headers = _RETRY_AFTER if code in (429, 503) else _WWW_AUTHENTICATE if code == 401 else None
        responses[str(code)] = {"description": ERROR_MEANINGS[code], "content": {"application/json": {"schema": error_ref}}}
        if headers:
            responses[str(code)]["headers"] = headers
    return responses
