"""Tenant management (admin token only): create, list, delete, rotate a key (SPEC 2 and 2c); and the
tasks pinned on the device (SPEC 6, api/pins.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from server.api import pins
from server.api.deps import AdminDep, ReadyServices
from server.api.errors import ApiError
from server.api.responses import FastJSONResponse
from server.api.schemas import NAME_PATTERN, CreateTenantRequest, PinnedTasksRequest
from server.api.state import Services
from server.batching import PinsOverBudget
from server.registry.base import VersionRecord

router = APIRouter(prefix="/v1/admin")
TenantName = Annotated[str, Path(pattern=NAME_PATTERN, description="tenant name")]
_SHOWN_ONCE = {"Cache-Control": "no-store"}


@router.post("/tenants", status_code=201)
async def create_tenant(body: CreateTenantRequest, _: AdminDep, services: ReadyServices):
    limits = services.default_limits()
    if body.limits is not None:
        overrides = {k: v for k, v in body.limits.model_dump().items() if v is not None}
        limits = replace(limits, **overrides)
    tenant, api_key = await run_in_threadpool(services.registry.create_tenant, body.name, limits)
    content = {"name": tenant.name, "api_key": api_key, "limits": vars(tenant.limits)}
    return FastJSONResponse(content, status_code=201, headers=_SHOWN_ONCE)


@router.get("/tenants")
async def list_tenants(_: AdminDep, services: ReadyServices) -> dict:
    tenants = await run_in_threadpool(services.registry.list_tenants)
    return {"tenants": [{"name": t.name, "limits": vars(t.limits), "tasks": count} for t, count in tenants]}


@router.delete("/tenants/{name}", status_code=204)
async def delete_tenant(name: TenantName, _: AdminDep, services: ReadyServices) -> Response:
    await run_in_threadpool(services.registry.delete_tenant, name)
    services.lookups.invalidate_tenant(name)
    return Response(status_code=204)


@router.post("/tenants/{name}/keys", status_code=201)
async def rotate_key(name: TenantName, _: AdminDep, services: ReadyServices):
    api_key = await run_in_threadpool(services.registry.rotate_key, name)
    services.lookups.invalidate_tenant(name)
    return FastJSONResponse({"name": name, "api_key": api_key}, status_code=201, headers=_SHOWN_ONCE)


@router.get("/pinned-tasks")
async def list_pinned_tasks(_: AdminDep, services: ReadyServices) -> dict:
    resolved = await pins.resolve(services, services.pinned_tasks, True)
    return _pinned(services, resolved)


@router.put("/pinned-tasks")
async def set_pinned_tasks(body: PinnedTasksRequest, _: AdminDep, services: ReadyServices) -> dict:
    """Replaces the pinned set, loading what it names before answering: a task that does not exist
    is 404, a set that would not fit the device budget 409; either way the previous pins stay."""
    try:
        resolved = await pins.apply(services, body.tasks, False)
    except PinsOverBudget as error:
        raise ApiError(409, str(error)) from None
    return _pinned(services, resolved)


def _pinned(services: Services, resolved: dict[str, list[VersionRecord]]) -> dict:
    residency = services.runtime.residency
    return {
        "tasks": [{"name": name, "versions": [{"version": v.version, "sha256": v.sha256, **residency(v.sha256)} for v in versions]}
                  for name, versions in resolved.items()],
        "device_budget_bytes": services.runtime.device_budget_bytes,
    }
