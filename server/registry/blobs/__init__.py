"""Blob stores: where artifact bytes live, named by their sha256, behind one interface chosen by URL.

Owns the contract every store keeps (`BlobStore`), the errors callers map to answers (`BlobMissing`:
404-like, `BlobCorrupt`: damage, `BlobStoreUnavailable`: 503 with Retry-After), the name check that runs
before a name reaches a path or a key, and `open_blob_store`, which turns a URL into a store:

- `file:///abs/path` or a plain path: `FileBlobStore` (server.registry.blobs.local), one machine's disk;
- `s3://bucket[/key-prefix]`: `S3BlobStore` (server.registry.blobs.s3), shared by replicas, optionally
  behind `CachingBlobStore` (server.registry.blobs.cache), a bounded local read-through copy.

Stores know nothing about which blobs are referenced: the registry decides what to remove, using
`list_blobs`' modification times for a grace period so it never removes a blob a concurrent upload has
written but not yet committed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

SHA256_RE = re.compile(r"[0-9a-f]{64}")


class BlobMissing(LookupError):
    """No blob with that sha256 is stored (or the name is not a sha256 at all)."""


class BlobCorrupt(RuntimeError):
    """A stored blob's bytes no longer hash to its name (disk damage or tampering)."""


class BlobStoreUnavailable(RuntimeError):
    """The store cannot be reached, timed out or answered 5xx: worth retrying later (the API answers 503)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_name(sha256: object) -> str:
    """Returns `sha256` if it is 64 lowercase hex digits; BlobMissing otherwise (no '../' reaches a path or key)."""
    if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
        raise BlobMissing(f"expected a sha256 of 64 lowercase hex digits, got {sha256!r:.80}")
    return sha256


def check_content(sha256: str, data: bytes) -> None:
    """ValueError unless `data` hashes to `sha256`: a store must never hold bytes under a wrong name."""
    actual = sha256_hex(data)
    if actual != check_name(sha256):
        raise ValueError(f"blob put: expected data hashing to {sha256}, got data hashing to {actual}")


def verified(sha256: str, data: bytes, where: str) -> bytes:
    """`data` as read from `where`, if it hashes to its name; BlobCorrupt otherwise (every read checks)."""
    actual = sha256_hex(data)
    if actual != sha256:
        raise BlobCorrupt(f"blob {where}: expected bytes hashing to {sha256}, got {actual} (damage or tampering?)")
    return data


@runtime_checkable
class BlobStore(Protocol):
    """What the registry needs of a store. Every method blocks and is safe to call from several threads."""

    def describe(self) -> str:
        """Where the blobs are, for logs and /v1/info (never credentials)."""

    def put(self, sha256: str, data: bytes) -> None:
        """Stores `data` under `sha256` (ValueError unless it is sha256_hex(data)); idempotent."""

    def ensure(self, sha256: str, data: bytes) -> None:
        """Makes sure the blob exists: a cheap existence check, and a write only if it is missing."""

    def read(self, sha256: str) -> bytes:
        """The blob's bytes, checked against the name on every read (BlobCorrupt); BlobMissing if absent."""

    def exists(self, sha256: str) -> bool: ...

    def remove(self, sha256: str) -> None:
        """Removes the blob; an absent one is fine."""

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        """Every complete blob's sha256 and last-modified time (unix seconds), for garbage collection."""

    def remove_temp_files(self, older_than_s: float) -> int:
        """Removes what interrupted writes left that is older than `older_than_s`; returns how many."""

    def ping(self) -> None:
        """BlobStoreUnavailable unless the store can be reached now."""

    def close(self) -> None: ...


def open_blob_store(url: str, *, cache_dir: Path | None = None, cache_bytes: int = 0) -> BlobStore:
    """The store `url` names; an S3 store is wrapped in a read-through cache when cache_dir and cache_bytes > 0."""
    # The implementations are imported here, not at the top: boto3 costs a few hundred ms to import and a
    # file store never needs it.
    if not isinstance(url, str) or not url:
        raise ValueError(f"blob URL: expected file:///path or s3://bucket[/prefix], got {url!r}")
    if "://" not in url:
        from server.registry.blobs.local import FileBlobStore

        return FileBlobStore(Path(url))
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"blob URL: expected no query or fragment, got {url!r}")
    if parts.scheme == "file":
        return _open_file_store(url, parts.netloc, unquote(parts.path))
    if parts.scheme == "s3":
        return _open_s3_store(url, parts.netloc, parts.path, cache_dir, cache_bytes)
    raise ValueError(f"blob URL: expected file:///path or s3://bucket[/prefix], got {url!r}")


def _open_file_store(url: str, host: str, path: str) -> BlobStore:
    from server.registry.blobs.local import FileBlobStore

    # file://data/blobs would silently mean host "data"; only the local host makes sense for a disk store.
    if host not in ("", "localhost") or not path.startswith("/"):
        raise ValueError(f"blob URL: expected file:///absolute/path (three slashes), got {url!r}")
    return FileBlobStore(Path(path))


def _open_s3_store(url: str, bucket: str, path: str, cache_dir: Path | None, cache_bytes: int) -> BlobStore:
    from server.registry.blobs.s3 import S3BlobStore

    if not bucket:
        raise ValueError(f"blob URL: expected s3://bucket[/prefix] with a bucket name, got {url!r}")
    store: BlobStore = S3BlobStore(bucket, path.strip("/"))
    if cache_dir is not None and cache_bytes > 0:
        from server.registry.blobs.cache import CachingBlobStore

        store = CachingBlobStore(store, Path(cache_dir), cache_bytes)
    return store
