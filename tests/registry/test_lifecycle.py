"""SPEC 2c on both backends: tenants listed, deleted and re-keyed; single versions deleted; and every
write announced as a Change (to this process at commit, to other processes through NOTIFY)."""

from __future__ import annotations

import threading
import time

import pytest

from harness.processes import wait_until
from server.registry import Change, Conflict, NotFound, Route, TenantLimits
from tests.registry.support import LIMITS, artifact_bytes, blob_files, sha256_hex


def test_list_tenants_gives_limits_and_task_counts(registry):
    registry.create_tenant("b")
    registry.create_tenant("a", TenantLimits(max_tasks=2, max_artifact_bytes=10**6, max_queued_inputs=3))
    registry.add_version("b", "one", artifact_bytes(seed=1))
    registry.add_version("b", "two", artifact_bytes(seed=2))
    listed = [(tenant.name, tenant.limits.max_tasks, count) for tenant, count in registry.list_tenants()]
    assert listed == [("a", 2, 0), ("b", LIMITS.max_tasks, 2)]


def test_delete_tenant_removes_its_key_tasks_and_only_its_blobs(registry, data_dir):
    _, key = registry.create_tenant("gone")
    registry.create_tenant("stays")
    shared, own = artifact_bytes(seed=1), artifact_bytes(seed=2)
    kept = registry.add_version("stays", "t", shared)
    registry.add_version("gone", "t", shared)
    registry.add_version("gone", "u", own)
    registry.delete_tenant("gone")
    assert registry.tenant_for_key(key) is None
    with pytest.raises(NotFound):
        registry.get_tenant("gone")
    with pytest.raises(NotFound):
        registry.list_tasks("gone")
    assert blob_files(data_dir) == {kept.sha256}  # the shared blob stays for the other tenant
    assert registry.read_artifact_bytes(kept.sha256) == shared
    registry.create_tenant("gone")  # the name is free again, with nothing of the old tenant
    assert registry.list_tasks("gone") == []


def test_delete_tenant_refuses_unknown_and_the_default_namespace(registry):
    with pytest.raises(NotFound):
        registry.delete_tenant("nobody")
    registry.ensure_tenant("default")
    with pytest.raises(Conflict, match="expected another tenant"):
        registry.delete_tenant("default")


def test_rotate_key_kills_the_old_key_at_once(registry):
    _, old = registry.create_tenant("acme")
    new = registry.rotate_key("acme")
    assert new != old and new.startswith("psk_")
    assert registry.tenant_for_key(old) is None
    assert registry.tenant_for_key(new).name == "acme"
    with pytest.raises(NotFound):
        registry.rotate_key("nobody")


def test_delete_version_refuses_routed_versions_and_never_reuses_numbers(registry, tenant, data_dir):
    for seed in (1, 2, 3):
        registry.add_version(tenant, "t", artifact_bytes(seed=seed))
    with pytest.raises(Conflict, match=r"got version 3 \(route \{'version': 3\}\)"):
        registry.delete_version(tenant, "t", 3)
    registry.set_route(tenant, "t", Route(weights={1: 0.5, 2: 0.5}))
    for routed in (1, 2):
        with pytest.raises(Conflict):
            registry.delete_version(tenant, "t", routed)
    registry.delete_version(tenant, "t", 3)
    with pytest.raises(NotFound, match="version 3 not found"):
        registry.delete_version(tenant, "t", 3)
    assert [v.version for v in registry.get_task(tenant, "t").versions] == [1, 2]
    assert len(blob_files(data_dir)) == 2
    assert registry.add_version(tenant, "t", artifact_bytes(seed=4)).version == 4  # 3 is not handed out again


def test_writes_announce_changes_to_this_process_after_commit(registry):
    heard: list[Change] = []
    here = threading.current_thread()
    # At commit, on the writing thread; on PostgreSQL the listener thread hears them again by NOTIFY.
    registry.subscribe(lambda change: heard.append(change) if threading.current_thread() is here else None, lambda: None)
    registry.create_tenant("acme")
    registry.add_version("acme", "t", artifact_bytes(seed=1))
    registry.set_route("acme", "t", Route(pinned=1))
    registry.rotate_key("acme")
    with pytest.raises(Conflict):
        registry.create_tenant("acme")  # a refused write announces nothing
    registry.delete_task("acme", "t")
    registry.delete_tenant("acme")
    assert [c for c in heard if c.tenant == "acme"] == [
        Change("tenant", "acme"),
        Change("task", "acme", "t"),
        Change("task", "acme", "t"),
        Change("tenant", "acme"),
        Change("task", "acme", "t"),
        Change("tenant", "acme"),
    ]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_other_registries_hear_writes_through_notify(open_registry):
    writer, reader = open_registry(), open_registry()
    heard: list[tuple[float, Change]] = []
    resyncs = threading.Event()
    reader.subscribe(lambda change: heard.append((time.monotonic(), change)), resyncs.set)
    assert resyncs.wait(60), "the listener never connected"
    writer.create_tenant("acme")
    started = time.monotonic()
    writer.add_version("acme", "t", artifact_bytes(seed=1))
    wait_until(lambda: Change("task", "acme", "t") in [c for _, c in heard], 60, "the upload's NOTIFY", interval_s=0.01)
    arrivals = [at for at, change in heard if change == Change("task", "acme", "t")]
    assert arrivals and arrivals[0] - started < 1.0, f"heard {heard}"
    assert Change("tenant", "acme") in [c for _, c in heard]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_quotas_hold_under_concurrent_uploads_through_two_registries(open_registry):
    registries = [open_registry(), open_registry()]
    registries[0].create_tenant("small", TenantLimits(max_tasks=3, max_artifact_bytes=10**8, max_queued_inputs=1))
    outcomes: list[str] = []

    def upload(index: int) -> None:
        try:
            registries[index % 2].add_version("small", f"task-{index}", artifact_bytes(seed=index))
            outcomes.append("stored")
        except Exception as exc:  # noqa: BLE001 — LimitExceeded expected; anything else fails the assertion below
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["LimitExceeded"] * 7 + ["stored"] * 3
    assert len(registries[1].list_tasks("small")) == 3


def test_garbage_collection_spares_blobs_younger_than_the_grace_period(open_registry, data_dir):
    registry = open_registry(gc_grace_s=3600)
    registry.create_tenant("acme")
    kept = registry.add_version("acme", "t", artifact_bytes(seed=1))
    orphan = artifact_bytes(seed=2)
    registry.blobs.put(sha256_hex(orphan), orphan)  # stored by an upload that has not committed yet
    assert registry.collect_garbage() == 0 and sha256_hex(orphan) in blob_files(data_dir)
    registry.gc_grace_s = 0  # an hour later
    assert registry.collect_garbage() == 1
    assert blob_files(data_dir) == {kept.sha256}


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_one_collector_at_a_time(open_registry, data_dir):
    first, second = open_registry(), open_registry()
    orphan = artifact_bytes(seed=3)
    first.blobs.put(sha256_hex(orphan), orphan)
    with first.database.exclusive("prefix-server:blob-gc", wait=False) as held:
        assert held is not None
        assert second.collect_garbage() == 0  # another replica is collecting: skip, do not wait
    assert second.collect_garbage() == 1 and blob_files(data_dir) == set()
