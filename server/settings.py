"""The one configuration object: the single source of `serve`'s flags (server/commands/settings_flags.py
generates them from these fields, with their descriptions and defaults) and of the README's table.

Every setting comes from a CLI flag, a `PREFIX_SERVER_*` environment variable or, for the secrets in
SECRET_FILE_FIELDS, a file named by `PREFIX_SERVER_<NAME>_FILE` (a mounted container secret). Secrets
are SecretStr so they never reach a log or a repr. A `PREFIX_SERVER_*` variable that nothing reads
(a misspelling, which pydantic-settings ignores) is named at start-up with the closest known name."""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from server.registry.names import split_task_path

log = logging.getLogger(__name__)

ENV_PREFIX = "PREFIX_SERVER_"
SECRET_FILE_FIELDS = ("admin_token", "database_url")
# Variables with the prefix that other commands read: not settings, and not misspellings either.
API_KEY_VARIABLE = ENV_PREFIX + "API_KEY"  # the key `prefix-server train --upload` sends
BENCH_DATA_VARIABLE = ENV_PREFIX + "BENCH_DATA"  # the benchmarks' data folder


class ConfigurationError(ValueError):
    """A setting that cannot be used as given; its message is one line for the operator."""


def require_extra(module: str, extra: str, what: str) -> None:
    """Raises ConfigurationError naming the extra to install when `module` is not importable."""
    if importlib.util.find_spec(module) is None:
        raise ConfigurationError(
            f"{what} needs the '{extra}' extra, which is not installed ({module} is missing): "
            f"pip install 'prefix-server[{extra}]'"
        )


def _default_backbone() -> str:
    from server.engine.backbone import default_backbone_dir  # lazily: the engine brings torch

    return str(default_backbone_dir())


def default_prefixes_dir() -> str:
    return str(Path(__file__).resolve().parent.parent / "prefixes")


CUDA_DEFAULTS = {"dtype": "float16", "max_batch_tokens": 16384, "max_batch_size": 512}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    backbone: str = Field(default_factory=_default_backbone, description="a BERT model folder")
    data_dir: Path = Field(Path("data"), description="where the registry keeps its state")
    prefixes_dir: str = Field(default_factory=default_prefixes_dir, description="registered at start; '' for none")
    admin_token: SecretStr | None = Field(None, description="set: multi-tenant with bearer keys; unset: single-tenant, no auth")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="the backbone's compute dtype")
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
    max_batch_size: int = Field(64, ge=1, description="inputs per forward pass, at most")
    max_batch_tokens: int = Field(8192, ge=16, description="tokens (inputs' plus prefixes') per forward pass, at most")
    max_wait_ms: float = Field(2.0, ge=0, description="how long the oldest input waits for a batch to fill")
    max_queued_inputs: int = Field(4096, ge=1, description="server-wide bound; past it, 429")
    request_timeout_s: float = Field(30.0, gt=0, description="past it, 504; queued inputs of expired requests are dropped")
    per_task_batches: bool = Field(False, description="baseline for benchmarks: one task per forward pass")

    # Tiers (SPEC 6): a task is resident on the device (loaded in the engine), else in host memory (its
    # artifact's bytes), else fetched from the blob store on first use.
    device_cache_bytes: int = Field(512 * 1024 * 1024, ge=1, description="budget of the device tier: prefixes loaded in the engine, LRU")
    host_cache_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="budget of the host tier: artifacts' bytes in memory below the device, LRU; 0 turns it off"
    )
    prefix_cache_bytes: int | None = Field(None, ge=1, description="the former name of device_cache_bytes, read when that is unset")
    fetch_concurrency: int = Field(4, ge=1, description="cold prefixes read from the blob store at once, off the batch path")
    pinned_tasks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="tasks the device tier never evicts, as tenant/task separated by commas (default/sentiment); "
        "PUT /v1/admin/pinned-tasks changes them at run time",
    )

    # Per-tenant defaults (an admin may override them per tenant)
    tenant_max_tasks: int = Field(1000, ge=1, description="tasks per tenant (default limit)")
    tenant_max_artifact_bytes: int = Field(2 * 1024**3, ge=1, description="artifact bytes per tenant (default limit)")
    tenant_max_queued_inputs: int = Field(1024, ge=1, description="queued inputs per tenant (default limit)")
    max_inputs_per_request: int = Field(256, ge=1, description="inputs in one classify request, at most")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1, description="bytes of one artifact upload, at most")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1, description="bytes of any other request body, at most")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="INFO writes an access line per request; WARNING drops them"
    )
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object a line, request id included")

    # Operations
    metrics_port: int = Field(
        0, ge=0, le=65535, description="serve /metrics on this port alone (0: on the main port, admin-only when multi-tenant)"
    )
    shutdown_delay_s: float = Field(
        0.0, ge=0, description="on SIGTERM, keep accepting (with /readyz 503) this long first, so load balancers stop sending"
    )
    shutdown_grace_s: float = Field(
        8.0, ge=0, description="then requests in flight get this long to finish; keep delay + grace under the stop timeout"
    )
    # FastAPI's own OpenTelemetry hooks look up the global providers on every request even when none is
    # configured (about 10% of the API process's CPU at 270 requests/s); on, they export through
    # whatever providers OTEL_* configures.
    opentelemetry: bool = Field(False, description="OpenTelemetry spans (HTTP, queue wait, tokenizing, forward pass)")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # Flags (init) over variables over *_FILE secrets.
        return init_settings, env_settings, _SecretFiles(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("pinned_tasks", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for entry in value:
            split_task_path(entry)  # raises InvalidName, a ValueError: pydantic reports it
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value):
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cuda_defaults(self):
        """On a GPU, what the H200 run measured best (BENCHMARKS.md, "GPU path"), unless set: float16, and
        batches of 16,384 tokens (45% of the bf16 peak at 8 ms a batch; 4,096 reach 24%) of up to 512 rows."""
        if self.device.startswith("cuda"):
            for name, value in CUDA_DEFAULTS.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)
        return self

    @model_validator(mode="after")
    def _ports_differ(self):
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError(f"metrics_port: expected a port other than port's, got {self.metrics_port} for both")
        return self

    @model_validator(mode="after")
    def _former_names(self):
        if self.prefix_cache_bytes is not None and "device_cache_bytes" not in self.model_fields_set:
            self.device_cache_bytes = self.prefix_cache_bytes
        return self

    @model_validator(mode="after")
    def _extras_installed(self):
        """A setting that needs an optional extra fails here, in milliseconds, naming the extra."""
        database = self.database_url.get_secret_value() if self.database_url else ""
        for needed, field, module, extra in (
            (database.startswith("postgresql"), "database_url: a PostgreSQL URL", "psycopg", "replicas"),
            ((self.blob_url or "").startswith("s3://"), "blob_url: an s3:// store", "boto3", "replicas"),
            (self.opentelemetry, "opentelemetry: true", "opentelemetry", "otel"),
        ):
            require_extra(module, extra, field) if needed else None
        return self

    @property
    def multi_tenant(self) -> bool:
        return self.admin_token is not None and bool(self.admin_token.get_secret_value())

    def log_once(self) -> None:
        """Logs every setting at start-up; SecretStr fields print as '**********'."""
        log.info("settings: %s", self.model_dump_json())
        if unknown := unknown_variables(os.environ):
            log.warning("ignored, no setting reads them: %s", "; ".join(
                f"{name} (did you mean {closest}?)" if closest else name for name, closest in unknown.items()
            ))
        if not self.multi_tenant:
            log.warning("no admin token configured: single-tenant mode (tenant 'default'), no authentication")


def known_variables() -> set[str]:
    """Every PREFIX_SERVER_* variable something reads: the settings, the secrets' *_FILE, the others'."""
    names = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return names | {ENV_PREFIX + name.upper() + "_FILE" for name in SECRET_FILE_FIELDS} | {API_KEY_VARIABLE, BENCH_DATA_VARIABLE}


def unknown_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """The PREFIX_SERVER_* variables of `environ` that nothing reads, each with the known name closest to
    it (None when none is close). Names match without regard to case, as pydantic-settings reads them."""
    known = {name.removeprefix(ENV_PREFIX): name for name in known_variables()}
    unknown = {}
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper.removeprefix(ENV_PREFIX) not in known:
            # Compared without the prefix, which every name shares and would make anything look close.
            closest = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), known, n=1, cutoff=0.6)
            unknown[name] = known[closest[0]] if closest else None
    return unknown


class _SecretFiles(PydanticBaseSettingsSource):
    """`PREFIX_SERVER_ADMIN_TOKEN_FILE=/run/secrets/token`: the file's contents, less the trailing newline
    an editor or `echo` leaves, stand for the variable. Setting both is ambiguous, so it is refused."""

    def get_field_value(self, field, field_name):  # every value comes from __call__
        return None, field_name, False

    def __call__(self) -> dict[str, str]:
        values = {}
        for name in SECRET_FILE_FIELDS:
            variable = ENV_PREFIX + name.upper()
            path = os.environ.get(variable + "_FILE")
            if not path:
                continue
            if os.environ.get(variable):
                raise ConfigurationError(f"{variable} and {variable}_FILE: expected one of them, got both")
            try:
                values[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as error:
                reason = getattr(error, "strerror", None) or str(error)
                raise ConfigurationError(f"{variable}_FILE: expected a readable text file, got {path!r} ({reason})") from None
        return values
