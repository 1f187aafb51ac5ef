"""The registry's statements in portable SQLAlchemy Core: lookups, quota checks and version inserts.

Every function takes an open Connection inside the caller's transaction, so a backend decides the
transactions (and their locking) and reuses these for the SQL itself.
"""

from __future__ import annotations

from sqlalchemy import Connection, Row, and_, bindparam, func, insert, select, update

from server.artifact import PrefixArtifact
from server.registry.base import LimitExceeded, NotFound, Route, TenantLimits, VersionRecord
from server.registry.records import tenant_from_row, utc_now, version_from_row
from server.registry.tables import tasks, tenants, versions

# The statements of the per-request calls are built once: building one costs more than running it.
RESOLVE_PINNED = select(tasks.c.route, versions).select_from(
    tasks.outerjoin(
        versions,
        and_(
            versions.c.tenant == tasks.c.tenant,
            versions.c.task == tasks.c.name,
            versions.c.version == tasks.c.pinned_version,
        ),
    )
).where(tasks.c.tenant == bindparam("tenant"), tasks.c.name == bindparam("task"))
SELECT_VERSION = select(versions).where(
    versions.c.tenant == bindparam("tenant"),
    versions.c.task == bindparam("task"),
    versions.c.version == bindparam("version"),
)
SELECT_TENANT_BY_KEY_HASH = select(tenants).where(tenants.c.api_key_hash == bindparam("key_hash"))


def task_is(tenant: str, task: str):
    return (tasks.c.tenant == tenant) & (tasks.c.name == task)


def version_of(tenant: str, task: str, version: int | None = None):
    clause = (versions.c.tenant == tenant) & (versions.c.task == task)
    return clause if version is None else clause & (versions.c.version == version)


def route_columns(route: Route) -> dict:
    return {"route": route.to_json(), "pinned_version": route.pinned}


def tenant_row(conn: Connection, name: str) -> Row | None:
    return conn.execute(select(tenants).where(tenants.c.name == name)).first()


def existing_tenant_row(conn: Connection, name: str) -> Row:
    row = tenant_row(conn, name)
    if row is None:
        raise NotFound(f"tenant {name!r} not found")
    return row


def task_row(conn: Connection, tenant: str, task: str) -> Row | None:
    return conn.execute(select(tasks).where(task_is(tenant, task))).first()


def existing_task_row(conn: Connection, tenant: str, task: str) -> Row:
    # The same answer whether the tenant, or only the task, is unknown: existence is not leaked.
    row = task_row(conn, tenant, task)
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


def check_quota(conn: Connection, tenant: str, task: str, size: int, defaults: TenantLimits) -> None:
    """Raises LimitExceeded if storing `size` more bytes (and maybe a new task) breaks the tenant's limits;
    NotFound if the tenant does not exist."""
    limits = tenant_from_row(existing_tenant_row(conn, tenant), defaults).limits
    if task_row(conn, tenant, task) is None:
        task_count = conn.execute(select(func.count()).select_from(tasks).where(tasks.c.tenant == tenant)).scalar_one()
        if task_count >= limits.max_tasks:
            raise LimitExceeded(
                f"tenant {tenant!r}: expected at most {limits.max_tasks} tasks, got {task_count + 1} with "
                f"new task {task!r}; delete a task or ask the admin to raise the limit"
            )
    # Each version counts its full size, even when identical bytes share one blob: simple to predict.
    stored = conn.execute(
        select(func.coalesce(func.sum(versions.c.size_bytes), 0)).where(versions.c.tenant == tenant)
    ).scalar_one()
    if stored + size > limits.max_artifact_bytes:
        raise LimitExceeded(
            f"tenant {tenant!r}: expected at most {limits.max_artifact_bytes} artifact bytes in all, got "
            f"{stored + size} ({stored} stored + {size} uploaded); delete a task or ask the admin to raise the limit"
        )


def insert_version(
    conn: Connection, tenant: str, task: str, sha256: str, size: int, artifact: PrefixArtifact
) -> VersionRecord:
    """Creates the task if new, adds the next version number and pins the route to it.

    The next number is max + 1: versions are only deleted with their task, so within a task's life a
    number never comes back. Callers must hold the write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL:
    lock the task row), or two uploads could pick the same number and one would fail on the key."""
    now = utc_now()
    if task_row(conn, tenant, task) is None:
        # The route is a placeholder for the few statements until the update below pins the new version.
        conn.execute(insert(tasks).values(tenant=tenant, name=task, route={"version": 1}, created_at=now))
    latest = conn.execute(select(func.coalesce(func.max(versions.c.version), 0)).where(version_of(tenant, task)))
    version = latest.scalar_one() + 1
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
    # SPEC: every upload becomes the active version, whatever the route was (a canary split included).
    conn.execute(update(tasks).where(task_is(tenant, task)).values(**route_columns(Route(pinned=version))))
    return version_from_row(conn.execute(select(versions).where(version_of(tenant, task, version))).one())
