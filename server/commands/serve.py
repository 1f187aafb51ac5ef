"""`prefix-server serve`: settings from flags over PREFIX_SERVER_* variables, then uvicorn."""

from __future__ import annotations

import argparse
import logging

# Flag name -> Settings field; every flag is optional and overrides the environment.
_FLAGS = {
    "--host": ("host", str),
    "--port": ("port", int),
    "--backbone": ("backbone", str),
    "--data-dir": ("data_dir", str),
    "--prefixes-dir": ("prefixes_dir", str),
    "--admin-token": ("admin_token", str),
    "--device": ("device", str),
    "--dtype": ("dtype", str),
    "--torch-threads": ("torch_threads", int),
    "--max-batch-size": ("max_batch_size", int),
    "--max-batch-tokens": ("max_batch_tokens", int),
    "--max-wait-ms": ("max_wait_ms", float),
    "--max-queued-inputs": ("max_queued_inputs", int),
    "--request-timeout-s": ("request_timeout_s", float),
    "--prefix-cache-bytes": ("prefix_cache_bytes", int),
    "--log-level": ("log_level", str),
    "--database-url": ("database_url", str),
    "--blob-url": ("blob_url", str),
    "--blob-cache-dir": ("blob_cache_dir", str),
    "--blob-cache-bytes": ("blob_cache_bytes", int),
    "--registry-ttl-s": ("registry_ttl_s", float),
    "--blob-gc-grace-s": ("blob_gc_grace_s", float),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the HTTP server",
        description="Start the server. Every flag can also be set as PREFIX_SERVER_<NAME> (e.g. PREFIX_SERVER_PORT).",
    )
    for flag, (field, kind) in _FLAGS.items():
        parser.add_argument(flag, dest=field, type=kind, default=None, help=f"overrides PREFIX_SERVER_{field.upper()}")
    parser.add_argument(
        "--engine-in-process", dest="engine_process", action="store_const", const=False, default=None,
        help="run the model in the server's own process instead of a child (PREFIX_SERVER_ENGINE_PROCESS=false)",
    )
    parser.add_argument(
        "--no-migrate", dest="migrate", action="store_const", const=False, default=None,
        help="check the registry schema instead of migrating it at start (PREFIX_SERVER_MIGRATE=false)",
    )
    parser.add_argument(
        "--no-registry-notify", dest="registry_notify", action="store_const", const=False, default=None,
        help="do not LISTEN for other replicas' writes; the TTL alone refreshes (PREFIX_SERVER_REGISTRY_NOTIFY=false)",
    )
    parser.add_argument(
        "--per-task-batches", dest="per_task_batches", action="store_const", const=True, default=None,
        help="benchmark baseline: one task per forward pass (PREFIX_SERVER_PER_TASK_BATCHES)",
    )
    parser.set_defaults(func=run)


def configure_logging(level: str) -> None:
    from server.api.middleware import RequestIdFilter

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from server.api.app import create_app
    from server.settings import Settings

    fields = [field for field, _ in _FLAGS.values()] + ["per_task_batches", "engine_process", "migrate", "registry_notify"]
    overrides = {field: getattr(args, field) for field in fields if getattr(args, field) is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_level)
    if settings.engine_process:
        # The model runs in the child; here torch only parses artifacts, so its threads would only
        # compete with the engine's for the cores.
        torch.set_num_threads(1)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False
    )
    return 0
