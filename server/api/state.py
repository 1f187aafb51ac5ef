"""What the API layer holds for the life of the process: settings, registry and the runtime.
The runtime (engine + batcher) is opaque here: the API calls it, it never reaches into tensors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from server.api.lookups import RegistryLookups
from server.batching.runtime import Runtime
from server.registry.base import Registry, Tenant, TenantLimits
from server.settings import Settings


@dataclass
class Services:
    settings: Settings
    registry: Registry | None = None
    runtime: Runtime | None = None
    lookups: RegistryLookups | None = None
    default_tenant: Tenant | None = None  # single-tenant mode's caller, and the admin's namespace
    ready: bool = False
    startup_error: str | None = None
    on_startup_failure: Callable[[str], None] | None = None  # serve ends the process; tests leave it unset
    draining: bool = False  # SIGTERM heard: unready while requests in flight finish
    registry_up: dict[str, bool] = field(default_factory=dict)  # from the health monitor's last probe
    background: list = field(default_factory=list)  # asyncio tasks cancelled at shutdown
    pinned_tasks: list[str] = field(default_factory=list)  # tenant/task names kept on the device (api/pins.py)

    def begin_drain(self, seconds: float) -> None:
        """SIGTERM (server.api.shutdown): unready now; the batcher finishes what it can within `seconds`."""
        self.draining = True
        if self.runtime is not None:
            self.runtime.batcher.drain(asyncio.get_running_loop().time() + seconds)

    def registry_status(self) -> dict:
        """Where the registry lives and whether each part answered its last probe (/v1/info)."""
        if self.registry is None:
            return {}
        return {
            component: {"url": url, "up": self.registry_up.get(component, True)}
            for component, url in self.registry.describe().items()
        }

    def default_limits(self) -> TenantLimits:
        s = self.settings
        return TenantLimits(s.tenant_max_tasks, s.tenant_max_artifact_bytes, s.tenant_max_queued_inputs)
