"""The one configuration object. Every setting comes from a `PREFIX_SERVER_*` environment variable or
a CLI flag; secrets are SecretStr so they never reach a log or a repr."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


def _default_backbone() -> str:
    from server.engine.backbone import default_backbone_dir  # lazily: the engine brings torch

    return str(default_backbone_dir())


def default_prefixes_dir() -> str:
    return str(Path(__file__).resolve().parent.parent / "prefixes")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PREFIX_SERVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    backbone: str = Field(default_factory=_default_backbone, description="a BERT model folder")
    data_dir: Path = Field(Path("data"), description="where the registry keeps its state")
    prefixes_dir: str = Field(default_factory=default_prefixes_dir, description="registered at start; '' for none")
    admin_token: SecretStr | None = None
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    torch_threads: int = Field(0, ge=0, description="0 keeps torch's default")
    engine_process: bool = Field(True, description="run the model in its own process (off: in the server's)")
    attention: Literal["auto", "triton", "varlen", "sdpa"] = Field(
        "auto", description="attention kernel on CUDA: auto picks the fastest available; the CPU always runs sdpa"
    )

    # Registry and blob store (SPEC section 4): replicas share one database and one blob store.
    database_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<DATA_DIR>/registry.sqlite3 (postgresql+psycopg://... for replicas)"
    )
    blob_url: str | None = Field(None, description="file:///path or s3://bucket[/prefix]; default file://<DATA_DIR>/blobs")
    blob_cache_dir: Path | None = Field(None, description="read-through disk cache of a remote blob store; default <DATA_DIR>/blob-cache")
    blob_cache_bytes: int = Field(1024**3, ge=0, description="bound of that cache; 0 turns it off")
    migrate: bool = Field(True, description="bring the database schema up to date at start (under a database lock)")
    registry_ttl_s: float = Field(5.0, gt=0, description="cached key and route lookups are re-read after this (the backstop of NOTIFY)")
    registry_notify: bool = Field(True, description="PostgreSQL: LISTEN for other replicas' writes and invalidate at once")
    blob_gc_grace_s: float = Field(3600.0, ge=0, description="an unreferenced blob younger than this is never collected")

    # Batching
    max_batch_size: int = Field(64, ge=1)
    max_batch_tokens: int = Field(8192, ge=16)
    max_wait_ms: float = Field(2.0, ge=0)
    max_queued_inputs: int = Field(4096, ge=1, description="server-wide bound; past it, 429")
    request_timeout_s: float = Field(30.0, gt=0)
    per_task_batches: bool = Field(False, description="baseline for benchmarks: one task per forward pass")

    # Prefix cache
    prefix_cache_bytes: int = Field(512 * 1024 * 1024, ge=1)

    # Per-tenant defaults (an admin may override them per tenant)
    tenant_max_tasks: int = Field(1000, ge=1)
    tenant_max_artifact_bytes: int = Field(2 * 1024**3, ge=1)
    tenant_max_queued_inputs: int = Field(1024, ge=1)
    max_inputs_per_request: int = Field(256, ge=1)
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1)

    log_level: str = "INFO"
    # FastAPI's own OpenTelemetry hooks look up the global providers on every request even when none is
    # configured (about 10% of the API process's CPU at 270 requests/s); on, they export through
    # whatever providers OTEL_* configures.
    opentelemetry: bool = False

    @property
    def multi_tenant(self) -> bool:
        return self.admin_token is not None and bool(self.admin_token.get_secret_value())

    def log_once(self) -> None:
        """Logs every setting at start-up; SecretStr fields print as '**********'."""
        log.info("settings: %s", self.model_dump_json())
        if not self.multi_tenant:
            log.warning("no admin token configured: single-tenant mode (tenant 'default'), no authentication")
