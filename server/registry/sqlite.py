"""The embedded default registry: tenants, tasks, versions and routes in SQLite, artifacts as files.

Layout under `data_dir`: `registry.sqlite3` (tables in server.registry.tables) and `blobs/ab/abcd...`
(server.registry.blobs). Safe for several threads and for several processes on one data dir.

Upload atomicity: the blob is made durable first (temp file, fsync, rename, directory fsync), then ONE
transaction allocates the version number, inserts the version and pins the route to it. A kill at any
moment leaves the old state or the new one; what a crash can leave behind (temp files, blobs no row
references) is removed by `collect_garbage`, which runs on open.

Blob removal never races an upload: blobs are only unlinked while holding the database write lock,
after checking no row references them, and an upload re-checks its blob under that same lock before
committing the row that references it.

Version numbers count from 1 per task and never repeat while the task exists. `delete_task` removes
the task's history, so a task re-created under the same name starts again at 1; caches must key on
the sha256 (as the engine's prefix cache does), never on (task, version).
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import delete, insert, select, update

from server.artifact import BackboneShape, read_artifact
from server.registry import queries as q
from server.registry import tables
from server.registry.base import (
    Conflict,
    NotFound,
    RegistryError,
    Route,
    TaskRecord,
    Tenant,
    TenantLimits,
    VersionRecord,
)
from server.registry.blobs import BlobCorrupt, BlobMissing, BlobStore
from server.registry.names import validate_name
from server.registry.records import tenant_from_row, utc_now, version_from_row
from server.registry.routing import pick_version, route_from_json, validate_route
from server.registry.sqlite_engine import Transactions, create_sqlite_engine

log = logging.getLogger(__name__)

DB_FILENAME = "registry.sqlite3"
BLOBS_DIRNAME = "blobs"
API_KEY_PREFIX = "psk_"


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


class SqliteRegistry:
    def __init__(
        self,
        data_dir: Path,
        backbone: BackboneShape,
        default_limits: TenantLimits,
        *,
        seed: int | None = None,
        busy_timeout_s: float = 30.0,
    ) -> None:
        """`seed` fixes the weighted-route draws (tests); None seeds from the OS."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._backbone = backbone
        self._default_limits = default_limits
        self._rng = random.Random(seed)
        self._blobs = BlobStore(self.data_dir / BLOBS_DIRNAME)
        self._db = Transactions(create_sqlite_engine(self.data_dir / DB_FILENAME, busy_timeout_s))
        with self._db.write() as conn:  # under the write lock, so two processes opening at once don't race
            tables.metadata.create_all(conn)
        self.collect_garbage()

    def close(self) -> None:
        self._db.engine.dispose()

    def __enter__(self) -> SqliteRegistry:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Tenants

    def create_tenant(self, name: str, limits: TenantLimits | None = None) -> tuple[Tenant, str]:
        """A NULL limit column means "the server's default", so `limits=None` follows later changes."""
        validate_name("tenant", name)
        if limits is not None:
            _check_limit_values(limits)
        api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits, 43 characters
        limit_columns = {} if limits is None else vars(limits)
        with self._db.write() as conn:
            if q.tenant_row(conn, name) is not None:
                raise Conflict(f"tenant {name!r}: expected a new name, got one that already exists")
            values = dict(name=name, api_key_hash=hash_api_key(api_key), created_at=utc_now(), **limit_columns)
            conn.execute(insert(tables.tenants).values(**values))
            tenant = tenant_from_row(q.tenant_row(conn, name), self._default_limits)
        log.info("created tenant %r", name)
        return tenant, api_key

    def ensure_tenant(self, name: str) -> Tenant:
        validate_name("tenant", name)
        with self._db.read() as conn:
            row = q.tenant_row(conn, name)
        if row is None:
            with self._db.write() as conn:  # checked again: another thread or process may have won
                if q.tenant_row(conn, name) is None:
                    conn.execute(insert(tables.tenants).values(name=name, created_at=utc_now()))
                    log.info("created keyless tenant %r", name)
                row = q.tenant_row(conn, name)
        return tenant_from_row(row, self._default_limits)

    def tenant_for_key(self, api_key: str) -> Tenant | None:
        if not isinstance(api_key, str) or not api_key:
            return None
        with self._db.read() as conn:
            row = conn.execute(q.SELECT_TENANT_BY_KEY_HASH, {"key_hash": hash_api_key(api_key)}).first()
        return None if row is None else tenant_from_row(row, self._default_limits)

    def get_tenant(self, name: str) -> Tenant:
        validate_name("tenant", name)
        with self._db.read() as conn:
            return tenant_from_row(q.existing_tenant_row(conn, name), self._default_limits)

    # Versions

    def add_version(self, tenant: str, task: str, artifact: bytes) -> VersionRecord:
        validate_name("tenant", tenant)
        validate_name("task", task)
        parsed = read_artifact(artifact, self._backbone)  # ArtifactError propagates: nothing stored yet
        size = len(artifact)
        with self._db.read() as conn:  # refuse unknown tenants and over-quota uploads before writing a file
            q.check_quota(conn, tenant, task, size, self._default_limits)
        sha256 = self._blobs.put(artifact)
        try:
            with self._db.write() as conn:
                q.check_quota(conn, tenant, task, size, self._default_limits)  # again: another upload may have won
                self._blobs.ensure(sha256, artifact)  # a concurrent collect_garbage may have removed it
                record = q.insert_version(conn, tenant, task, sha256, size, parsed)
        except BaseException:
            self._remove_unreferenced_blobs([sha256])
            raise
        log.info("tenant %r task %r: stored version %d (sha256 %s)", tenant, task, record.version, sha256)
        return record

    def read_artifact_bytes(self, sha256: str) -> bytes:
        try:
            return self._blobs.read(sha256)
        except BlobMissing as exc:
            raise NotFound(f"artifact: {exc}") from None
        except BlobCorrupt as exc:
            raise RegistryError(str(exc)) from None

    # Tasks and routes

    def list_tasks(self, tenant: str) -> list[TaskRecord]:
        validate_name("tenant", tenant)
        with self._db.read() as conn:
            q.existing_tenant_row(conn, tenant)
            task_rows = conn.execute(
                select(tables.tasks).where(tables.tasks.c.tenant == tenant).order_by(tables.tasks.c.name)
            ).all()
            version_rows = conn.execute(
                select(tables.versions)
                .where(tables.versions.c.tenant == tenant)
                .order_by(tables.versions.c.task, tables.versions.c.version)
            ).all()
        versions_by_task: dict[str, list[VersionRecord]] = {row.name: [] for row in task_rows}
        for row in version_rows:
            versions_by_task[row.task].append(version_from_row(row))
        return [
            TaskRecord(tenant, row.name, tuple(versions_by_task[row.name]), route_from_json(row.route))
            for row in task_rows
        ]

    def get_task(self, tenant: str, task: str) -> TaskRecord:
        validate_name("tenant", tenant)
        validate_name("task", task)
        with self._db.read() as conn:
            task_row = q.existing_task_row(conn, tenant, task)
            version_rows = conn.execute(
                select(tables.versions).where(q.version_of(tenant, task)).order_by(tables.versions.c.version)
            ).all()
        versions = tuple(version_from_row(row) for row in version_rows)
        return TaskRecord(tenant, task, versions, route_from_json(task_row.route))

    def set_route(self, tenant: str, task: str, route: Route) -> Route:
        validate_name("tenant", tenant)
        validate_name("task", task)
        with self._db.write() as conn:
            q.existing_task_row(conn, tenant, task)
            checked = validate_route(route, q.version_numbers(conn, tenant, task), task)
            conn.execute(update(tables.tasks).where(q.task_is(tenant, task)).values(**q.route_columns(checked)))
        log.info("tenant %r task %r: route set to %s", tenant, task, checked.to_json())
        return checked

    def delete_task(self, tenant: str, task: str) -> None:
        validate_name("tenant", tenant)
        validate_name("task", task)
        with self._db.write() as conn:
            q.existing_task_row(conn, tenant, task)
            shas = set(conn.execute(select(tables.versions.c.sha256).where(q.version_of(tenant, task))).scalars())
            conn.execute(delete(tables.versions).where(q.version_of(tenant, task)))
            conn.execute(delete(tables.tasks).where(q.task_is(tenant, task)))
        # After the commit: a crash here only leaves unreferenced blobs, which collect_garbage removes.
        self._remove_unreferenced_blobs(shas)
        log.info("tenant %r: deleted task %r", tenant, task)

    def resolve(self, tenant: str, task: str) -> VersionRecord:
        """One indexed join for a pinned route; a weighted split needs a second primary-key lookup."""
        validate_name("tenant", tenant)
        validate_name("task", task)
        with self._db.read() as conn:
            row = conn.execute(q.RESOLVE_PINNED, {"tenant": tenant, "task": task}).first()
            if row is None:
                raise NotFound(f"task {task!r} not found")
            if row.version is None:
                version = pick_version(route_from_json(row.route), self._rng)
                row = conn.execute(q.SELECT_VERSION, {"tenant": tenant, "task": task, "version": version}).first()
        if row is None:  # set_route and add_version only ever store routes to existing versions
            raise RegistryError(f"task {task!r}: its route names version {version}, which is not stored")
        return version_from_row(row)

    # Garbage collection

    def collect_garbage(self) -> int:
        """Removes temp files and blobs no version references (what a crash leaves); returns how many."""
        removed = 0
        with self._db.write() as conn:  # holding the write lock: no upload can commit a reference meanwhile
            referenced = q.referenced_blobs(conn)
            for sha256 in list(self._blobs.stored()):
                if sha256 not in referenced:
                    self._blobs.remove(sha256)
                    removed += 1
            for temp in list(self._blobs.temp_files()):
                temp.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("garbage collection removed %d unreferenced blob or temp files", removed)
        return removed

    def _remove_unreferenced_blobs(self, candidates: Iterable[str]) -> None:
        """Best effort: the caller's outcome stands even if this fails, and the next open collects them."""
        candidates = set(candidates)
        try:
            with self._db.write() as conn:
                for sha256 in candidates - q.referenced_blobs(conn, among=candidates):
                    self._blobs.remove(sha256)
        except Exception:
            log.warning("could not remove unreferenced blobs now; the next start-up will", exc_info=True)


def _check_limit_values(limits: TenantLimits) -> None:
    for field_name, value in vars(limits).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"tenant limit {field_name}: expected a positive integer, got {value!r}")
