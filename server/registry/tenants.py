"""The registry's tenant operations: create (with a new API key, stored only as its SHA-256), find by
key, list, rotate the key, delete. A mixin of SqlRegistry, which owns the database, the blob store and
the server's default limits; a tenant's limit left NULL follows the server's default.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from sqlalchemy import delete, select, update

from server.registry import queries as q
from server.registry import tables
from server.registry.base import Change, Conflict, Tenant, TenantLimits
from server.registry.names import validate_name
from server.registry.records import tenant_from_row

log = logging.getLogger("server.registry.sql")

API_KEY_PREFIX = "psk_"
PROTECTED_TENANT = "default"  # single-tenant mode's caller and the admin's namespace


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits, 43 characters


class TenantOperations:
    """Needs `database`, `_default_limits` and `_remove_unreferenced_blobs` from the class it mixes into."""

    def create_tenant(self, name: str, limits: TenantLimits | None = None) -> tuple[Tenant, str]:
        """A NULL limit column means "the server's default", so `limits=None` follows later changes."""
        validate_name("tenant", name)
        if limits is not None:
            _check_limit_values(limits)
        api_key = new_api_key()
        columns = dict(api_key_hash=hash_api_key(api_key), **({} if limits is None else vars(limits)))
        with self.database.write() as conn:
            if not q.insert_tenant(conn, name, columns):
                raise Conflict(f"tenant {name!r}: expected a new name, got one that already exists")
            tenant = tenant_from_row(q.tenant_row(conn, name), self._default_limits)
            self.database.announce(conn, Change("tenant", name))
        log.info("created tenant %r", name)
        return tenant, api_key

    def ensure_tenant(self, name: str) -> Tenant:
        validate_name("tenant", name)
        with self.database.read() as conn:
            row = q.tenant_row(conn, name)
        if row is None:
            with self.database.write() as conn:  # ON CONFLICT: another replica may create it at the same moment
                if q.insert_tenant(conn, name, {}):
                    log.info("created keyless tenant %r", name)
                    self.database.announce(conn, Change("tenant", name))
                row = q.tenant_row(conn, name)
        return tenant_from_row(row, self._default_limits)

    def tenant_for_key(self, api_key: str) -> Tenant | None:
        if not isinstance(api_key, str) or not api_key:
            return None
        with self.database.read() as conn:
            row = conn.execute(q.SELECT_TENANT_BY_KEY_HASH, {"key_hash": hash_api_key(api_key)}).first()
        return None if row is None else tenant_from_row(row, self._default_limits)

    def get_tenant(self, name: str) -> Tenant:
        validate_name("tenant", name)
        with self.database.read() as conn:
            return tenant_from_row(q.existing_tenant_row(conn, name), self._default_limits)

    def list_tenants(self) -> list[tuple[Tenant, int]]:
        with self.database.read() as conn:
            rows = conn.execute(select(tables.tenants).order_by(tables.tenants.c.name)).all()
        return [(tenant_from_row(row, self._default_limits), row.task_count) for row in rows]

    def rotate_key(self, name: str) -> str:
        validate_name("tenant", name)
        api_key = new_api_key()
        with self.database.write() as conn:
            q.existing_tenant_row(conn, name, lock=True)
            conn.execute(update(tables.tenants).where(tables.tenants.c.name == name).values(api_key_hash=hash_api_key(api_key)))
            self.database.announce(conn, Change("tenant", name))
        log.info("tenant %r: API key rotated", name)
        return api_key

    def delete_tenant(self, name: str) -> None:
        validate_name("tenant", name)
        if name == PROTECTED_TENANT:
            raise Conflict(f"tenant {name!r} is the admin's and single-tenant mode's namespace: expected another tenant")
        with self.database.write() as conn:
            q.existing_tenant_row(conn, name, lock=True)
            shas = set(conn.execute(select(tables.versions.c.sha256).where(tables.versions.c.tenant == name)).scalars())
            conn.execute(delete(tables.versions).where(tables.versions.c.tenant == name))
            conn.execute(delete(tables.tasks).where(tables.tasks.c.tenant == name))
            conn.execute(delete(tables.tenants).where(tables.tenants.c.name == name))
            self.database.announce(conn, Change("tenant", name))
        self._remove_unreferenced_blobs(shas)  # after the commit: a crash here leaves garbage, never a dangling row
        log.info("deleted tenant %r and its %d artifacts' references", name, len(shas))


def _check_limit_values(limits: TenantLimits) -> None:
    for field_name, value in vars(limits).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"tenant limit {field_name}: expected a positive integer, got {value!r}")
