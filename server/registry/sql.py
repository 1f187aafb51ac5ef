"""The registry: tenants, tasks, versions and routes in a SQL database (SQLite embedded, PostgreSQL for
replicas), artifacts in a content-addressed blob store (local files, or any S3-compatible store).

Upload atomicity: the blob is stored first (outside any transaction: a network write must not hold
row locks), then ONE transaction locks the tenant row (quotas), the task row (the version counter),
takes the blob's lock, makes sure the blob is still there (a collector may have removed an
unreferenced one meanwhile) and commits the version and the route. A kill at any moment leaves the old
state or the new one; what a crash can leave behind (an unreferenced blob, a temp file) is removed by
`collect_garbage` once its grace period has passed.

Every write announces a `Change` in its transaction, which every replica hears (server.registry.
listener) and which this process's subscribers hear right after commit.

Version numbers count from 1 per task and never repeat while the task exists. `delete_task` removes
the task's history, so a task re-created under the same name starts again at 1; caches must key on
the sha256 (as the engine's prefix cache does), never on (task, version).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import delete, select, update

from server.artifact import BackboneShape, read_artifact
from server.registry import queries as q
from server.registry import schema, tables
from server.registry.base import (
    Change,
    Conflict,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    Route,
    TaskRecord,
    TenantLimits,
    VersionRecord,
)
from server.registry.blobs import BlobCorrupt, BlobMissing, BlobStore, BlobStoreUnavailable, sha256_hex
from server.registry.blobs.local import FileBlobStore
from server.registry.database import Database, sqlite_url
from server.registry.gc import collect_garbage, remove_if_unreferenced
from server.registry.names import validate_name
from server.registry.records import version_from_row
from server.registry.routing import route_from_json, routed_versions, validate_route, version_for
from server.registry.tenants import TenantOperations

log = logging.getLogger(__name__)

DB_FILENAME = "registry.sqlite3"
BLOBS_DIRNAME = "blobs"
class SqlRegistry(TenantOperations):
    def __init__(
        self,
        database: Database,
        blobs: BlobStore,
        backbone: BackboneShape,
        default_limits: TenantLimits,
        *,
        seed: int | None = None,
        migrate: bool = True,
        gc_grace_s: float = 0.0,
    ) -> None:
        """`seed` fixes the weighted-route draws (tests); None seeds from the OS. `migrate` False only
        checks that the schema is the one this code knows."""
        self.database, self.blobs = database, blobs
        self._backbone = backbone
        self._default_limits = default_limits
        self._rng = random.Random(seed)
        self.gc_grace_s = gc_grace_s
        (schema.migrate if migrate else schema.check)(database)
        self._listener = None
        try:
            self.collect_garbage()
        except BlobStoreUnavailable as error:  # a replica must start, and serve what its cache holds, without it
            log.warning("garbage collection at start skipped: %s", error)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self.database.close()
        self.blobs.close()

    def __enter__(self) -> SqlRegistry:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Versions

    def add_version(self, tenant: str, task: str, artifact: bytes) -> VersionRecord:
        return self._add_version(tenant, task, artifact)

    def add_demo_version(self, tenant: str, task: str, artifact: bytes, file_name: str) -> VersionRecord | None:
        """add_version for a shipped demo file, recorded in the same transaction; None when the file was
        registered before, or its task was changed or deleted since (queries.claim_demo_file)."""
        with self.database.read() as conn:  # the usual restart: nothing to do, no blob written
            record = q.demo_row(conn, file_name)
        if record is not None and record.sha256 == sha256_hex(artifact):
            return None
        return self._add_version(tenant, task, artifact, demo_file=file_name)

    def _add_version(self, tenant: str, task: str, artifact: bytes, demo_file: str | None = None) -> VersionRecord | None:
        validate_name("tenant", tenant)
        validate_name("task", task)
        parsed = read_artifact(artifact, self._backbone)  # ArtifactError propagates: nothing stored yet
        size, sha256 = len(artifact), sha256_hex(artifact)
        with self.database.read() as conn:  # refuse unknown tenants and over-quota uploads before storing a blob
            q.check_quota(conn, tenant, task, size, self._default_limits)
        with _blob_store_errors():
            self.blobs.put(sha256, artifact)
        record = None
        try:
            with self.database.write() as conn:
                q.check_quota(conn, tenant, task, size, self._default_limits, lock=True)  # again, counted under the lock
                self.database.lock_blob(conn, sha256)
                with _blob_store_errors():
                    self.blobs.ensure(sha256, artifact)  # a collector may have removed it since the put
                if demo_file is None or q.claim_demo_file(conn, demo_file, tenant, task, sha256):
                    record = q.insert_version(conn, tenant, task, sha256, size, parsed)
                    if demo_file is not None:
                        q.record_demo_file(conn, demo_file, tenant, task, sha256, record.version)
                    self.database.announce(conn, Change("task", tenant, task))
        except BaseException:
            self._remove_unreferenced_blobs([sha256])
            raise
        if record is None:
            self._remove_unreferenced_blobs([sha256])  # a demo file left alone
            return None
        log.info("tenant %r task %r: stored version %d (sha256 %s)", tenant, task, record.version, sha256)
        return record

    def read_artifact_bytes(self, sha256: str) -> bytes:
        try:
            with _blob_store_errors():
                return self.blobs.read(sha256)
        except BlobMissing as exc:
            raise NotFound(f"artifact: {exc}") from None
        except BlobCorrupt as exc:
            raise RegistryError(str(exc)) from None

    def delete_version(self, tenant: str, task: str, version: int) -> None:
        validate_name("tenant", tenant)
        validate_name("task", task)
        with self.database.write() as conn:
            q.tenant_row(conn, tenant, lock=True)  # the counters' lock, taken first as uploads take it
            task_row = q.existing_task_row(conn, tenant, task, lock=True)
            row = conn.execute(select(tables.versions).where(q.version_of(tenant, task, version))).first()
            if row is None:
                raise NotFound(f"task {task!r}: version {version} not found")
            route = route_from_json(task_row.route)
            if version in routed_versions(route):
                raise Conflict(
                    f"task {task!r}: expected a version its route sends no traffic to, got version {version} "
                    f"(route {route.to_json()}); route the traffic elsewhere first"
                )
            conn.execute(delete(tables.versions).where(q.version_of(tenant, task, version)))
            q.count_usage(conn, tenant, size_bytes=-row.size_bytes)
            self.database.announce(conn, Change("task", tenant, task))
        self._remove_unreferenced_blobs([row.sha256])
        log.info("tenant %r task %r: deleted version %d", tenant, task, version)

    # Tasks and routes

    def list_tasks(self, tenant: str) -> list[TaskRecord]:
        validate_name("tenant", tenant)
        with self.database.read() as conn:
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
        with self.database.read() as conn:
            task_row = q.existing_task_row(conn, tenant, task)
            version_rows = conn.execute(
                select(tables.versions).where(q.version_of(tenant, task)).order_by(tables.versions.c.version)
            ).all()
        versions = tuple(version_from_row(row) for row in version_rows)
        return TaskRecord(tenant, task, versions, route_from_json(task_row.route))

    def set_route(self, tenant: str, task: str, route: Route) -> Route:
        validate_name("tenant", tenant)
        validate_name("task", task)
        with self.database.write() as conn:
            q.existing_task_row(conn, tenant, task, lock=True)
            checked = validate_route(route, q.version_numbers(conn, tenant, task), task)
            conn.execute(update(tables.tasks).where(q.task_is(tenant, task)).values(**q.route_columns(checked)))
            self.database.announce(conn, Change("task", tenant, task))
        log.info("tenant %r task %r: route set to %s", tenant, task, checked.to_json())
        return checked

    def delete_task(self, tenant: str, task: str) -> None:
        validate_name("tenant", tenant)
        validate_name("task", task)
        with self.database.write() as conn:
            q.tenant_row(conn, tenant, lock=True)  # the counters' lock, taken first as uploads take it
            q.existing_task_row(conn, tenant, task, lock=True)
            stored = conn.execute(
                select(tables.versions.c.sha256, tables.versions.c.size_bytes).where(q.version_of(tenant, task))
            ).all()
            shas = {row.sha256 for row in stored}
            conn.execute(delete(tables.versions).where(q.version_of(tenant, task)))
            conn.execute(delete(tables.tasks).where(q.task_is(tenant, task)))
            q.count_usage(conn, tenant, tasks=-1, size_bytes=-sum(row.size_bytes for row in stored))
            self.database.announce(conn, Change("task", tenant, task))
        self._remove_unreferenced_blobs(shas)
        log.info("tenant %r: deleted task %r", tenant, task)

    def resolve(self, tenant: str, task: str) -> VersionRecord:
        """The version one request runs on now, by the same rule the API's cached lookups apply."""
        return version_for(self.get_task(tenant, task), self._rng)

    # Changes, health, garbage

    def subscribe(self, on_change: Callable[[Change], None], on_resync: Callable[[], None]) -> None:
        """This process's writes are heard at commit; on PostgreSQL a listener hears every replica's."""
        self.database.subscribe(on_change)
        if self.database.is_postgres and self._listener is None:
            from server.registry.listener import ChangeListener

            self._listener = ChangeListener(self.database.url, on_change, on_resync)
            self._listener.start()

    def health(self) -> dict[str, bool]:
        try:
            self.blobs.ping()
            blobs_up = True
        except BlobStoreUnavailable:
            blobs_up = False
        return {"database": self.database.ping(), "blobs": blobs_up}

    def describe(self) -> dict[str, str]:
        return {"database": self.database.describe(), "blobs": self.blobs.describe()}

    @contextmanager
    def serialised(self, purpose: str) -> Iterator[None]:
        """One replica at a time runs the block (PostgreSQL advisory lock); a no-op on SQLite, whose
        embedded registry has one server."""
        if not self.database.is_postgres:
            yield
            return
        with self.database.exclusive("prefix-server:" + purpose, wait=True):
            yield

    def collect_garbage(self) -> int:
        """Removes blobs no version references and temp files, once older than the grace period."""
        return collect_garbage(self.database, self.blobs, self.gc_grace_s)

    def _remove_unreferenced_blobs(self, candidates: Iterable[str]) -> None:
        """Best effort: the caller's outcome stands even if this fails, and the collector gets them later."""
        try:
            for sha256 in set(candidates):
                remove_if_unreferenced(self.database, self.blobs, sha256)
        except Exception:
            log.warning("could not remove unreferenced blobs now; garbage collection will", exc_info=True)


class SqliteRegistry(SqlRegistry):
    """The embedded default: `data_dir/registry.sqlite3` and `data_dir/blobs/`, one host."""

    def __init__(self, data_dir: Path, backbone: BackboneShape, default_limits: TenantLimits, **options) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        database = Database(sqlite_url(self.data_dir / DB_FILENAME), busy_timeout_s=options.pop("busy_timeout_s", 30.0))
        super().__init__(database, FileBlobStore(self.data_dir / BLOBS_DIRNAME), backbone, default_limits, **options)


class _blob_store_errors:
    """BlobStoreUnavailable -> RegistryUnavailable('blob store'), which the API answers with 503."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and issubclass(exc_type, BlobStoreUnavailable):
            raise RegistryUnavailable("blob store", str(exc)) from exc
        return False
