"""Bringing the registry's schema up to date (Alembic), and refusing to run against one this code
does not know.

`migrate` runs every pending revision under one database-wide lock (a PostgreSQL advisory lock, or
SQLite's write lock), so replicas starting together on an empty database run the migration once: the
first takes the lock and migrates, the others wait, then find nothing to do. A database made before
migrations existed (tables, no `alembic_version`) is stamped at the baseline first. `check` is what
a replica started with PREFIX_SERVER_MIGRATE=false does: it refuses a schema that is behind (run
`prefix-server migrate`) or ahead (a newer server migrated it) of the revisions it knows.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from server.registry.database import Database

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
_LOCK = "prefix-server:migrate"


class SchemaMismatch(RuntimeError):
    """The database's schema revision is not the one this server runs on."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def migrate(database: Database) -> tuple[str | None, str]:
    """Upgrades to the newest revision; returns (revision before, revision after)."""
    with database.exclusive(_LOCK, wait=True) as connection:
        before = current_revision(connection)
        _refuse_unknown(before)
        if before is None and inspect(connection).has_table("tenants"):
            command.stamp(_config(connection), BASELINE)  # made by create_all before migrations existed
            before = BASELINE
        head = head_revision()
        if before != head:
            command.upgrade(_config(connection), "head")
            log.info("registry schema migrated from %s to %s (%s)", before or "empty", head, database.describe())
        return before, head


def check(database: Database) -> None:
    """Raises SchemaMismatch unless the schema is at exactly the revision this server knows as newest."""
    with database.read() as connection:
        current = current_revision(connection)
    _refuse_unknown(current)
    head = head_revision()
    if current != head:
        raise SchemaMismatch(
            f"registry schema: expected revision {head}, got {current or 'an empty database'} at "
            f"{database.describe()}; run `prefix-server migrate` (or start with PREFIX_SERVER_MIGRATE=true)"
        )


def _refuse_unknown(revision: str | None) -> None:
    if revision is None:
        return
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if revision not in known:
        raise SchemaMismatch(
            f"registry schema: the database is at revision {revision}, which this server does not know "
            f"(it knows up to {head_revision()}): a newer prefix-server migrated it; run that version"
        )
