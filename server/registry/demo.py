"""Registers the demo prefixes shipped in `prefixes/` as tasks of tenant 'default' at start-up.

Idempotent: a task whose active version already holds the same bytes is left alone, so restarts do
not pile up versions; a changed file becomes a new version."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from server.registry.base import NotFound, Registry

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
        task, data = path.stem, path.read_bytes()
        if _already_active(registry, task, hashlib.sha256(data).hexdigest()):
            continue
        try:
            record = registry.add_version(DEMO_TENANT, task, data)
        except Exception as exc:  # a bad demo file must not keep the server from starting
            log.error("demo prefix %s refused: %s", path.name, exc)
            continue
        registered.append(task)
        log.info("demo prefix %s registered as task %r version %d", path.name, task, record.version)
    return registered


def _already_active(registry: Registry, task: str, sha256: str) -> bool:
    try:
        record = registry.get_task(DEMO_TENANT, task)
    except NotFound:
        return False
    return any(v.sha256 == sha256 and v.version == record.route.pinned for v in record.versions)
