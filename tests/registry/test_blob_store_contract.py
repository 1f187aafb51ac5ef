"""The blob store contract, run against every store: the file store, S3 on a real moto server, and S3
behind the read-through cache. Put, read, exists, list, remove and ensure; names checked as sha256s;
every read checked against its name; strays skipped by the listing; concurrent use."""

from __future__ import annotations

import threading
import time

import pytest

from server.registry.blobs import (
    BlobCorrupt,
    BlobMissing,
    BlobStore,
    open_blob_store,
)
from server.registry.blobs.cache import CachingBlobStore
from server.registry.blobs.s3 import S3BlobStore
from tests.registry.support import blob

KINDS = ["file", "s3", "cached-s3"]
BAD_NAMES = ["../../etc/passwd", "AB" * 32, "ab" * 31, "", 1234, "ab" * 32 + "\n"]


class Raw:
    """Direct access to what a store keeps, bypassing it: to damage objects or leave strays."""

    def __init__(self, kind: str, store: BlobStore, request) -> None:
        self.kind, self.store, self.request = kind, store, request

    def s3(self) -> S3BlobStore:
        return self.store.inner if isinstance(self.store, CachingBlobStore) else self.store

    def overwrite(self, sha256: str, data: bytes) -> None:
        if self.kind == "file":
            self.store.path_for(sha256).write_bytes(data)
            return
        client, s3 = self.request.getfixturevalue("s3_client"), self.s3()
        client.put_object(Bucket=s3.bucket, Key=s3.key_for(sha256), Body=data)
        if self.kind == "cached-s3":
            (self.store.cache_dir / sha256).write_bytes(data)

    def leave_strays(self) -> None:
        sha, _ = blob(99)
        if self.kind == "file":
            (self.store.root / "zz").mkdir()
            (self.store.root / "zz" / "not-a-blob").write_bytes(b"x")
            (self.store.root / sha[:2]).mkdir(exist_ok=True)
            (self.store.root / sha[:2] / f".{sha}.beef.tmp").write_bytes(b"half")
            return
        client, s3 = self.request.getfixturevalue("s3_client"), self.s3()
        for key in (f"{s3.key_prefix}/zz/not-a-blob", f"{s3.key_prefix}/00/{sha}", f"elsewhere/{sha[:2]}/{sha}"):
            client.put_object(Bucket=s3.bucket, Key=key, Body=b"x")


@pytest.fixture(params=KINDS)
def store(request, tmp_path):
    if request.param == "file":
        opened = open_blob_store(str(tmp_path / "blobs"))
    else:
        cache_bytes = 10_000 if request.param == "cached-s3" else 0
        url = request.getfixturevalue("s3_url")
        opened = open_blob_store(url, cache_dir=tmp_path / "cache", cache_bytes=cache_bytes)
    yield opened
    opened.close()


@pytest.fixture
def raw(store, request) -> Raw:
    return Raw(request.node.callspec.params["store"], store, request)


# The contract, for every store.


def test_put_read_exists_list_remove(store):
    (a, data_a), (b, data_b) = blob(1), blob(2)
    assert isinstance(store, BlobStore) and not store.exists(a)
    store.put(a, data_a)
    store.put(b, data_b)
    assert store.read(a) == data_a and store.read(b) == data_b and store.exists(a)
    listed = dict(store.list_blobs())
    assert set(listed) == {a, b} and all(abs(time.time() - t) < 120 for t in listed.values())
    store.remove(a)
    store.remove(a)  # absent is fine
    assert not store.exists(a) and store.exists(b) and [sha for sha, _ in store.list_blobs()] == [b]
    with pytest.raises(BlobMissing):
        store.read(a)


def test_put_is_idempotent_and_checks_the_name(store):
    sha, data = blob(3)
    store.put(sha, data)
    store.put(sha, data)
    assert [s for s, _ in store.list_blobs()] == [sha] and store.read(sha) == data
    other, _ = blob(4)
    with pytest.raises(ValueError, match=f"expected data hashing to {other}, got data hashing to {sha}"):
        store.put(other, data)
    assert not store.exists(other)


def test_every_read_checks_the_bytes_against_the_name(store, raw):
    sha, data = blob(5)
    store.put(sha, data)
    raw.overwrite(sha, data[:-1] + b"!")
    with pytest.raises(BlobCorrupt, match=f"expected bytes hashing to {sha}"):
        store.read(sha)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_other_than_a_sha256_are_refused(store, name):
    _, data = blob(6)
    calls = [store.read, store.exists, store.remove, lambda n: store.put(n, data), lambda n: store.ensure(n, data)]
    for call in calls:
        with pytest.raises(BlobMissing, match="expected a sha256 of 64 lowercase hex digits, got"):
            call(name)
    assert list(store.list_blobs()) == []


def test_ensure_writes_only_what_is_missing(store):
    sha, data = blob(7)
    store.ensure(sha, data)
    assert store.read(sha) == data
    # Present already: nothing is written (not even bytes that do not match the name are looked at).
    store.ensure(sha, b"\0" * len(data))
    assert store.read(sha) == data
    missing, _ = blob(8)
    with pytest.raises(ValueError, match=f"expected data hashing to {missing}"):
        store.ensure(missing, data)
    assert not store.exists(missing)


def test_listing_skips_what_is_not_a_blob(store, raw):
    sha, data = blob(9)
    store.put(sha, data)
    raw.leave_strays()
    assert [s for s, _ in store.list_blobs()] == [sha]


def test_ping_and_describe(store):
    store.ping()
    description = store.describe()
    assert "testing" not in description  # the fake credentials' key and secret
    assert description.startswith("file:///") or "some-prefix at http://127.0.0.1:" in description


def test_concurrent_puts_and_reads(store):
    blobs = [blob(n, size=1000 + n) for n in range(16)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for sha, data in blobs[offset:] + blobs[:offset]:
                store.put(sha, data)
                assert store.read(sha) == data
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i * 4,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and {s for s, _ in store.list_blobs()} == {s for s, _ in blobs}
