"""SPEC 4 with the registry's dependencies hung for real (SIGSTOP: connections stay open, nothing answers),
at the registry's level: a call answers RegistryUnavailable / BlobStoreUnavailable within its bound, the
next ones at once (the circuit is open), a copy in the blob cache still answers, a refused upload leaves
no version behind, and within 5 s of SIGCONT the health probe (every second in a server) finds the
dependency back and everything works again, change notifications included.
The replicas' end-to-end version is tests/replicas/test_hangs.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.processes import wait_until
from server.registry import Change, NotFound, RegistryUnavailable
from server.registry.blobs import BlobStoreUnavailable, open_blob_store
from tests.registry.support import artifact_bytes, sha256_hex

pytestmark = pytest.mark.slow

WRITE_ANSWER_WITHIN_S = 3.0  # SPEC 4's promise for a write
WHOLE_WITHIN_S = 5.0  # SPEC 4's promise after the dependency returns
AT_ONCE_S = 1.0  # with the circuit open nothing waits on the dependency (generous, for a loaded machine)


def timed_failure(expected: type[Exception], call) -> tuple[Exception, float]:
    started = time.monotonic()
    with pytest.raises(expected) as caught:
        call()
    return caught.value, time.monotonic() - started


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_hung_database(open_registry, postgres_server):
    writer, reader = open_registry(), open_registry()  # two replicas: the reader hears the writer by NOTIFY
    heard: list[Change] = []
    connected = threading.Event()
    reader.subscribe(heard.append, connected.set)
    assert connected.wait(5), "the listener never connected"
    writer.create_tenant("acme")
    writer.add_version("acme", "warm", artifact_bytes(seed=1))
    with postgres_server.hung():
        error, took = timed_failure(RegistryUnavailable, lambda: writer.add_version("acme", "t", artifact_bytes(seed=2)))
        assert took < WRITE_ANSWER_WITHIN_S and "did not answer within" in str(error), (took, error)
        with ThreadPoolExecutor(8) as pool:  # a crowd of requests does not pile up on the hung server
            crowd = list(pool.map(lambda _: timed_failure(RegistryUnavailable, lambda: writer.get_task("acme", "warm")), range(8)))
        assert all(took < AT_ONCE_S for _, took in crowd), [took for _, took in crowd]
        assert "calls fail at once" in str(crowd[0][0])
        started = time.monotonic()
        assert writer.health()["database"] is False  # the probe asks even so, within its bound
        assert time.monotonic() - started < WRITE_ANSWER_WITHIN_S
    resumed = time.monotonic()
    wait_until(lambda: writer.health()["database"] and reader.health()["database"], WHOLE_WITHIN_S,
               "both registries to see the database again")
    with pytest.raises(NotFound):
        writer.get_task("acme", "t")  # the refused upload left nothing behind
    assert writer.add_version("acme", "t", artifact_bytes(seed=2)).version == 1
    wait_until(lambda: Change("task", "acme", "t") in heard, WHOLE_WITHIN_S, "the listener to hear a change again")
    assert time.monotonic() - resumed < WHOLE_WITHIN_S + 1.0


def blob(n: int) -> tuple[str, bytes]:
    data = bytes([n]) * 1000
    return sha256_hex(data), data


def test_a_hung_blob_store(s3_server, s3_url, s3_client, tmp_path):
    store = open_blob_store(s3_url, cache_dir=tmp_path / "cache", cache_bytes=10**6)
    (kept, kept_data), (remote, remote_data), (new, new_data) = blob(1), blob(2), blob(3)
    store.put(kept, kept_data)  # so the cache holds a copy
    s3_client.put_object(Bucket=store.inner.bucket, Key=store.inner.key_for(remote), Body=remote_data)  # S3 only
    try:
        with s3_server.hung():
            error, took = timed_failure(BlobStoreUnavailable, lambda: store.put(new, new_data))
            assert took < WRITE_ANSWER_WITHIN_S and "ReadTimeout" in str(error), (took, error)
            assert store.read(kept) == kept_data  # the cached copy answers
            error, took = timed_failure(BlobStoreUnavailable, lambda: store.read(remote))
            assert took < AT_ONCE_S and "calls fail at once" in str(error), (took, error)
            _, took = timed_failure(BlobStoreUnavailable, store.ping)  # the probe asks, within its bound
            assert took < WRITE_ANSWER_WITHIN_S, took
        resumed = time.monotonic()
        wait_until(lambda: _answers(store), WHOLE_WITHIN_S, "the blob store to answer again")
        store.put(new, new_data)
        assert store.read(remote) == remote_data and store.read(new) == new_data
        assert time.monotonic() - resumed < WHOLE_WITHIN_S + 1.0
    finally:
        store.close()


def _answers(store) -> bool:
    try:
        store.ping()
        return True
    except BlobStoreUnavailable:
        return False
