"""Migrations on both backends: they build what tables.py describes, run once when replicas start
together, adopt a database made before migrations existed, and a schema this code does not know is
refused with a message saying what to do."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from server.registry import schema, tables
from server.registry.database import Database
from tests.registry.support import artifact_bytes


def test_migrations_build_exactly_the_tables_the_code_queries(database_url):
    database = Database(database_url)
    try:
        assert schema.migrate(database) == (None, schema.head_revision())
        with database.read() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), tables.metadata)
        assert differences == []
        assert schema.migrate(database) == (schema.head_revision(), schema.head_revision())  # nothing to do again
    finally:
        database.close()


def test_a_database_from_before_migrations_is_adopted_with_its_rows(open_registry, database_url):
    database = Database(database_url)
    with database.exclusive("test", wait=True) as conn:
        command.upgrade(schema._config(conn), schema.BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))  # what create_all left: tables, no revision
        conn.execute(text("INSERT INTO tenants (name, created_at) VALUES ('old', CURRENT_TIMESTAMP)"))
    database.close()
    registry = open_registry()
    assert [tenant.name for tenant, _ in registry.list_tenants()] == ["old"]
    assert registry.add_version("old", "t", artifact_bytes(seed=1)).version == 1


def test_a_newer_schema_is_refused_and_an_older_one_without_migrate_too(open_registry, database_url):
    with pytest.raises(schema.SchemaMismatch, match="run `prefix-server migrate`"):
        open_registry(migrate=False)  # empty database, told not to migrate
    open_registry()
    database = Database(database_url)
    with database.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    database.close()
    for migrate in (True, False):
        with pytest.raises(schema.SchemaMismatch, match="revision 9999, which this server does not know"):
            open_registry(migrate=migrate)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_replicas_starting_together_on_an_empty_database_migrate_once(database_url):
    databases = [Database(database_url) for _ in range(4)]
    results, errors = [], []
    start = threading.Barrier(len(databases))

    def migrate(database: Database) -> None:
        start.wait()
        try:
            results.append(schema.migrate(database))
        except Exception as exc:  # noqa: BLE001 — collected from the thread, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for database in databases:
        database.close()
    head = schema.head_revision()
    assert errors == []
    assert sorted(results, key=str) == sorted([(None, head)] + [(head, head)] * 3, key=str)


def test_the_migrate_command_brings_a_data_dir_up_to_date(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "server", "migrate", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"registry schema at revision {schema.head_revision()} (was empty)" in done.stdout
    again = subprocess.run(
        [sys.executable, "-m", "server", "migrate", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0 and "(was" not in again.stdout
