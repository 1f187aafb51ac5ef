"""FastAPI dependencies: the services, readiness, and who is calling (admin or a tenant)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from server.api.errors import ApiError
from server.api.state import Services
from server.registry.base import Tenant

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Caller:
    tenant: Tenant
    is_admin: bool


async def get_services(request: Request) -> Services:
    return request.app.state.services


async def get_ready_services(request: Request) -> Services:
    return ready_services(request)


ReadyServices = Annotated[Services, Depends(get_ready_services)]


async def get_caller(request: Request, services: ReadyServices) -> Caller:
    return await authenticate(request, services)


def ready_services(request: Request) -> Services:
    """get_ready_services without the dependency machinery (for the classify hot path)."""
    services = request.app.state.services
    if not services.ready:
        detail = f" (start-up failed: {services.startup_error})" if services.startup_error else ""
        raise ApiError(503, f"the server is not ready: the backbone is still loading{detail}")
    return services


async def authenticate(request: Request, services: Services) -> Caller:
    """Single-tenant mode: everyone is tenant 'default'. Otherwise the bearer key decides; the admin
    token acts as tenant 'default' (where the demo prefixes live) for task calls."""
    if not services.settings.multi_tenant:
        return Caller(services.default_tenant, is_admin=False)
    key = _bearer_key(request)
    admin_token = services.settings.admin_token.get_secret_value()
    if hmac.compare_digest(key.encode(), admin_token.encode()):
        return Caller(services.default_tenant, is_admin=True)
    tenant = await services.lookups.tenant(key)
    if tenant is None:
        raise ApiError(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return Caller(tenant, is_admin=False)


def is_admin_request(request: Request, admin_token: str) -> bool:
    """Whether the request bears the admin token, without the registry (it may not be open yet)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), admin_token.encode())


def _bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        got = "nothing" if not header else f"a {scheme or 'malformed'} header"
        raise ApiError(401, f"expected 'Authorization: Bearer <key>', got {got}", headers={"WWW-Authenticate": "Bearer"})
    return key.strip()


async def require_admin(caller: Annotated[Caller, Depends(get_caller)], services: ReadyServices) -> Caller:
    if not services.settings.multi_tenant:
        raise ApiError(409, "tenants cannot be managed in single-tenant mode: set PREFIX_SERVER_ADMIN_TOKEN")
    if not caller.is_admin:
        raise ApiError(404, "not found")  # tenant keys do not learn that admin routes exist
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Caller, Depends(require_admin)]
