"""The file blob store's own behaviour: its data-dir layout, the cleanup of old temp files, its ping, and
opening one from a file:// URL or a plain path."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from server.registry.blobs import BlobStoreUnavailable, open_blob_store
from server.registry.blobs.local import FileBlobStore
from tests.registry.support import blob

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


# Choosing a store by URL.


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
