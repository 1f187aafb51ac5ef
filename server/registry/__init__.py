"""Where tenants, tasks, versions and routes live. `Registry` (base) is the contract; `SqlRegistry` its
one implementation, on SQLite (`SqliteRegistry`: the embedded default under the data dir) or on
PostgreSQL with an S3-compatible blob store (replicas); `open_registry` picks them by URL."""

from server.registry.base import (
    Change,
    Conflict,
    InvalidRoute,
    LimitExceeded,
    NotFound,
    Registry,
    RegistryError,
    RegistryUnavailable,
    Route,
    TaskRecord,
    Tenant,
    TenantLimits,
    VersionRecord,
)
from server.registry.factory import open_registry
from server.registry.names import NAME_PATTERN, InvalidName, validate_name
from server.registry.sql import SqliteRegistry, SqlRegistry

__all__ = [
    "NAME_PATTERN",
    "Change",
    "Conflict",
    "InvalidName",
    "InvalidRoute",
    "LimitExceeded",
    "NotFound",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "Route",
    "SqlRegistry",
    "SqliteRegistry",
    "TaskRecord",
    "Tenant",
    "TenantLimits",
    "VersionRecord",
    "open_registry",
    "validate_name",
]
