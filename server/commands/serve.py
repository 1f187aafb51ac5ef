"""`prefix-server serve`: settings from flags over PREFIX_SERVER_* variables (flags generated from
Settings), then uvicorn under this module's shutdown rules.

SIGTERM drains: /readyz answers 503 at once (a load balancer stops sending), after `shutdown_delay_s`
uvicorn stops accepting and lets requests in flight finish for at most `shutdown_grace_s`, then the
engine stops and the process exits 0. A failed start-up (bad backbone folder, unreadable registry,
schema mismatch, a metrics port in use) ends the process with exit code 1 and the reason on stderr,
so a supervisor restarts it; a remote registry that is only unreachable is waited for instead
(server.api.app)."""

from __future__ import annotations

import argparse
import signal
import sys

from server.commands.settings_flags import add_settings_flags, settings_from_args

STARTUP_FAILED = 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the HTTP server",
        description="Start the server. Every flag can also be set as PREFIX_SERVER_<NAME> (e.g. PREFIX_SERVER_PORT); "
        "flags win. Secrets may come from files: PREFIX_SERVER_ADMIN_TOKEN_FILE, PREFIX_SERVER_DATABASE_URL_FILE.",
    )
    add_settings_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)  # before the heavy imports: a bad value fails in milliseconds
    import torch
    import uvicorn

    from server.api.app import create_app
    from server.api.shutdown import DrainingServer
    from server.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if settings.engine_process:
        # The model runs in the child; here torch only parses artifacts, so its threads would only
        # compete with the engine's for the cores.
        torch.set_num_threads(1)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.metrics_port, addr=settings.host)
        except OSError as error:
            return _failed(f"metrics port {settings.metrics_port}: {error.strerror or error}")
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server = DrainingServer(config, app.state.services, settings.shutdown_delay_s)
    # uvicorn re-raises the signal it stopped on once it is done; a no-op handler in place of the
    # default makes a drained SIGTERM end with exit code 0 rather than death by signal 15.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return _failed(server.failure) if server.failure else 0


def _failed(reason: str) -> int:
    sys.stderr.write(f"prefix-server serve: start-up failed: {reason}\n")
    return STARTUP_FAILED
