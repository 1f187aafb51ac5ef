"""Uploads: validation, immutable numbered versions, blob storage, limits, and what a refusal leaves."""

from __future__ import annotations

import pytest

from server.artifact import ArtifactError, BackboneShape, ProblemType, artifact_to_bytes
from server.registry import InvalidName, LimitExceeded, NotFound, RegistryError, Route, TenantLimits, queries
from server.registry.blobs.local import FileBlobStore
from tests.helpers import make_artifact
from tests.registry.support import SHAPE, artifact_bytes, blob_files, sha256_hex, temp_files


def row_counts(registry) -> dict[str, int]:
    with registry.database.read() as conn:
        return {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in ("tasks", "versions")}


def test_add_version_returns_the_record_and_pins_it(registry, tenant):
    data = artifact_bytes(seed=1, prefix_len=6, num_labels=3, problem_type=ProblemType.MULTI_LABEL)
    record = registry.add_version(tenant, "topics", data)
    assert (record.task, record.version) == ("topics", 1)
    assert record.sha256 == sha256_hex(data) and record.size_bytes == len(data)
    assert record.prefix_len == 6 and record.problem_type == "multi_label_classification"
    assert record.labels == ("label_0", "label_1", "label_2")
    assert record.metadata == {"author": "tests"}
    assert record.created_at.endswith("+00:00")
    task = registry.get_task(tenant, "topics")
    assert task.versions == (record,) and task.route == Route(pinned=1)
    assert registry.resolve(tenant, "topics") == record


def test_every_upload_is_a_new_version_and_becomes_active(registry, tenant):
    records = [registry.add_version(tenant, "t", artifact_bytes(seed=s)) for s in range(3)]
    assert [r.version for r in records] == [1, 2, 3]
    registry.set_route(tenant, "t", Route(weights={1: 0.5, 3: 0.5}))
    fourth = registry.add_version(tenant, "t", artifact_bytes(seed=3))
    assert registry.get_task(tenant, "t").route == Route(pinned=4)  # the canary split is replaced
    assert registry.resolve(tenant, "t") == fourth


def test_identical_bytes_share_one_blob(registry, tenant, data_dir):
    data = artifact_bytes(seed=7)
    first = registry.add_version(tenant, "a", data)
    second = registry.add_version(tenant, "a", data)
    third = registry.add_version(tenant, "b", data)
    assert (second.version, third.version) == (2, 1)
    assert {first.sha256, second.sha256, third.sha256} == blob_files(data_dir) == {sha256_hex(data)}
    assert (data_dir / "blobs" / first.sha256[:2] / first.sha256).read_bytes() == data


def test_read_artifact_bytes_round_trips_and_checks_the_name(registry, tenant, data_dir):
    data = artifact_bytes(seed=2)
    record = registry.add_version(tenant, "t", data)
    assert registry.read_artifact_bytes(record.sha256) == data
    for unknown in ["0" * 64, "../registry.sqlite3", record.sha256.upper(), record.sha256[:-1], ""]:
        with pytest.raises(NotFound):
            registry.read_artifact_bytes(unknown)
    (data_dir / "blobs" / record.sha256[:2] / record.sha256).write_bytes(data[:-1] + b"!")
    with pytest.raises(RegistryError, match="expected bytes hashing to"):
        registry.read_artifact_bytes(record.sha256)


def wrong_backbone_bytes() -> bytes:
    other = BackboneShape(3, SHAPE.num_heads, SHAPE.head_dim, SHAPE.max_position_embeddings, SHAPE.fingerprint)
    return artifact_to_bytes(make_artifact(other))


REFUSED_UPLOADS = {
    "empty": lambda: b"",
    "pickle": lambda: b"\x80\x03}q\x00.",  # refused by the header check, never unpickled
    "truncated": lambda: artifact_bytes(seed=1)[:-5],
    "other backbone": wrong_backbone_bytes,
}


@pytest.mark.parametrize("make_bad", REFUSED_UPLOADS.values(), ids=REFUSED_UPLOADS.keys())
def test_refused_artifact_propagates_and_stores_nothing(registry, tenant, data_dir, make_bad):
    with pytest.raises(ArtifactError):
        registry.add_version(tenant, "t", make_bad())
    assert row_counts(registry) == {"tasks": 0, "versions": 0}
    assert blob_files(data_dir) == set() and temp_files(data_dir) == []


def test_add_version_to_unknown_tenant_is_not_found_and_stores_nothing(registry, data_dir):
    with pytest.raises(NotFound, match="tenant 'ghost'"):
        registry.add_version("ghost", "t", artifact_bytes())
    assert row_counts(registry) == {"tasks": 0, "versions": 0} and blob_files(data_dir) == set()


def test_add_version_refuses_invalid_names(registry, tenant):
    with pytest.raises(InvalidName, match="task name"):
        registry.add_version(tenant, "Bad Name", artifact_bytes())


def test_max_tasks_counts_new_tasks_only(open_registry, data_dir):
    registry = open_registry()
    registry.create_tenant("small", TenantLimits(max_tasks=2, max_artifact_bytes=10**6, max_queued_inputs=1))
    registry.add_version("small", "a", artifact_bytes(seed=1))
    registry.add_version("small", "b", artifact_bytes(seed=2))
    registry.add_version("small", "a", artifact_bytes(seed=3))  # a new version of an existing task is fine
    with pytest.raises(LimitExceeded, match=r"expected at most 2 tasks, got 3"):
        registry.add_version("small", "c", artifact_bytes(seed=4))
    assert row_counts(registry) == {"tasks": 2, "versions": 3} and len(blob_files(data_dir)) == 3
    registry.delete_task("small", "b")
    assert registry.add_version("small", "c", artifact_bytes(seed=4)).version == 1


def test_max_artifact_bytes_sums_the_tenants_versions(open_registry, data_dir):
    size = len(artifact_bytes(seed=1))
    registry = open_registry()
    registry.create_tenant("small", TenantLimits(max_tasks=9, max_artifact_bytes=2 * size, max_queued_inputs=1))
    registry.create_tenant("other")
    registry.add_version("small", "a", artifact_bytes(seed=1))
    registry.add_version("small", "a", artifact_bytes(seed=1))  # shared blob, but each version counts
    expected = rf"expected at most {2 * size} artifact bytes in all, got {3 * size} \({2 * size} stored \+ {size}"
    with pytest.raises(LimitExceeded, match=expected):
        registry.add_version("small", "b", artifact_bytes(seed=2))
    assert row_counts(registry) == {"tasks": 1, "versions": 2} and len(blob_files(data_dir)) == 1
    registry.add_version("other", "b", artifact_bytes(seed=2))  # another tenant's quota is its own


def test_versions_restart_at_one_after_delete_and_recreate(registry, tenant):
    registry.add_version(tenant, "t", artifact_bytes(seed=1))
    registry.add_version(tenant, "t", artifact_bytes(seed=2))
    registry.delete_task(tenant, "t")
    again = registry.add_version(tenant, "t", artifact_bytes(seed=3))
    assert again.version == 1 and [v.version for v in registry.get_task(tenant, "t").versions] == [1]


def test_state_persists_across_reopen(open_registry):
    registry = open_registry()
    _, key = registry.create_tenant("acme")
    for seed in range(3):
        registry.add_version("acme", "t", artifact_bytes(seed=seed))
    registry.set_route("acme", "t", Route(weights={2: 0.25, 3: 0.75}))
    before = registry.list_tasks("acme")
    registry.close()
    reopened = open_registry()
    assert reopened.tenant_for_key(key).name == "acme"
    assert reopened.list_tasks("acme") == before
    assert reopened.read_artifact_bytes(before[0].versions[0].sha256) == artifact_bytes(seed=0)
    assert reopened.add_version("acme", "t", artifact_bytes(seed=9)).version == 4


def test_reopen_collects_orphan_blobs_and_temp_files(open_registry, data_dir):
    registry = open_registry()
    registry.create_tenant("acme")
    kept = registry.add_version("acme", "t", artifact_bytes(seed=1))
    registry.close()
    # What a kill between the blob rename and the commit, or during the temp write, leaves behind:
    orphan = sha256_hex(b"orphan")
    (data_dir / "blobs" / orphan[:2]).mkdir(exist_ok=True)
    (data_dir / "blobs" / orphan[:2] / orphan).write_bytes(b"orphan")
    (data_dir / "blobs" / kept.sha256[:2] / f".{orphan}.1234.tmp").write_bytes(b"half")
    reopened = open_registry()
    assert blob_files(data_dir) == {kept.sha256} and temp_files(data_dir) == []
    assert reopened.read_artifact_bytes(kept.sha256) == artifact_bytes(seed=1)


def test_a_failed_commit_removes_the_new_blob(registry, tenant, data_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(queries, "insert_version", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        registry.add_version(tenant, "t", artifact_bytes(seed=1))
    assert row_counts(registry) == {"tasks": 0, "versions": 0}
    assert blob_files(data_dir) == set() and temp_files(data_dir) == []


def test_upload_rewrites_its_blob_if_a_concurrent_sweep_removed_it(registry, tenant, data_dir, monkeypatch):
    # Another process opening the registry collects unreferenced blobs: ours, between rename and commit.
    original_put = FileBlobStore.put

    def put_then_swept(self, sha256, data):
        original_put(self, sha256, data)
        self.remove(sha256)

    monkeypatch.setattr(FileBlobStore, "put", put_then_swept)
    record = registry.add_version(tenant, "t", artifact_bytes(seed=1))
    assert registry.read_artifact_bytes(record.sha256) == artifact_bytes(seed=1)


def test_collect_garbage_counts_what_it_removed(registry, tenant, data_dir):
    record = registry.add_version(tenant, "t", artifact_bytes(seed=1))
    assert registry.collect_garbage() == 0
    (data_dir / "blobs" / record.sha256[:2] / f".{record.sha256}.beef.tmp").write_bytes(b"x")
    assert registry.collect_garbage() == 1 and blob_files(data_dir) == {record.sha256}
