"""The blob store on local disk: `root/ab/abcdef...`, named by the sha256 of the bytes.

Owns writing blobs atomically and durably, reading them back (checked against their name), listing and
removing them, and cleaning up what interrupted writes leave. The layout is the one data dirs have always
had, so existing data keeps working.

Crash safety: a blob only ever appears under its final name complete, because it is written to a temp
file in the same directory, fsynced, renamed with os.replace (atomic on POSIX) and the directory is
fsynced so the rename itself survives a power cut. A crash leaves at worst a `.<sha256>.<random>.tmp`
file or an unreferenced blob: `remove_temp_files` removes the first, the registry's garbage collection
the second. Temp files are only removed once older than a grace period, because on a shared data dir
another process may be in the middle of writing one.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from server.registry.blobs import (
    SHA256_RE,
    BlobMissing,
    BlobStoreUnavailable,
    check_content,
    check_name,
    verified,
)

TEMP_SUFFIX = ".tmp"


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return self.root.resolve().as_uri()

    def path_for(self, sha256: str) -> Path:
        sha256 = check_name(sha256)
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put(self, sha256: str, data: bytes) -> None:
        check_content(sha256, data)
        self._write_if_missing(self.path_for(sha256), data)

    def ensure(self, sha256: str, data: bytes) -> None:
        path = self.path_for(sha256)
        if self._complete(path, data):
            return
        # Hashing only on the write path keeps the common case (the blob is there) cheap under the lock.
        check_content(sha256, data)
        self._write_if_missing(path, data)

    def read(self, sha256: str) -> bytes:
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"no blob {sha256} in {self.root}") from None
        return verified(sha256, data, str(path))

    def remove(self, sha256: str) -> None:
        path = self.path_for(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        for shard in self._shards():
            for entry in _entries(shard):
                if not (SHA256_RE.fullmatch(entry.name) and entry.name.startswith(shard.name)):
                    continue  # temp files and strays are not blobs
                try:
                    yield entry.name, entry.stat().st_mtime
                except FileNotFoundError:
                    continue  # removed by another process since the listing

    def remove_temp_files(self, older_than_s: float) -> int:
        """Removes temp files last modified more than `older_than_s` ago; returns how many it removed."""
        cutoff = time.time() - older_than_s
        removed = 0
        for shard in self._shards():
            for entry in _entries(shard):
                if not entry.name.endswith(TEMP_SUFFIX):
                    continue
                try:
                    if entry.stat().st_mtime <= cutoff:
                        entry.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue  # renamed into place or removed by its writer meanwhile
        return removed

    def ping(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.R_OK | os.X_OK):
            raise BlobStoreUnavailable(f"blob store {self.describe()}: expected a readable directory, got none")

    def close(self) -> None:
        pass

    def _complete(self, path: Path, data: bytes) -> bool:
        # Complete by construction (atomic rename); the size check is a cheap guard against damage.
        try:
            return path.stat().st_size == len(data)
        except FileNotFoundError:
            return False

    def _write_if_missing(self, path: Path, data: bytes) -> None:
        if self._complete(path, data):
            return
        new_dir = not path.parent.is_dir()
        path.parent.mkdir(exist_ok=True)
        if new_dir:
            _fsync_dir(self.root)  # the shard directory's own entry must be durable too
        # A concurrent cleanup (another process) may delete our temp file before the rename; writing
        # again is always safe because the content is fixed by the name.
        for attempt in range(3):
            try:
                self._write_atomically(path, data)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def _write_atomically(self, path: Path, data: bytes) -> None:
        temp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def _shards(self) -> Iterator[Path]:
        return (p for p in _entries(self.root) if len(p.name) == 2 and p.is_dir())


def _entries(directory: Path) -> list[Path]:
    # Listed eagerly so a directory removed mid-walk by another process is just empty.
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
