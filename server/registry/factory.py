"""Opens the registry a server's settings describe: the database URL and the blob URL, each defaulting
to the embedded layout under the data dir (SPEC section 4)."""

from __future__ import annotations

from pathlib import Path

from server.artifact import BackboneShape
from server.registry.base import TenantLimits
from server.registry.blobs import open_blob_store
from server.registry.database import Database, sqlite_url
from server.registry.sql import BLOBS_DIRNAME, DB_FILENAME, SqlRegistry

BLOB_CACHE_DIRNAME = "blob-cache"


def default_database_url(data_dir: Path) -> str:
    return sqlite_url(Path(data_dir) / DB_FILENAME)


def default_blob_url(data_dir: Path) -> str:
    return f"file://{Path(data_dir).resolve() / BLOBS_DIRNAME}"


def open_registry(
    *,
    data_dir: Path,
    backbone: BackboneShape,
    default_limits: TenantLimits,
    database_url: str | None = None,
    blob_url: str | None = None,
    blob_cache_dir: Path | None = None,
    blob_cache_bytes: int = 0,
    migrate: bool = True,
    gc_grace_s: float = 0.0,
) -> SqlRegistry:
    data_dir = Path(data_dir)
    if database_url is None or blob_url is None or blob_cache_dir is None:
        data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(database_url or default_database_url(data_dir))
    blobs = open_blob_store(
        blob_url or default_blob_url(data_dir),
        cache_dir=blob_cache_dir or data_dir / BLOB_CACHE_DIRNAME,
        cache_bytes=blob_cache_bytes,
    )
    try:
        return SqlRegistry(database, blobs, backbone, default_limits, migrate=migrate, gc_grace_s=gc_grace_s)
    except BaseException:
        database.close()
        blobs.close()
        raise
