"""The tenant row's usage counters (task_count, artifact_bytes), which the quotas read instead of
counting rows: every write keeps them equal to a recount, and the migration that adds them fills
them from the rows already there."""

from __future__ import annotations

import random

import pytest
from alembic import command
from sqlalchemy import text

from server.registry import Conflict, LimitExceeded, NotFound, Route, TenantLimits, schema
from server.registry.database import Database
from tests.registry.support import artifact_bytes, usage_counters_and_recount

ROOMY = TenantLimits(max_tasks=6, max_artifact_bytes=10**7, max_queued_inputs=1)


def test_counters_equal_a_recount_after_any_mix_of_writes(registry):
    registry.create_tenant("acme", ROOMY)
    registry.create_tenant("other", ROOMY)
    registry.create_tenant("gone", ROOMY)
    rng = random.Random(7)
    done = {"upload": 0, "delete_version": 0, "delete_task": 0}
    for step in range(80):
        tenant = rng.choice(["acme", "other", "gone"])
        task = f"t{rng.randrange(6)}"
        action = rng.choice(["upload", "upload", "upload", "delete_version", "delete_version", "delete_task"])
        try:
            if action == "upload":
                registry.add_version(tenant, task, artifact_bytes(seed=step % 9, prefix_len=2 + step % 5))
            elif action == "delete_version":
                record = registry.get_task(tenant, task)
                registry.set_route(tenant, task, Route(pinned=record.versions[-1].version))
                registry.delete_version(tenant, task, record.versions[0].version)
            else:
                registry.delete_task(tenant, task)
            done[action] += 1
        except (NotFound, Conflict, LimitExceeded):  # an absent task, its only version, a full tenant: no change
            pass
        kept, recount = usage_counters_and_recount(registry)
        assert kept == recount, f"after step {step} ({action} {tenant}/{task})"
    assert min(done.values()) >= 5, done  # every kind of write happened, not only refusals
    registry.delete_tenant("gone")
    kept, recount = usage_counters_and_recount(registry)
    assert kept == recount and set(kept) == {"acme", "other"}
    assert {tenant.name: count for tenant, count in registry.list_tenants()} == {
        name: tasks for name, (tasks, _) in recount.items()
    }


def test_quotas_count_what_deletes_gave_back(open_registry):
    size = len(artifact_bytes(seed=1))
    registry = open_registry()
    registry.create_tenant("small", TenantLimits(max_tasks=2, max_artifact_bytes=3 * size, max_queued_inputs=1))
    registry.add_version("small", "a", artifact_bytes(seed=1))
    registry.add_version("small", "a", artifact_bytes(seed=2))
    registry.add_version("small", "b", artifact_bytes(seed=3))
    with pytest.raises(LimitExceeded, match=rf"got {4 * size} \({3 * size} stored \+ {size} uploaded\)"):
        registry.add_version("small", "b", artifact_bytes(seed=4))
    registry.delete_version("small", "a", 1)  # route pins version 2
    registry.add_version("small", "b", artifact_bytes(seed=4))  # the deleted version's bytes are free again
    with pytest.raises(LimitExceeded, match=r"expected at most 2 tasks, got 3 with new task 'c'"):
        registry.add_version("small", "c", artifact_bytes(seed=5))
    registry.delete_task("small", "a")
    registry.add_version("small", "c", artifact_bytes(seed=5))


def test_the_migration_fills_the_counters_from_the_rows(open_registry, database_url):
    database = Database(database_url)
    with database.exclusive("test", wait=True) as conn:
        command.upgrade(schema._config(conn), "0003")  # the schema before the counters
        for tenant in ("acme", "empty"):
            conn.execute(text("INSERT INTO tenants (name, created_at) VALUES (:name, CURRENT_TIMESTAMP)"), {"name": tenant})
        for task, sizes in {"a": [100, 250], "b": [7]}.items():
            conn.execute(text(
                "INSERT INTO tasks (tenant, name, route, pinned_version, created_at, last_version) "
                "VALUES ('acme', :task, '{\"version\": 1}', 1, CURRENT_TIMESTAMP, :last)"
            ), {"task": task, "last": len(sizes)})
            for version, size in enumerate(sizes, start=1):
                conn.execute(text(
                    "INSERT INTO versions (tenant, task, version, sha256, size_bytes, prefix_len, problem_type, "
                    "labels, metadata, created_at) VALUES ('acme', :task, :version, :sha, :size, 4, "
                    "'single_label_classification', '[\"x\", \"y\"]', '{}', CURRENT_TIMESTAMP)"
                ), {"task": task, "version": version, "sha": f"{version:064x}", "size": size})
    database.close()
    registry = open_registry()  # migrates to head
    kept, recount = usage_counters_and_recount(registry)
    assert kept == recount == {"acme": (2, 357), "empty": (0, 0)}
