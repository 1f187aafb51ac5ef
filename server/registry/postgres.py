"""PostgreSQL connections bounded in time (SPEC 4: a write answers 503 within 3 s when the server is gone
or hung): the registry's engine, the connection class that bounds every round trip, and what counts as
"the server gave no answer", which opens the database's circuit (server.registry.circuit).

The bounds:
- the server gives up first: `lock_timeout` 1.5 s, then `statement_timeout` 1.8 s, so while it runs, every
  statement answers (a result or an error) in under 2 s;
- the client gives up next: connecting takes at most 2 s (`connect_timeout`, libpq's minimum), a wait for
  a free pooled connection 1 s, and every round trip on a connection 2 s (`BoundedConnection`). A stopped
  server (SIGSTOP, a wedged host) still has its kernel accept and acknowledge, so only a deadline of the
  client's own ends such a wait; TCP keepalive and `tcp_user_timeout` drop connections to a host that
  has gone (packets dropped) even while no call uses them;
- a call that gets no answer opens the database's circuit (server.registry.circuit): calls fail at once
  (503) until the health probe (every second in a server) gets an answer.
A call therefore answers within about 2 s of a hang, and at once after the circuit has opened. A write
cut off by a bound is rolled back by the server, unless its COMMIT had already reached the server: then
it is committed whole (its blob was stored first), though its caller was answered 503.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import Engine, create_engine, event

from server.registry.circuit import Circuit

# The server's bounds end every statement before the client's bound, so only a server that does not
# answer at all trips the client's. The registry's statements take milliseconds; waits are for row locks.
LOCK_TIMEOUT_MS = 1500
STATEMENT_TIMEOUT_MS = 1800
ROUND_TRIP_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 2  # libpq's minimum
POOL_TIMEOUT_S = 1.0
# A host that has gone: idle connections are probed after 5 s and dropped 3 unanswered probes later, and
# data left unacknowledged for 5 s drops the connection.
CONNECTION_PARAMETERS = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
}


class RoundTripTimeout(psycopg.OperationalError):
    """The server did not answer one round trip within ROUND_TRIP_TIMEOUT_S; the connection is closed."""


class BoundedConnection(psycopg.Connection):
    """A psycopg connection on which no wait for the server lasts longer than ROUND_TRIP_TIMEOUT_S.

    psycopg's sync connection has no client-side bound on a query, and a stopped server still has its
    kernel accept and acknowledge, so without one a call waits until the server resumes. Every network
    wait of a connection (statements, fetches, commit, rollback, SQLAlchemy's pre-ping) goes through
    `wait`; when one outlives the bound, the watchdog shuts the connection's socket down, the wait
    returns with an error, and the connection, whose protocol state is then unknown, is closed and
    RoundTripTimeout raised; SQLAlchemy throws the closed connection away. psycopg's cancel is no
    alternative: it needs the postmaster, which is as stopped as the backend.
    """

    _cut = False  # set by the watchdog

    def wait(self, gen, *args, **kwargs):
        if kwargs.get("timeout") is not None:  # a wait with a bound of its own (notifies(timeout=...))
            return super().wait(gen, *args, **kwargs)
        try:
            with _WATCHDOG.bounding(self, ROUND_TRIP_TIMEOUT_S):
                return super().wait(gen, *args, **kwargs)
        except psycopg.OperationalError:
            if not self._cut:
                raise
            self.close()
            raise RoundTripTimeout(
                f"the database server did not answer within {ROUND_TRIP_TIMEOUT_S:g} s; the connection was closed"
            ) from None

    def cut(self) -> None:
        """Shuts the socket down (through a duplicate of its descriptor: libpq keeps its own), so a wait
        blocked on it returns at once with an error."""
        self._cut = True
        try:
            with socket.socket(fileno=os.dup(self.fileno())) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):  # closed meanwhile: nothing left to cut
            pass


class _Watchdog:
    """One thread per process that cuts the connections whose wait has outlived its deadline. A
    deadline is dropped, under the lock, as soon as its wait returns, so only a wait still in progress is
    ever cut."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._deadlines: dict[int, tuple[float, BoundedConnection]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def bounding(self, connection: BoundedConnection, seconds: float) -> Iterator[None]:
        token = next(self._tokens)
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="registry-watchdog", daemon=True)
                self._thread.start()
            self._deadlines[token] = (time.monotonic() + seconds, connection)
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._deadlines.pop(token, None)

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for token, (deadline, connection) in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[token]
                        connection.cut()
                earliest = min((deadline for deadline, _ in self._deadlines.values()), default=None)
                self._changed.wait(None if earliest is None else earliest - now)


_WATCHDOG = _Watchdog()


def unanswered(error: BaseException | None, disconnected: bool) -> bool:
    """Whether a driver error means the server gave no answer: a round trip ran past its bound, or no
    connection could be made (refused, timed out). A pooled connection the server has dropped (it
    restarted) is neither: the pool opens a new one, and that attempt tells."""
    if isinstance(error, RoundTripTimeout):
        return True
    return not disconnected and isinstance(error, psycopg.OperationalError) and error.sqlstate is None


def reported(error: BaseException | None) -> bool:
    """Whether the server itself reported the error (it carries an SQLSTATE), which proves it is up."""
    return isinstance(error, psycopg.Error) and error.sqlstate is not None


def create_postgres_engine(url: str, circuit: Circuit) -> Engine:
    """The registry's engine on `url`: bounded connections, opened only while `circuit` allows, and every
    driver error that means no answer opening it."""
    options = f"-c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    engine = create_engine(
        url,
        pool_pre_ping=True,  # a connection the server dropped (restart, outage) is replaced, not handed out
        pool_size=8,
        max_overflow=8,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={**CONNECTION_PARAMETERS, "options": options, "application_name": "prefix-server"},
    )

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect, _record, cargs, cparams) -> BoundedConnection:
        # After a pre-ping found the server hung, the pool opens a new connection in the same checkout:
        # refused at once, or the call would wait out the connect timeout as well.
        if not circuit.may_connect():
            raise psycopg.OperationalError(f"no new connection until the database answers again ({circuit.reason})")
        return BoundedConnection.connect(*cargs, **cparams)

    @event.listens_for(engine, "handle_error")
    def _open_circuit(context) -> None:
        # Every driver error passes here, the pre-ping's included (the pool swallows those).
        if unanswered(context.original_exception, context.is_disconnect):
            circuit.unanswered(str(context.original_exception).strip()[:200])

    return engine
