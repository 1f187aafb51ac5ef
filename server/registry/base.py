"""The registry's contract: what the API layer may ask of any storage backend.

One implementation (`server.registry.sql.SqlRegistry`) runs on SQLite (the embedded default) and on
PostgreSQL (replicas), with its artifacts in a blob store chosen by URL (`server.registry.blobs`).
Records are plain frozen dataclasses: no tensors, no ORM objects cross this boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class RegistryError(Exception):
    """Base of the registry's refusals; each maps to one HTTP status in the API layer."""


class NotFound(RegistryError):
    """Unknown tenant, task or version (another tenant's task is NotFound too)."""


class Conflict(RegistryError):
    """The name is taken, or the change contradicts the current state."""


class LimitExceeded(RegistryError):
    """A per-tenant quota (tasks, artifact bytes) would be exceeded."""


class InvalidRoute(RegistryError):
    """A route names versions that do not exist, or weights that do not sum to 1."""


class RegistryUnavailable(RegistryError):
    """The database or the blob store cannot be reached now: the API answers 503 with Retry-After,
    never 401 or 404, since nothing is known about what was asked."""

    def __init__(self, component: str, message: str):
        super().__init__(f"the registry's {component} is unreachable: {message}")
        self.component = component


@dataclass(frozen=True)
class Change:
    """One committed write, as every replica hears of it: `kind` is 'tenant' (created, deleted or
    re-keyed; `task` is None) or 'task' (upload, route, version or task deleted)."""

    kind: str
    tenant: str
    task: str | None = None


@dataclass(frozen=True)
class TenantLimits:
    max_tasks: int
    max_artifact_bytes: int
    max_queued_inputs: int


@dataclass(frozen=True)
class Tenant:
    name: str
    limits: TenantLimits


@dataclass(frozen=True)
class VersionRecord:
    task: str
    version: int
    sha256: str
    size_bytes: int
    prefix_len: int
    problem_type: str
    labels: tuple[str, ...]
    metadata: dict[str, str]
    created_at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Route:
    """Either pinned to one version, or a weighted split (weights sum to 1)."""

    pinned: int | None = None
    weights: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        if self.pinned is not None:
            return {"version": self.pinned}
        return {"weights": {str(v): w for v, w in sorted(self.weights.items())}}


@dataclass(frozen=True)
class TaskRecord:
    tenant: str
    task: str
    versions: tuple[VersionRecord, ...]  # oldest first
    route: Route


class Registry(Protocol):
    def create_tenant(self, name: str, limits: TenantLimits | None = None) -> tuple[Tenant, str]:
        """Creates a tenant and returns it with its API key (shown once, stored only as a hash)."""

    def ensure_tenant(self, name: str) -> Tenant:
        """The tenant, created without a key if missing (single-tenant mode's 'default')."""

    def tenant_for_key(self, api_key: str) -> Tenant | None: ...

    def get_tenant(self, name: str) -> Tenant: ...

    def list_tenants(self) -> list[tuple[Tenant, int]]:
        """Every tenant with its number of tasks, by name."""

    def delete_tenant(self, name: str) -> None:
        """Removes the tenant, its key, its tasks and the blobs only it referenced."""

    def rotate_key(self, name: str) -> str:
        """A new API key for the tenant (shown once); the old one stops working."""

    def add_version(self, tenant: str, task: str, artifact: bytes) -> VersionRecord:
        """Validates and stores a new immutable version, which becomes the active route. Atomic."""

    def add_demo_version(self, tenant: str, task: str, artifact: bytes, file_name: str) -> VersionRecord | None:
        """add_version for a shipped demo file, once: None if it was registered before, or its task
        was uploaded to, routed or deleted by a user since."""

    def list_tasks(self, tenant: str) -> list[TaskRecord]: ...

    def get_task(self, tenant: str, task: str) -> TaskRecord: ...

    def set_route(self, tenant: str, task: str, route: Route) -> Route: ...

    def delete_task(self, tenant: str, task: str) -> None: ...

    def delete_version(self, tenant: str, task: str, version: int) -> None:
        """Removes one version; Conflict while the task's route sends traffic to it."""

    def read_artifact_bytes(self, sha256: str) -> bytes: ...

    def subscribe(self, on_change, on_resync) -> None:
        """Calls `on_change(Change)` for every committed write through any replica and `on_resync()`
        when changes may have been missed (the listener reconnected). Called from another thread."""

    def health(self) -> dict[str, bool]:
        """{'database': up, 'blobs': up}, from a cheap probe of each, bounded like every call; a probe asks
        even while the dependency's circuit is open, and an answer closes it."""

    def describe(self) -> dict[str, str]:
        """Where the state lives (URLs without credentials)."""

    def close(self) -> None: ...
