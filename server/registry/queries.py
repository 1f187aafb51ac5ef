"""The registry's statements in portable SQLAlchemy Core: lookups, quota checks and version inserts.

Every function takes an open Connection inside the caller's transaction, so a backend decides the
transactions (and their locking) and reuses these for the SQL itself.
"""

from __future__ import annotations

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from server.artifact import PrefixArtifact
from server.registry.base import LimitExceeded, NotFound, Route, TenantLimits, VersionRecord
from server.registry.records import tenant_from_row, utc_now, version_from_row
from server.registry.tables import demo_prefixes, tasks, tenants, versions

SELECT_TENANT_BY_KEY_HASH = select(tenants).where(tenants.c.api_key_hash == bindparam("key_hash"))


def task_is(tenant: str, task: str):
    return (tasks.c.tenant == tenant) & (tasks.c.name == task)


def version_of(tenant: str, task: str, version: int | None = None):
    clause = (versions.c.tenant == tenant) & (versions.c.task == task)
    return clause if version is None else clause & (versions.c.version == version)


def route_columns(route: Route) -> dict:
    return {"route": route.to_json(), "pinned_version": route.pinned}


def insert_tenant(conn: Connection, name: str, columns: dict) -> bool:
    """Inserts the tenant unless the name exists (ON CONFLICT DO NOTHING: two replicas may race);
    True if this call created it."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = dialect_insert(tenants).values(name=name, created_at=utc_now(), **columns)
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT through SQLAlchemy.
    inserted = conn.execute(statement.on_conflict_do_nothing(index_elements=["name"]).returning(tenants.c.name))
    return inserted.first() is not None


def tenant_row(conn: Connection, name: str, *, lock: bool = False) -> Row | None:
    """`lock`: FOR UPDATE on PostgreSQL (writers of one tenant queue here); SQLite's write lock already
    covers it and SQLAlchemy leaves the clause out there."""
    query = select(tenants).where(tenants.c.name == name)
    return conn.execute(query.with_for_update() if lock else query).first()


def existing_tenant_row(conn: Connection, name: str, *, lock: bool = False) -> Row:
    row = tenant_row(conn, name, lock=lock)
    if row is None:
        raise NotFound(f"tenant {name!r} not found")
    return row


def task_row(conn: Connection, tenant: str, task: str, *, lock: bool = False) -> Row | None:
    query = select(tasks).where(task_is(tenant, task))
    return conn.execute(query.with_for_update() if lock else query).first()


def existing_task_row(conn: Connection, tenant: str, task: str, *, lock: bool = False) -> Row:
    # The same answer whether the tenant, or only the task, is unknown: existence is not leaked.
    row = task_row(conn, tenant, task, lock=lock)
    if row is None:
        raise NotFound(f"task {task!r} not found")
    return row


def version_numbers(conn: Connection, tenant: str, task: str) -> set[int]:
    return set(conn.execute(select(versions.c.version).where(version_of(tenant, task))).scalars())


def referenced_blobs(conn: Connection, among: set[str] | None = None) -> set[str]:
    """The sha256s some version of any tenant references (only those in `among`, when given)."""
    query = select(versions.c.sha256).distinct()
    if among is not None:
        query = query.where(versions.c.sha256.in_(among))
    return set(conn.execute(query).scalars())


def check_quota(
    conn: Connection, tenant: str, task: str, size: int, defaults: TenantLimits, *, lock: bool = False
) -> None:
    """Raises LimitExceeded if storing `size` more bytes (and maybe a new task) breaks the tenant's limits;
    NotFound if the tenant does not exist. Reads the tenant row's counters (count_usage), never its tasks.
    `lock` holds the tenant's row until commit, so concurrent uploads through other replicas count what
    this one adds."""
    row = existing_tenant_row(conn, tenant, lock=lock)
    limits = tenant_from_row(row, defaults).limits
    if row.task_count >= limits.max_tasks and task_row(conn, tenant, task) is None:
        raise LimitExceeded(
            f"tenant {tenant!r}: expected at most {limits.max_tasks} tasks, got {row.task_count + 1} with "
            f"new task {task!r}; delete a task or ask the admin to raise the limit"
        )
    # Each version counts its full size, even when identical bytes share one blob: simple to predict.
    stored = row.artifact_bytes
    if stored + size > limits.max_artifact_bytes:
        raise LimitExceeded(
            f"tenant {tenant!r}: expected at most {limits.max_artifact_bytes} artifact bytes in all, got "
            f"{stored + size} ({stored} stored + {size} uploaded); delete a task or ask the admin to raise the limit"
        )


def count_usage(conn: Connection, tenant: str, *, tasks: int = 0, size_bytes: int = 0) -> None:
    """Adds to the tenant's counters what a write adds (negative: removes); the one home of their upkeep.
    Every insert or delete of tasks or versions calls it in its transaction, holding the tenant's row lock
    (taken first, before any task row, so writers never wait on each other in opposite orders)."""
    conn.execute(
        update(tenants)
        .where(tenants.c.name == tenant)
        .values(task_count=tenants.c.task_count + tasks, artifact_bytes=tenants.c.artifact_bytes + size_bytes)
    )


def insert_version(
    conn: Connection, tenant: str, task: str, sha256: str, size: int, artifact: PrefixArtifact
) -> VersionRecord:
    """Creates the task if new, adds the next version number and pins the route to it.

    The next number is the task row's counter + 1, read under the task's row lock (taken here), so two
    uploads through different replicas queue on the row instead of picking the same number. Callers
    hold the tenant's row lock too (check_quota(lock=True)), which orders the task's creation."""
    now = utc_now()
    row = task_row(conn, tenant, task, lock=True)
    if row is None:
        # The route is a placeholder for the few statements until the update below pins the new version.
        conn.execute(insert(tasks).values(tenant=tenant, name=task, route={"version": 1}, created_at=now, last_version=0))
        row = task_row(conn, tenant, task, lock=True)
        count_usage(conn, tenant, tasks=1)
    version = row.last_version + 1
    conn.execute(
        insert(versions).values(
            tenant=tenant,
            task=task,
            version=version,
            sha256=sha256,
            size_bytes=size,
            prefix_len=artifact.prefix_len,
            problem_type=artifact.problem_type.value,
            labels=list(artifact.labels),
            metadata=dict(artifact.extra_metadata),
            created_at=now,
        )
    )
    count_usage(conn, tenant, size_bytes=size)
    # SPEC: every upload becomes the active version, whatever the route was (a canary split included).
    columns = route_columns(Route(pinned=version))
    conn.execute(update(tasks).where(task_is(tenant, task)).values(last_version=version, **columns))
    return version_from_row(conn.execute(select(versions).where(version_of(tenant, task, version))).one())


def demo_row(conn: Connection, file_name: str, *, lock: bool = False) -> Row | None:
    query = select(demo_prefixes).where(demo_prefixes.c.file_name == file_name)
    return conn.execute(query.with_for_update() if lock else query).first()


def claim_demo_file(conn: Connection, file_name: str, tenant: str, task: str, sha256: str) -> bool:
    """True if the demo file should become a new version now: never registered and its task absent,
    or changed since while its task still runs, unchanged, the version it became. A task found there
    without a record (a user's, or registered before this table existed) is recorded and left alone.
    Decided under the task's row lock, so an upload through another replica cannot slip in between."""
    record = demo_row(conn, file_name, lock=True)
    row = task_row(conn, tenant, task, lock=True)
    if record is None:
        if row is None:
            return True
        active = None if row.pinned_version is None else _version_sha256(conn, tenant, task, row.pinned_version)
        record_demo_file(conn, file_name, tenant, task, sha256, row.pinned_version if active == sha256 else None)
        return False
    if record.sha256 == sha256 or row is None or record.version is None:
        return False  # unchanged, deleted by a user, or never ours
    untouched = row.pinned_version == record.version == row.last_version
    return untouched and _version_sha256(conn, tenant, task, record.version) == record.sha256


def record_demo_file(conn: Connection, file_name: str, tenant: str, task: str, sha256: str, version: int | None) -> None:
    conn.execute(delete(demo_prefixes).where(demo_prefixes.c.file_name == file_name))
    conn.execute(insert(demo_prefixes).values(
        file_name=file_name, tenant=tenant, task=task, sha256=sha256, version=version, registered_at=utc_now()
    ))


def _version_sha256(conn: Connection, tenant: str, task: str, version: int) -> str | None:
    return conn.execute(select(versions.c.sha256).where(version_of(tenant, task, version))).scalar()
