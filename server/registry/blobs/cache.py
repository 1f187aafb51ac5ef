"""A bounded read-through disk cache in front of a remote blob store.

Owns the local copies: `cache_dir/<sha256>`, written atomically (temp file + rename in the cache dir),
checked against their name on every read like any blob, and evicted least recently read first so the
directory holds at most `max_bytes`. Reads served from here need nothing from the remote store, so a
restart during an S3 outage, or an outage itself, does not stop the tasks this replica has already read.
Writes go to the remote store first: if it fails nothing is cached and the error propagates, so a
replica never answers from a copy of a blob the shared store does not hold.

Why a byte bound: artifacts are a few MB each and a tenant may upload thousands; the cache must not
fill the disk the process runs on. A blob larger than the whole bound is served but never cached.

Recency is a file's mtime, touched on every read with the fine-grained clock, and mirrored in memory so
a hit never scans the directory. Several processes may share a cache dir: a miss (already paying for a
remote read) re-reads the directory before evicting, so the bound holds for the directory and not just
for one process's view of it, and every file operation tolerates another process having removed the
file first. No fsync: a copy torn by a power cut fails its hash check and is fetched again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from server.registry.blobs import SHA256_RE, BlobStore, check_name, sha256_hex

TEMP_SUFFIX = ".tmp"
# A temp file older than this belongs to a writer that died (a write of a cached blob takes well under it).
STALE_TEMP_S = 600.0


class CachingBlobStore:
    def __init__(self, inner: BlobStore, cache_dir: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"blob cache: expected max_bytes > 0, got {max_bytes}")
        self.inner = inner
        self.cache_dir = Path(cache_dir)
        self.max_bytes = max_bytes
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently read first
        self._remove_own_temp_files(STALE_TEMP_S)
        with self._lock:
            self._resync()
            self._evict()

    def describe(self) -> str:
        return f"{self.inner.describe()} (cached in {self.cache_dir}, at most {self.max_bytes} bytes)"

    def cached(self) -> list[str]:
        """The sha256 of every local copy this process knows of, least recently read first."""
        with self._lock:
            return list(self._sizes)

    def cached_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def put(self, sha256: str, data: bytes) -> None:
        self.inner.put(sha256, data)
        self._keep(sha256, data)

    def ensure(self, sha256: str, data: bytes) -> None:
        self.inner.ensure(sha256, data)
        if not self._path(sha256).is_file():
            self._keep(sha256, data)

    def read(self, sha256: str) -> bytes:
        data = self._read_local(check_name(sha256))
        if data is None:
            data = self.inner.read(sha256)
            self._keep(sha256, data)
        return data

    def exists(self, sha256: str) -> bool:
        return self.inner.exists(sha256)

    def remove(self, sha256: str) -> None:
        self.inner.remove(sha256)  # first: if it fails, the blob is still there and so may its copy be
        self._drop(check_name(sha256))

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        return self.inner.list_blobs()

    def remove_temp_files(self, older_than_s: float) -> int:
        return self.inner.remove_temp_files(older_than_s) + self._remove_own_temp_files(older_than_s)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()

    def _path(self, sha256: str) -> Path:
        return self.cache_dir / sha256

    def _read_local(self, sha256: str) -> bytes | None:
        """The local copy's bytes if there is a sound one (touched as just read); None otherwise."""
        path = self._path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._forget(sha256)  # evicted by another process sharing the directory
            return None
        if sha256_hex(data) != sha256:
            self._drop(sha256)  # damaged: the remote store has the sound bytes
            return None
        _touch(path)
        with self._lock:
            self._sizes[sha256] = len(data)
            self._sizes.move_to_end(sha256)
        return data

    def _keep(self, sha256: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        path = self._path(sha256)
        temp = self.cache_dir / f".{sha256}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            temp.write_bytes(data)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _touch(path)
        with self._lock:
            self._resync()
            self._sizes[sha256] = len(data)
            self._sizes.move_to_end(sha256)
            self._evict()

    def _resync(self) -> None:
        """Rebuilds the in-memory order from the directory (other processes' copies included); under the lock."""
        found = []
        for entry in _scan(self.cache_dir):
            if SHA256_RE.fullmatch(entry.name):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                found.append((stat.st_mtime_ns, entry.name, stat.st_size))
        found.sort()
        self._sizes = OrderedDict((name, size) for _, name, size in found)

    def _evict(self) -> None:
        """Removes least recently read copies until the bound holds; under the lock."""
        total = sum(self._sizes.values())
        while total > self.max_bytes and self._sizes:
            sha256, size = self._sizes.popitem(last=False)
            self._path(sha256).unlink(missing_ok=True)
            total -= size

    def _forget(self, sha256: str) -> None:
        with self._lock:
            self._sizes.pop(sha256, None)

    def _drop(self, sha256: str) -> None:
        self._forget(sha256)
        self._path(sha256).unlink(missing_ok=True)

    def _remove_own_temp_files(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in _scan(self.cache_dir):
            try:
                if entry.name.endswith(TEMP_SUFFIX) and entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _scan(directory: Path) -> list[os.DirEntry]:
    with os.scandir(directory) as entries:
        return list(entries)


def _touch(path: Path) -> None:
    # An explicit time: the kernel stamps files from a coarse clock (a few ms), too coarse to order
    # reads that follow each other closely.
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):
        os.utime(path, ns=(now, now))
