"""`prefix-server serve`: settings from flags over PREFIX_SERVER_* variables (flags generated from
Settings), then uvicorn under this module's shutdown rules.

SIGTERM drains (server.api.shutdown): /readyz answers 503 at once, after `shutdown_delay_s` the
listener closes, requests in flight finish within `shutdown_grace_s` or are answered 503 with
Retry-After, then the engine stops and the process exits 0. A failed start-up (the port or the metrics
port in use, a bad backbone folder, an unreadable registry, a schema mismatch) ends the process with
exit code 1 and one line on stderr, so a supervisor restarts it; a remote registry that is only
unreachable is waited for instead (server.api.app)."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
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
    try:
        listener = _listen(settings.host, settings.port)
    except OSError as error:
        return _failed(f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}")
    logging.getLogger(__name__).info("listening on http://%s:%d", settings.host, listener.getsockname()[1])
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    server = DrainingServer(config, app.state.services, settings.shutdown_delay_s, settings.shutdown_grace_s)
    # uvicorn re-raises the signal it stopped on once it is done; a no-op handler in place of the
    # default makes a drained SIGTERM end with exit code 0 rather than death by signal 15.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run(sockets=[listener])
    return _failed(server.failure) if server.failure else 0


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything heavy starts: a port in use fails in milliseconds,
    with one line, instead of after the start-up."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _failed(reason: str) -> int:
    sys.stderr.write(f"prefix-server serve: start-up failed: {reason}\n")
    return STARTUP_FAILED
