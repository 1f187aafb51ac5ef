"""The FastAPI application: routers, middleware, error handlers and the start-up sequence.

Start-up runs in the background so /healthz answers at once and /readyz turns ready only when the
backbone is loaded, the registry open (its schema migrated, or checked with PREFIX_SERVER_MIGRATE=false),
the demo prefixes registered and the backbone warmed up. Then the registry's changes reach the lookup
cache (every replica's, on PostgreSQL), and its health is probed every second.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from server import __version__, metrics, tracing
from server.api.deps import DEFAULT_TENANT
from server.api.errors import install_error_handlers
from server.api.lookups import RegistryLookups
from server.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from server.api.openapi import install_openapi
from server.api.pins import follow_pins
from server.api.responses import FastJSONResponse
from server.api.routes import admin, classify, hf_inference, kserve, ops, tasks, tei
from server.api.state import Services
from server.api.upkeep import collect_garbage_periodically, monitor_registry
from server.artifact import ArtifactError
from server.batching import BatchLimits
from server.batching.runtime import build_runtime
from server.engine import BackboneError, EngineStartFailed
from server.heap import freeze_heap
from server.registry import RegistryUnavailable, open_registry
from server.registry.base import RegistryError
from server.registry.demo import register_demo_prefixes
from server.registry.schema import SchemaMismatch
from server.settings import ConfigurationError, Settings

log = logging.getLogger(__name__)

# What a misconfigured deployment raises at start-up: reported in one line, with no traceback.
STARTUP_FAILURES = (BackboneError, EngineStartFailed, RegistryError, SchemaMismatch, ConfigurationError, ArtifactError, OSError)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services(settings)
    tracing.configure(settings.opentelemetry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.log_once()
        background = [asyncio.create_task(_bring_up(services))]
        services.background = background
        yield
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if services.runtime is not None:
            await services.runtime.stop()
        if services.registry is not None:
            services.registry.close()

    # /docs (Swagger UI) and /redoc load their scripts and styles from the package (fastapi-offline),
    # not from a CDN: on a machine without internet FastAPI's own pages are blank. No validator badge:
    # Swagger UI would send the document's URL to validator.swagger.io.
    app = FastAPIOffline(
        title="prefix-server",
        version=__version__,
        swagger_ui_parameters={"validatorUrl": None},
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
        **_telemetry_options(settings),
    )
    app.state.services = services
    install_error_handlers(app)
    for router in (  # the hot route is matched first
        classify.router, ops.router, admin.router, tasks.router, tei.router, kserve.router, hf_inference.router,
    ):
        app.include_router(router)
    install_openapi(app, settings.multi_tenant)
    app.add_middleware(BodyLimitMiddleware, upload_limit=settings.max_upload_bytes, request_limit=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app


def _telemetry_options(settings: Settings) -> dict:
    """FastAPI >= 0.165 checks for OpenTelemetry providers on every request; off unless asked for."""
    if settings.opentelemetry or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


async def _bring_up(services: Services) -> None:
    s = services.settings
    try:
        limits = BatchLimits(
            s.max_batch_size, s.max_batch_tokens, s.max_wait_ms, s.max_queued_inputs, s.per_task_batches
        )
        runtime = await run_in_threadpool(
            build_runtime, s.backbone, s.device, s.dtype, limits, s.device_cache_bytes,
            lambda sha256: services.registry.read_artifact_bytes(sha256), s.engine_process, s.torch_threads,
            attention=s.attention, log_json=s.log_format == "json", host_cache_bytes=s.host_cache_bytes,
            fetch_workers=s.fetch_concurrency,
        )
        backbone = runtime.info()
        metrics.BUILD_INFO.info({"version": __version__, "backbone": str(backbone["name"]), "fingerprint": str(backbone["fingerprint"])})
        registry = await _open_registry_when_reachable(s, runtime.shape, services.default_limits())
        services.registry, services.runtime = registry, runtime
        services.lookups = RegistryLookups(registry, ttl_s=s.registry_ttl_s)
        services.default_tenant = await run_in_threadpool(registry.ensure_tenant, DEFAULT_TENANT)
        if s.prefixes_dir:
            await run_in_threadpool(_register_demo_prefixes, registry, s.prefixes_dir)
        _follow_registry_changes(services)
        await run_in_threadpool(runtime.warm_up)
        freeze_heap()
        runtime.batcher.start()
        services.background.append(asyncio.create_task(monitor_registry(services), name="registry-monitor"))
        services.background.append(asyncio.create_task(collect_garbage_periodically(services), name="blob-gc"))
        services.pinned_tasks = list(s.pinned_tasks)
        services.background.append(asyncio.create_task(follow_pins(services, s.registry_ttl_s), name="pinned-tasks"))
        services.ready = True
        log.info("ready: serving on the backbone %s", runtime.info()["name"])
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        services.startup_error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, STARTUP_FAILURES):
            log.exception("start-up failed")  # a bug: its traceback is the report
        elif services.on_startup_failure is None:
            log.error("start-up failed: %s", services.startup_error)  # serve prints it itself, once
        if services.on_startup_failure is not None:
            services.on_startup_failure(services.startup_error)


def _open_registry(s: Settings, shape, limits):
    return open_registry(
        data_dir=s.data_dir,
        backbone=shape,
        default_limits=limits,
        database_url=s.database_url.get_secret_value() if s.database_url else None,
        blob_url=s.blob_url,
        blob_cache_dir=s.blob_cache_dir,
        blob_cache_bytes=s.blob_cache_bytes,
        migrate=s.migrate,
        gc_grace_s=s.blob_gc_grace_s,
    )


async def _open_registry_when_reachable(s: Settings, shape, limits):
    """A replica started while the database or blob store is down waits for it (not ready meanwhile)
    instead of failing for good; any other error ends the start-up. So does an embedded registry
    (SQLite file, local blobs) that cannot be opened: no network outage ends by itself there."""
    attempt = 0
    while True:
        try:
            return await run_in_threadpool(_open_registry, s, shape, limits)
        except RegistryUnavailable as error:
            if not _registry_is_remote(s):
                raise
            attempt += 1
            if attempt == 1 or attempt % 30 == 0:
                log.warning("waiting for the registry: %s", error)
            await asyncio.sleep(1.0)


def _registry_is_remote(s: Settings) -> bool:
    database = s.database_url.get_secret_value() if s.database_url else ""
    return (bool(database) and not database.startswith("sqlite")) or (s.blob_url or "").startswith("s3://")


def _register_demo_prefixes(registry, folder: str) -> None:
    with registry.serialised("demo-prefixes"):  # replicas starting together register them once
        register_demo_prefixes(registry, folder)


def _follow_registry_changes(services: Services) -> None:
    """Every committed write drops what the lookup cache holds of it, on every replica."""
    lookups = services.lookups
    lookups.attach(asyncio.get_running_loop())

    def on_change(change) -> None:
        metrics.REGISTRY_CHANGES.labels(change.kind).inc()
        lookups.apply_change_threadsafe(change)

    if services.settings.registry_notify:
        services.registry.subscribe(on_change, lookups.mark_all_stale_threadsafe)
