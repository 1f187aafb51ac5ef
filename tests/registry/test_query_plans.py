"""SPEC 6, lookups cost the same with 10^6 tasks as with 10: every statement a request's registry
lookup makes (tenant by API key, the task's routed version), and every statement of an upload, is
answered from an index, and an upload aggregates nothing over the tenant (its quota reads the
tenant row's counters). Checked on PostgreSQL's plans with sequential scans disabled, so a statement
that no index can answer shows up as a Seq Scan whatever the table sizes. The latency at 10^6 tasks
is measured by benchmarks/registry_scale.py."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import event

from tests.registry.support import artifact_bytes

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("backend", ["postgresql"], indirect=True)]

QUERY = re.compile(r"^\s*(SELECT|UPDATE|DELETE)\b", re.IGNORECASE)


def statements_of(registry, call) -> list[tuple[str, object]]:
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if QUERY.match(statement) and "pg_advisory" not in statement:
            seen.append((statement, parameters))

    event.listen(registry.database.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(registry.database.engine, "before_cursor_execute", record)
    assert seen, "expected the call to query the database"
    return seen


def sequential_scans(registry, statements) -> list[str]:
    found = []
    with registry.database.read() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, parameters in statements:
            plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
            if "Seq Scan" in plan:
                found.append(f"{statement}\n{plan}")
    return found


def test_a_requests_lookup_reads_indexes_only(registry):
    _, api_key = registry.create_tenant("acme")
    for task in ("a", "b"):
        registry.add_version("acme", task, artifact_bytes(seed=1))
    statements = statements_of(registry, lambda: registry.resolve(registry.tenant_for_key(api_key).name, "a"))
    assert sequential_scans(registry, statements) == []


def test_an_upload_reads_indexes_only_and_counts_nothing(registry, tenant):
    registry.add_version(tenant, "a", artifact_bytes(seed=1))
    for task in ("a", "b"):  # a new version of a task, and a new task
        statements = statements_of(registry, lambda task=task: registry.add_version(tenant, task, artifact_bytes(seed=2)))
        assert sequential_scans(registry, statements) == []
        aggregates = [s for s, _ in statements if re.search(r"\b(count|sum)\s*\(", s, re.IGNORECASE)]
        assert aggregates == [], "an upload's cost must not grow with the tenant's tasks"
