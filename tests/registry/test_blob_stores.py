"""The blob store contract, run against every store (file, S3 on a real moto server, cached S3), plus URL
parsing, the file store's temp-file cleanup and the read-through cache's bound and outage behaviour."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

from server.registry.blobs import (
    BlobCorrupt,
    BlobMissing,
    BlobStore,
    BlobStoreUnavailable,
    open_blob_store,
    sha256_hex,
)
from server.registry.blobs.cache import CachingBlobStore
from server.registry.blobs.local import FileBlobStore
from server.registry.blobs.s3 import S3BlobStore
from tests.s3_server import client_for

KINDS = ["file", "s3", "cached-s3"]
BAD_NAMES = ["../../etc/passwd", "AB" * 32, "ab" * 31, "", 1234, "ab" * 32 + "\n"]


def blob(n: int, size: int = 100) -> tuple[str, bytes]:
    data = bytes([n % 256]) * size
    return sha256_hex(data), data


def bucket_of(url: str) -> str:
    return url.removeprefix("s3://").partition("/")[0]


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


@pytest.fixture
def cached(s3_url, tmp_path) -> CachingBlobStore:
    opened = open_blob_store(s3_url, cache_dir=tmp_path / "cache", cache_bytes=300)
    yield opened
    opened.close()


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


# The file store's own: layout and temp files.


def test_file_store_keeps_the_data_dir_layout(tmp_path):
    store = FileBlobStore(tmp_path / "blobs")
    sha, data = blob(10)
    store.put(sha, data)
    assert (tmp_path / "blobs" / sha[:2] / sha).read_bytes() == data
    assert store.remove_temp_files(0) == 0


def test_file_store_removes_only_old_temp_files(tmp_path):
    store = FileBlobStore(tmp_path / "blobs")
    sha, data = blob(11)
    store.put(sha, data)
    old, fresh = (tmp_path / "blobs" / sha[:2] / f".{sha}.{tag}.tmp" for tag in ("0001", "0002"))
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert store.remove_temp_files(older_than_s=600) == 1
    assert not old.exists() and fresh.exists() and [s for s, _ in store.list_blobs()] == [sha]
    assert store.remove_temp_files(older_than_s=0) == 1 and not fresh.exists()


def test_file_store_ping_wants_its_directory(tmp_path):
    store = FileBlobStore(tmp_path / "blobs")
    store.ping()
    (tmp_path / "blobs").rmdir()
    with pytest.raises(BlobStoreUnavailable, match="expected a readable directory"):
        store.ping()


def test_the_s3_store_has_no_temp_files(s3_url):
    assert open_blob_store(s3_url).remove_temp_files(0) == 0


# Choosing a store by URL.


@pytest.fixture
def aws_env(monkeypatch):
    """No AWS configuration but fake credentials: a client can be built, and nothing leaks in from the host."""
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def test_file_urls_and_plain_paths(tmp_path):
    urls = (f"file://{tmp_path}/a", f"file://localhost{tmp_path}/b", str(tmp_path / "c"))
    urls += (f"file://{tmp_path}/with%20space",)
    for url in urls:
        store = open_blob_store(url)
        assert isinstance(store, FileBlobStore) and store.root.is_dir()
    assert store.root == tmp_path / "with space"
    relative = open_blob_store("data/blobs-test-relative")
    try:
        assert isinstance(relative, FileBlobStore) and relative.root == Path("data/blobs-test-relative")
    finally:
        relative.root.rmdir()
    with pytest.raises(ValueError, match="expected file:///absolute/path"):
        open_blob_store("file://data/blobs")


def test_s3_urls(aws_env, tmp_path):
    sha, _ = blob(12)
    with_prefix = open_blob_store("s3://bucket/some/prefix/")
    assert isinstance(with_prefix, S3BlobStore)
    assert (with_prefix.bucket, with_prefix.key_prefix) == ("bucket", "some/prefix")
    assert with_prefix.key_for(sha) == f"some/prefix/{sha[:2]}/{sha}"
    for url in ("s3://bucket", "s3://bucket/"):
        bare = open_blob_store(url)
        assert bare.key_prefix == "" and bare.key_for(sha) == f"{sha[:2]}/{sha}"
    assert isinstance(open_blob_store("s3://bucket", cache_dir=tmp_path, cache_bytes=0), S3BlobStore)
    cached = open_blob_store("s3://bucket/p", cache_dir=tmp_path / "cache", cache_bytes=1000)
    assert isinstance(cached, CachingBlobStore) and isinstance(cached.inner, S3BlobStore)


def test_s3_client_configuration(aws_env):
    meta = open_blob_store("s3://bucket")._client.meta
    assert meta.region_name == "us-east-1"  # when nothing configures one
    assert meta.config.request_checksum_calculation == "when_required"
    assert meta.config.response_checksum_validation == "when_required"
    # A store that does not answer costs every attempt its connect or read timeout: within SPEC 4's 3 s
    # for a write, with room for the rest of the upload.
    worst_s = meta.config.retries["total_max_attempts"] * max(meta.config.connect_timeout, meta.config.read_timeout)
    assert worst_s <= 2.5, meta.config.retries
    assert meta.config.s3["addressing_style"] == "path"


@pytest.mark.parametrize("url", ["http://host/x", "gs://bucket/x", "s3:///prefix-without-bucket", "", "s3://b/p?x=1"])
def test_other_urls_are_refused(aws_env, url):
    with pytest.raises(ValueError, match="blob URL: expected"):
        open_blob_store(url)


# The read-through cache.


def test_the_cache_is_bounded_in_bytes_and_evicts_the_least_recently_read(cached):
    (a, da), (b, db), (c, dc), (d, dd) = (blob(n) for n in range(20, 24))
    for sha, data in ((a, da), (b, db), (c, dc)):
        cached.put(sha, data)
    assert cached.cached() == [a, b, c] and cached.cached_bytes() == 300
    assert cached.read(a) == da  # now b is the least recently read
    cached.put(d, dd)
    assert cached.cached() == [c, a, d] and sorted(os.listdir(cached.cache_dir)) == sorted([c, a, d])
    assert cached.read(b) == db  # from S3, and kept: c goes
    assert cached.cached() == [a, d, b] and cached.cached_bytes() <= 300
    big, big_data = blob(24, size=301)
    cached.put(big, big_data)
    assert cached.read(big) == big_data and big not in cached.cached()


def test_the_cache_order_survives_a_restart_and_is_shared_between_processes(cached, s3_url, tmp_path):
    (a, da), (b, db), (c, dc) = (blob(n) for n in range(30, 33))
    cached.put(a, da)
    cached.put(b, db)
    cached.read(a)
    other = open_blob_store(s3_url, cache_dir=cached.cache_dir, cache_bytes=300)  # another process, same dir
    assert other.cached() == [b, a]
    other.put(c, dc)
    other.put(*blob(33))  # the bound holds for the directory: b, least recently read by anyone, goes
    assert not (cached.cache_dir / b).exists() and other.cached() == [a, c, blob(33)[0]]
    assert cached.read(b) == db  # its copy vanished under it: read again from S3


def test_a_damaged_local_copy_is_dropped_and_read_again(cached, s3_client):
    sha, data = blob(40)
    cached.put(sha, data)
    (cached.cache_dir / sha).write_bytes(b"!" * len(data))
    assert cached.read(sha) == data and (cached.cache_dir / sha).read_bytes() == data


def test_remove_removes_both_copies(cached):
    sha, data = blob(41)
    cached.put(sha, data)
    cached.remove(sha)
    assert not cached.exists(sha) and not (cached.cache_dir / sha).exists() and cached.cached() == []


def test_an_outage_serves_cached_blobs_and_fails_the_rest_fast(cached, s3_url, s3_server, s3_client):
    kept, kept_data = blob(50)
    cached.put(kept, kept_data)
    uncached, uncached_data = blob(51)
    s3_client.put_object(Bucket=bucket_of(s3_url), Key=cached.inner.key_for(uncached), Body=uncached_data)
    plain = open_blob_store(s3_url)
    s3_server.stop()

    assert cached.read(kept) == kept_data
    with pytest.raises(BlobStoreUnavailable, match=re.escape(f"blob store {s3_url} at {s3_server.endpoint}")) as caught:
        cached.read(uncached)
    assert "testing" not in str(caught.value)  # the fake credentials' key and secret
    new, new_data = blob(52)
    for store in (cached, plain):
        started = time.monotonic()
        with pytest.raises(BlobStoreUnavailable, match="expected an answer writing"):
            store.put(new, new_data)
        assert time.monotonic() - started < 3.0, "a write to a stopped store must answer within 3 s"
        started = time.monotonic()
        with pytest.raises(BlobStoreUnavailable):
            store.ensure(new, new_data)
        assert time.monotonic() - started < 3.0
    assert not (cached.cache_dir / new).exists() and new not in cached.cached()


def test_ping_fails_while_the_store_is_down_and_passes_after_its_return(cached, s3_url, s3_server):
    cached.ping()
    s3_server.stop()
    with pytest.raises(BlobStoreUnavailable, match="expected an answer checking the bucket, got EndpointConnection"):
        cached.ping()
    s3_server.start()  # moto forgets everything: the bucket must be made again
    with pytest.raises(BlobStoreUnavailable, match=f"expected bucket '{bucket_of(s3_url)}' to exist, got none: create"):
        cached.ping()
    client_for(s3_server.endpoint).create_bucket(Bucket=bucket_of(s3_url))
    cached.ping()
