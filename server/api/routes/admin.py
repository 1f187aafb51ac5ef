"""Tenant management (admin token only): create, list, delete, rotate a key (SPEC 2 and 2c)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from server.api.deps import AdminDep, ReadyServices
from server.api.responses import FastJSONResponse
from server.api.schemas import NAME_PATTERN, CreateTenantRequest

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
