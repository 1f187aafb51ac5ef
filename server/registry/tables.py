"""The registry's relational schema at the newest migration, in portable SQLAlchemy Core (SQLite and
PostgreSQL). The migrations under `migrations/versions/` create it; this module is what the queries
are written against, and a test checks the two agree.

Only generic types are used (String, Integer, BigInteger, JSON, DateTime with time zone). Artifact bytes
never live in the database: a version row holds the sha256 of a blob in the content-addressed store.

- tenants: one row per tenant; `api_key_hash` is the sha256 hex of its key (NULL for a keyless tenant
  such as single-tenant mode's 'default'); NULL limit columns mean "the server's current default".
  `task_count` and `artifact_bytes` are what the quotas count (its tasks; the size of all its versions),
  kept by every write of tasks and versions in its own transaction, so a quota check reads one row
  whatever the tenant holds (SPEC 6).
- tasks: one row per (tenant, task); `route` is Route.to_json(): {"version": n} or {"weights": {"n": w}}.
  `pinned_version` repeats the route's version when it is pinned (NULL for a weighted split).
  `last_version` counts the task's uploads: the next version is last_version + 1, taken under the
  task's row lock, so numbers are gap-free and never repeat while the task exists.
- versions: immutable, one row per upload; (tenant, task, version) is the key.
- demo_prefixes: one row per shipped demo file once it was registered (or found already there): the
  task and version it became (NULL: found with other bytes, never touched). No foreign key: the row
  outlives a deleted task, so a restart does not bring the task back.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
)

NAME_LENGTH = 63  # SPEC: [a-z0-9][a-z0-9_-]{0,62}

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = Table(
    "tenants",
    metadata,
    Column("name", String(NAME_LENGTH), primary_key=True),
    Column("api_key_hash", String(64), nullable=True, unique=True),
    Column("max_tasks", Integer, nullable=True),
    Column("max_artifact_bytes", BigInteger, nullable=True),
    Column("max_queued_inputs", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("task_count", Integer, nullable=False, server_default="0"),
    Column("artifact_bytes", BigInteger, nullable=False, server_default="0"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("tenant", String(NAME_LENGTH), primary_key=True),
    Column("name", String(NAME_LENGTH), primary_key=True),
    Column("route", JSON, nullable=False),
    Column("pinned_version", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_version", Integer, nullable=False, server_default="0"),
    ForeignKeyConstraint(["tenant"], ["tenants.name"]),
)

versions = Table(
    "versions",
    metadata,
    Column("tenant", String(NAME_LENGTH), primary_key=True),
    Column("task", String(NAME_LENGTH), primary_key=True),
    Column("version", Integer, primary_key=True),
    # Indexed: garbage collection asks "is this blob still referenced by anyone?"
    Column("sha256", String(64), nullable=False, index=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("prefix_len", Integer, nullable=False),
    Column("problem_type", String(40), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["tenant", "task"], ["tasks.tenant", "tasks.name"]),
)

demo_prefixes = Table(
    "demo_prefixes",
    metadata,
    Column("file_name", String(255), primary_key=True),
    Column("tenant", String(NAME_LENGTH), nullable=False),
    Column("task", String(NAME_LENGTH), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("version", Integer, nullable=True),
    Column("registered_at", DateTime(timezone=True), nullable=False),
)
