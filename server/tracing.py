"""OpenTelemetry spans of the classify path beyond HTTP: tokenizing, the wait in the batch queue and
the forward pass, each a child of the request's span. Uses opentelemetry-api only (the `otel` extra);
the SDK and exporters are the operator's (OTEL_* variables, or `opentelemetry-instrument`).

On only when Settings.opentelemetry is set and the API imports; off, `TRACER` is None and each hook
costs one `is None` test on the hot path. Queue and forward spans are recorded after the fact, with
their measured start and end, because one forward pass serves many requests' spans."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

TRACER = None  # an opentelemetry Tracer while tracing is on


def configure(enabled: bool) -> bool:
    """Turns the spans on or off for the process; True if on."""
    global TRACER
    TRACER = None
    if not enabled:
        return False
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning("PREFIX_SERVER_OPENTELEMETRY is on but opentelemetry-api is not installed: no spans "
                    "(pip install 'prefix-server[otel]')")
        return False
    from server import __version__

    TRACER = trace.get_tracer("prefix-server", __version__)
    return True


def now_ns() -> int:
    return time.time_ns()


def record_span(name: str, start_ns: int, end_ns: int, attributes: dict | None = None) -> None:
    """A finished span under the current one (the request's); a no-op while tracing is off."""
    if TRACER is None or not start_ns:
        return
    span = TRACER.start_span(name, start_time=start_ns, attributes=attributes)
    span.end(end_time=max(end_ns, start_ns))
