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

import hashlib
import logging
import random
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import delete, func, select, update

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
    Tenant,
    TenantLimits,
    VersionRecord,
)
from server.registry.blobs import BlobCorrupt, BlobMissing, BlobStore, BlobStoreUnavailable, sha256_hex
from server.registry.blobs.local import FileBlobStore
from server.registry.database import Database, sqlite_url
from server.registry.gc import collect_garbage, remove_if_unreferenced
from server.registry.names import validate_name
from server.registry.records import tenant_from_row, version_from_row
from server.registry.routing import route_from_json, routed_versions, validate_route, version_for

log = logging.getLogger(__name__)

DB_FILENAME = "registry.sqlite3"
BLOBS_DIRNAME = "blobs"
API_KEY_PREFIX = "psk_"
PROTECTED_TENANT = "default"  # single-tenant mode's caller and the admin's namespace


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits, 43 characters


class SqlRegistry:
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

    # Tenants

    def create_tenant(self, name: str, limits: TenantLimits | None = None) -> tuple[Tenant, str]:
        """A NULL limit column means "the server's default", so `limits=None` follows later changes."""
        validate_name("tenant", name)
        if limits is not None:
            _check_limit_values(limits)
        api_key = new_api_key()
        columns = dict(api_key_hash=hash_api_key(api_key), **({} if limits is None else vars(limits)))
        with self.database.write() as conn:
            if not q.insert_tenant(conn, name, columns):
                raise Conflict(f"tenant {name!r}: expected a new name, got one that already exists")
            tenant = tenant_from_row(q.tenant_row(conn, name), self._default_limits)
            self.database.announce(conn, Change("tenant", name))
        log.info("created tenant %r", name)
        return tenant, api_key

    def ensure_tenant(self, name: str) -> Tenant:
        validate_name("tenant", name)
        with self.database.read() as conn:
            row = q.tenant_row(conn, name)
        if row is None:
            with self.database.write() as conn:  # ON CONFLICT: another replica may create it at the same moment
                if q.insert_tenant(conn, name, {}):
                    log.info("created keyless tenant %r", name)
                    self.database.announce(conn, Change("tenant", name))
                row = q.tenant_row(conn, name)
        return tenant_from_row(row, self._default_limits)

    def tenant_for_key(self, api_key: str) -> Tenant | None:
        if not isinstance(api_key, str) or not api_key:
            return None
        with self.database.read() as conn:
            row = conn.execute(q.SELECT_TENANT_BY_KEY_HASH, {"key_hash": hash_api_key(api_key)}).first()
        return None if row is None else tenant_from_row(row, self._default_limits)

    def get_tenant(self, name: str) -> Tenant:
        validate_name("tenant", name)
        with self.database.read() as conn:
            return tenant_from_row(q.existing_tenant_row(conn, name), self._default_limits)

    def list_tenants(self) -> list[tuple[Tenant, int]]:
        with self.database.read() as conn:
            rows = conn.execute(select(tables.tenants).order_by(tables.tenants.c.name)).all()
            counts = dict(conn.execute(
                select(tables.tasks.c.tenant, func.count()).group_by(tables.tasks.c.tenant)
            ).all())
        return [(tenant_from_row(row, self._default_limits), counts.get(row.name, 0)) for row in rows]

    def rotate_key(self, name: str) -> str:
        validate_name("tenant", name)
        api_key = new_api_key()
        with self.database.write() as conn:
            q.existing_tenant_row(conn, name, lock=True)
            conn.execute(update(tables.tenants).where(tables.tenants.c.name == name).values(api_key_hash=hash_api_key(api_key)))
            self.database.announce(conn, Change("tenant", name))
        log.info("tenant %r: API key rotated", name)
        return api_key

    def delete_tenant(self, name: str) -> None:
        validate_name("tenant", name)
        if name == PROTECTED_TENANT:
            raise Conflict(f"tenant {name!r} is the admin's and single-tenant mode's namespace: expected another tenant")
        with self.database.write() as conn:
            q.existing_tenant_row(conn, name, lock=True)
            shas = set(conn.execute(select(tables.versions.c.sha256).where(tables.versions.c.tenant == name)).scalars())
            conn.execute(delete(tables.versions).where(tables.versions.c.tenant == name))
            conn.execute(delete(tables.tasks).where(tables.tasks.c.tenant == name))
            conn.execute(delete(tables.tenants).where(tables.tenants.c.name == name))
            self.database.announce(conn, Change("tenant", name))
        self._remove_unreferenced_blobs(shas)  # after the commit: a crash here leaves garbage, never a dangling row
        log.info("deleted tenant %r and its %d artifacts' references", name, len(shas))

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
            q.existing_task_row(conn, tenant, task, lock=True)
            shas = set(conn.execute(select(tables.versions.c.sha256).where(q.version_of(tenant, task))).scalars())
            conn.execute(delete(tables.versions).where(q.version_of(tenant, task)))
            conn.execute(delete(tables.tasks).where(q.task_is(tenant, task)))
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


def _check_limit_values(limits: TenantLimits) -> None:
    for field_name, value in vars(limits).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"tenant limit {field_name}: expected a positive integer, got {value!r}")
