"""The API process's background upkeep of the registry: probing the database and the blob store (the
`prefix_server_registry_up` gauge and /v1/info), and collecting unreferenced blobs now and then.

Probes run on a thread every second, so an outage shows within about a second and a return as soon.
A probe asks its dependency even while the registry's circuit for it is open (server.registry.circuit),
and its answer closes the circuit: that is what makes a replica whole about a second after a hung or
stopped dependency returns. The connection pool and the listener recover by themselves.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from server import metrics
from server.api.state import Services

log = logging.getLogger(__name__)

PROBE_EVERY_S = 1.0
COLLECT_EVERY_S = 600.0


async def monitor_registry(services: Services) -> None:
    while True:
        try:
            health = await run_in_threadpool(services.registry.health)
        except Exception:
            log.exception("registry probe failed")
            health = {component: False for component in services.registry.describe()}
        for component, up in health.items():
            if services.registry_up.get(component, True) != up:
                log.warning("registry %s is %s", component, "reachable again" if up else "unreachable")
            metrics.REGISTRY_UP.labels(component).set(1 if up else 0)
        services.registry_up = health
        await asyncio.sleep(PROBE_EVERY_S)


async def collect_garbage_periodically(services: Services) -> None:
    while True:
        await asyncio.sleep(COLLECT_EVERY_S)
        try:
            await run_in_threadpool(services.registry.collect_garbage)
        except Exception as error:  # noqa: BLE001 — an outage: the next round tries again
            log.warning("garbage collection skipped: %s", error)
