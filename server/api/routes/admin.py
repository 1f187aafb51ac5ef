"""Tenant management (admin token only)."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from server.api.deps import AdminDep, ReadyServices
from server.api.responses import FastJSONResponse
from server.api.schemas import CreateTenantRequest

router = APIRouter(prefix="/v1/admin")


@router.post("/tenants", status_code=201)
async def create_tenant(body: CreateTenantRequest, _: AdminDep, services: ReadyServices):
    limits = services.default_limits()
    if body.limits is not None:
        overrides = {k: v for k, v in body.limits.model_dump().items() if v is not None}
        limits = replace(limits, **overrides)
    tenant, api_key = await run_in_threadpool(services.registry.create_tenant, body.name, limits)
    content = {"name": tenant.name, "api_key": api_key, "limits": vars(tenant.limits)}
    return FastJSONResponse(content, status_code=201, headers={"Cache-Control": "no-store"})
