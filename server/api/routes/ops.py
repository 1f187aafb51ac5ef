"""Liveness, readiness, Prometheus metrics and GET /v1/info."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from server.api.deps import CallerDep, ReadyServices, get_services
from server.api.errors import error_response
from server.api.state import Services

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: Annotated[Services, Depends(get_services)]):
    if services.ready and not services.runtime.healthy:
        return error_response(503, "the engine process is restarting")
    if services.ready:
        return {"status": "ready"}
    if services.startup_error:
        return error_response(503, f"start-up failed: {services.startup_error}")
    return error_response(503, "the backbone is loading")


@router.get("/metrics")
def prometheus_metrics() -> Response:
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
