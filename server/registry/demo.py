"""Registers the demo prefixes shipped in `prefixes/` as tasks of tenant 'default' at start-up.

Once: the registry records which file became which version (table `demo_prefixes`, written in the
version's transaction), so a restart never adds a version over a user's upload, route change or
delete of a demo task. A file changed by a new release becomes a new version only while its task is
still exactly what the previous file made it."""

from __future__ import annotations

import logging
from pathlib import Path

from server.registry.base import Registry

log = logging.getLogger(__name__)
DEMO_TENANT = "default"


def register_demo_prefixes(registry: Registry, folder: str | Path) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        log.warning("demo prefixes folder %s does not exist: none registered", folder)
        return []
    registry.ensure_tenant(DEMO_TENANT)
    registered = []
    for path in sorted(folder.glob("*.safetensors")):
        task = path.stem
        try:
            record = registry.add_demo_version(DEMO_TENANT, task, path.read_bytes(), path.name)
        except Exception as exc:  # noqa: BLE001 — a bad demo file must not keep the server from starting
            log.error("demo prefix %s refused: %s", path.name, exc)
            continue
        if record is not None:
            registered.append(task)
            log.info("demo prefix %s registered as task %r version %d", path.name, task, record.version)
    return registered
