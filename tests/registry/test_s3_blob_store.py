"""The S3 blob store's own behaviour (on a real moto server where it needs one): s3:// URLs, the client's
configuration and the URLs refused, no temp files, and the read-through cache in front of it: its bound
in bytes, its order shared between processes, damaged copies, and outages of the store."""

from __future__ import annotations

import os
import re
import time

import pytest

from server.registry.blobs import BlobStoreUnavailable, open_blob_store
from server.registry.blobs.cache import CachingBlobStore
from server.registry.blobs.s3 import S3BlobStore
from tests.registry.support import blob
from tests.s3_server import client_for


def bucket_of(url: str) -> str:
    return url.removeprefix("s3://").partition("/")[0]


@pytest.fixture
def cached(s3_url, tmp_path) -> CachingBlobStore:
    opened = open_blob_store(s3_url, cache_dir=tmp_path / "cache", cache_bytes=300)
    yield opened
    opened.close()


# The S3 store's own: no temp files.


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
