"""Garbage collection of blobs: safe with any number of replicas sharing one blob store.

- One collector at a time: `collect_garbage` holds a database-wide lock (an advisory lock on
  PostgreSQL) and returns at once if another replica holds it.
- A grace period: a blob younger than `grace_s` is never a candidate, so an upload that has stored its
  blob and not yet committed its row is left alone (and stores no garbage twice over).
- Never a referenced blob: each removal checks, in a transaction holding that blob's lock, that no
  version row references it; an upload commits its reference holding the same lock and re-checks
  the blob exists first (SqlRegistry.add_version), so the two never interleave into a dangling row.
"""

from __future__ import annotations

import logging
import time

from server.registry import queries as q
from server.registry.blobs import BlobStore
from server.registry.database import Database

log = logging.getLogger(__name__)

_LOCK = "prefix-server:blob-gc"


def collect_garbage(database: Database, blobs: BlobStore, grace_s: float) -> int:
    """Removes unreferenced blobs and temp files older than `grace_s`; returns how many (0 if another
    replica is collecting)."""
    with database.exclusive(_LOCK, wait=False) as holder:
        if holder is None:
            return 0
        removed = blobs.remove_temp_files(older_than_s=grace_s)
        cutoff = time.time() - grace_s
        old_enough = {sha256 for sha256, modified in blobs.list_blobs() if modified <= cutoff}
        if old_enough:
            old_enough -= q.referenced_blobs(holder, among=old_enough)
    # Outside the collector's transaction: each removal takes its own, so a busy store never holds the lock long.
    removed += sum(remove_if_unreferenced(database, blobs, sha256) for sha256 in old_enough)
    if removed:
        log.info("garbage collection removed %d unreferenced blob or temp files from %s", removed, blobs.describe())
    return removed


def remove_if_unreferenced(database: Database, blobs: BlobStore, sha256: str) -> bool:
    with database.write() as conn:
        database.lock_blob(conn, sha256)
        if q.referenced_blobs(conn, among={sha256}):
            return False
        blobs.remove(sha256)
    return True
