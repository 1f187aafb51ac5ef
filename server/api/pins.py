"""Pinned tasks (SPEC 6's optional pinning): tasks an operator keeps on the device whatever the LRU
says, named as tenant/task (PREFIX_SERVER_PINNED_TASKS at start, PUT /v1/admin/pinned-tasks at run
time). A name is resolved to the artifacts its route sends requests to (the pinned version, or every
version of a canary split), and resolved again every registry TTL through the lookups requests use, so
a pin follows a new version without anyone pinning it again. What is pinned lives in the device tier (server.batching.prefix_cache).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from server.api.state import Services
from server.registry.base import NotFound, VersionRecord
from server.registry.names import split_task_path
from server.registry.routing import routed_records

log = logging.getLogger(__name__)


async def resolve(services: Services, names: list[str], missing_ok: bool) -> dict[str, list[VersionRecord]]:
    """Each pinned name's routed versions, read as requests read them (services.lookups: cached, and
    invalidated by uploads and route changes). A task that does not exist raises NotFound, or with
    `missing_ok` (start-up and upkeep: it may be uploaded later) resolves to none."""
    resolved = {}
    for name in names:
        try:
            record = await services.lookups.task(*split_task_path(name))
        except NotFound:
            if not missing_ok:
                raise NotFound(f"pinned task {name!r}: expected a task that exists, got none of that name") from None
            resolved[name] = []
            continue
        resolved[name] = routed_records(record)
    return resolved


async def apply(services: Services, names: list[str], missing_ok: bool) -> dict[str, list[VersionRecord]]:
    """Pins `names` (replacing the pinned set), loading what is not resident. Raises NotFound,
    PinsOverBudget or a registry error, leaving the previous pins in place."""
    resolved = await resolve(services, names, missing_ok)
    await run_in_threadpool(services.runtime.pin, {version.sha256 for versions in resolved.values() for version in versions})
    services.pinned_tasks = list(names)
    return resolved


async def follow_pins(services: Services, every_s: float) -> None:
    """Keeps the pinned set on the versions the pinned tasks route to now (uploads, route changes)."""
    while True:
        if services.pinned_tasks:
            try:
                await apply(services, services.pinned_tasks, True)
            except Exception as error:  # noqa: BLE001 — an outage or a budget change: the next round tries again
                log.warning("pinned tasks not refreshed: %s", error)
        await asyncio.sleep(every_s)
