"""The content-addressed artifact store on local disk: `root/ab/abcdef...` named by the sha256 of the bytes.

Owns writing blobs atomically and durably, reading them back (checked against their name), and removing
them. It knows nothing about which blobs are referenced: the registry decides what to remove.

Crash safety: a blob only ever appears under its final name complete, because it is written to a temp
file in the same directory, fsynced, renamed with os.replace (atomic on POSIX) and the directory is
fsynced so the rename itself survives a power cut. A crash leaves at worst a `*.tmp` file or an
unreferenced blob, both of which `sweep` removes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

SHA256_RE = re.compile(r"[0-9a-f]{64}")
TEMP_SUFFIX = ".tmp"


class BlobMissing(LookupError):
    """No blob with that sha256 is stored."""


class BlobCorrupt(RuntimeError):
    """A stored blob's bytes no longer hash to its name (disk damage or tampering)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        # The name reaches a file path, so anything but 64 lowercase hex digits is refused (no '../').
        if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
            raise BlobMissing(f"expected a sha256 of 64 lowercase hex digits, got {sha256!r:.80}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put(self, data: bytes) -> str:
        """Stores `data` (once: identical bytes share one blob) and returns its sha256."""
        sha256 = sha256_hex(data)
        self.ensure(sha256, data)
        return sha256

    def ensure(self, sha256: str, data: bytes) -> None:
        """Makes sure the blob exists, writing `data` (whose hash must be `sha256`) if it does not."""
        path = self.path_for(sha256)
        if path.is_file() and path.stat().st_size == len(data):
            return  # complete by construction (atomic rename); the size check is a cheap guard against damage
        new_dir = not path.parent.is_dir()
        path.parent.mkdir(exist_ok=True)
        if new_dir:
            _fsync_dir(self.root)  # the shard directory's own entry must be durable too
        # A concurrent sweep (another process opening the registry) may delete our temp file before the
        # rename; writing again is always safe because the content is fixed by the name.
        for attempt in range(3):
            try:
                self._write_atomically(path, data)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def read(self, sha256: str) -> bytes:
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"no blob {sha256} in {self.root}") from None
        actual = sha256_hex(data)
        if actual != sha256:
            raise BlobCorrupt(f"blob {path}: expected bytes hashing to {sha256}, got {actual} (disk damage?)")
        return data

    def remove(self, sha256: str) -> None:
        path = self.path_for(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def stored(self) -> Iterator[str]:
        """Every complete blob's sha256 (temp files left out)."""
        for shard in self._shards():
            for entry in shard.iterdir():
                if SHA256_RE.fullmatch(entry.name) and entry.name.startswith(shard.name):
                    yield entry.name

    def temp_files(self) -> Iterator[Path]:
        for shard in self._shards():
            yield from (p for p in shard.iterdir() if p.name.endswith(TEMP_SUFFIX))

    def _shards(self) -> Iterator[Path]:
        return (p for p in self.root.iterdir() if p.is_dir() and len(p.name) == 2)

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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
