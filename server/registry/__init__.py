"""Where tenants, tasks, versions and routes live. `Registry` (base) is the contract; `SqliteRegistry`
is the embedded default (SQLite + content-addressed files under the data dir)."""

from server.registry.base import (
    Conflict,
    InvalidRoute,
    LimitExceeded,
    NotFound,
    Registry,
    RegistryError,
    Route,
    TaskRecord,
    Tenant,
    TenantLimits,
    VersionRecord,
)
from server.registry.names import NAME_PATTERN, InvalidName, validate_name
from server.registry.sqlite import SqliteRegistry

__all__ = [
    "NAME_PATTERN",
    "Conflict",
    "InvalidName",
    "InvalidRoute",
    "LimitExceeded",
    "NotFound",
    "Registry",
    "RegistryError",
    "Route",
    "SqliteRegistry",
    "TaskRecord",
    "Tenant",
    "TenantLimits",
    "VersionRecord",
    "validate_name",
]
