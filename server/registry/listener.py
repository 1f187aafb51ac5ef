"""Hears every replica's writes: one dedicated PostgreSQL connection that LISTENs on the registry's
channel, on a daemon thread, reconnecting for as long as the process lives.

A NOTIFY is only delivered to sessions listening when it commits, so whatever committed while this
connection was down is never heard: after every (re)connect the listener calls `on_resync`, and the
caches mark everything they hold as stale. The cache's TTL stays as the backstop for a listener that
is wedged without knowing it; a `SELECT 1` every few idle seconds finds a connection the server has
silently dropped, or a server that has stopped answering (the connection bounds every round trip, as the
registry's pooled ones do, and uses the same TCP keepalive), and the listener reconnects.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from server.registry.base import Change
from server.registry.database import NOTIFY_CHANNEL
from server.registry.postgres import (
    CONNECT_TIMEOUT_S,
    CONNECTION_PARAMETERS,
    ROUND_TRIP_TIMEOUT_S,
    BoundedConnection,
)

log = logging.getLogger(__name__)

POLL_S = 0.25  # how long one wait for notifications lasts: bounds how late stop() is noticed
PROBE_EVERY_S = 3.0
RECONNECT_BACKOFF_S = (0.1, 0.25, 0.5, 1.0)  # then every second: whole again soon after the database returns


def libpq_conninfo(sqlalchemy_url: str) -> str:
    """postgresql+psycopg://... -> postgresql://... (what psycopg.connect takes)."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    def __init__(self, sqlalchemy_url: str, on_change: Callable[[Change], None], on_resync: Callable[[], None]):
        self._conninfo = libpq_conninfo(sqlalchemy_url)
        self._on_change, self._on_resync = on_change, on_resync
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * POLL_S + max(CONNECT_TIMEOUT_S, ROUND_TRIP_TIMEOUT_S))

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with BoundedConnection.connect(self._conninfo, autocommit=True, **CONNECTION_PARAMETERS) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    if failures:
                        log.info("registry listener reconnected")
                    failures = 0
                    self.connected.set()
                    self._on_resync()  # anything committed before LISTEN took effect was not heard
                    self._listen(conn)
            except psycopg.Error as error:
                self.connected.clear()
                if failures == 0:
                    log.warning("registry listener lost its connection (%s); reconnecting", str(error).strip()[:200])
                delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                self._stop.wait(delay)
            except Exception:
                log.exception("registry listener failed; restarting it")
                self._stop.wait(1.0)
        self.connected.clear()

    def _listen(self, conn: psycopg.Connection) -> None:
        last_probe = time.monotonic()
        while not self._stop.is_set():
            heard = False
            for notify in conn.notifies(timeout=POLL_S):
                heard = True
                self._deliver(notify.payload)
            if heard:
                last_probe = time.monotonic()
            elif time.monotonic() - last_probe >= PROBE_EVERY_S:
                conn.execute("SELECT 1")
                last_probe = time.monotonic()

    def _deliver(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            change = Change(kind=data["kind"], tenant=data["tenant"], task=data.get("task"))
        except (ValueError, KeyError, TypeError):
            log.warning("registry listener: ignoring a malformed notification %.200r", payload)
            return
        try:
            self._on_change(change)
        except Exception:
            log.exception("a change subscriber failed")
