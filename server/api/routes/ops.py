"""Liveness, readiness, Prometheus metrics and GET /v1/info.

/metrics shows every tenant's traffic, so in multi-tenant mode only the admin token reads it here;
with PREFIX_SERVER_METRICS_PORT set it lives on that port alone (serve starts it) and not here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from server.api.deps import CallerDep, ReadyServices, get_services, is_admin_request
from server.api.errors import error_response
from server.api.state import Services

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: Annotated[Services, Depends(get_services)]):
    if services.draining:
        return error_response(503, "shutting down: requests in flight are finishing")
    if services.ready and not services.runtime.healthy:
        return error_response(503, "the engine process is restarting")
    if services.ready:
        return {"status": "ready"}
    if services.startup_error:
        return error_response(503, f"start-up failed: {services.startup_error}")
    return error_response(503, "the backbone is loading")


@router.get("/metrics")
def prometheus_metrics(request: Request, services: Annotated[Services, Depends(get_services)]) -> Response:
    s = services.settings
    if s.metrics_port:
        return error_response(404, f"not found: metrics are served on port {s.metrics_port}")
    if s.multi_tenant and not is_admin_request(request, s.admin_token.get_secret_value()):
        return error_response(
            401, "/metrics: expected the admin token as 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/info")
async def info(_: CallerDep, services: ReadyServices) -> dict:
    s, runtime = services.settings, services.runtime
    backbone = runtime.info()
    return {
        "backbone": backbone,
        "limits": {
            "max_prefix_len": runtime.shape.max_prefix_len,
            "max_batch_size": s.max_batch_size,
            "max_batch_tokens": s.max_batch_tokens,
            "max_wait_ms": s.max_wait_ms,
            "max_inputs_per_request": s.max_inputs_per_request,
            "max_request_bytes": s.max_request_bytes,
            "max_upload_bytes": s.max_upload_bytes,
            "max_queued_inputs": s.max_queued_inputs,
            "request_timeout_s": s.request_timeout_s,
        },
        "multi_tenant": s.multi_tenant,
        "registry": services.registry_status(),
    }
