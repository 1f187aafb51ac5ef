"""The registry's database connection: one SQLAlchemy engine, its read and write transactions, and
what differs between the embedded SQLite file and a PostgreSQL server shared by replicas.

Correctness comes from the database, not from process locks:
- PostgreSQL: a write locks the rows it depends on (`FOR UPDATE`: the tenant, then the task), so two
  replicas uploading at once queue on the row, versions stay gap-free and quotas hold; a blob is
  guarded by a transaction-scoped advisory lock keyed by its sha256, taken by the upload that commits
  a reference to it and by the collector that removes it.
- SQLite: one writer at a time (`BEGIN IMMEDIATE`, plus a lock in this process so threads queue
  instead of polling), so row and blob locks are implied. WAL journal (readers never wait for the
  writer; `kill -9` leaves the last commit), synchronous=FULL (an answered 201 survives a power cut),
  busy_timeout (another process holding the lock makes us wait, not fail).

Every call to PostgreSQL is bounded in time and goes through a circuit breaker (server.registry.postgres,
server.registry.circuit), so a server that is gone or hung costs 503s within about 2 s and then at
once, not threads stuck on it.

Every write may `announce` a `Change`: on PostgreSQL it is a `NOTIFY` sent in the transaction (so it
is heard only if the write commits); on both, this process's subscribers hear it right after commit.
Driver errors that mean "the database is not reachable or not answering in time" become
`RegistryUnavailable`, which the API answers with 503.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import make_url

from server.registry.base import Change, RegistryUnavailable
from server.registry.circuit import Circuit, CircuitOpen

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "prefix_server_changes"
_BEGIN_OPTION = "registry_begin"


def sqlite_url(path: Path) -> str:
    return f"sqlite+pysqlite:///{path}"


def redact_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock from a name (a lock's purpose, or a sha256)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Database:
    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"database URL: expected sqlite:/// or postgresql+psycopg://, got {redact_url(url)}")
        # SQLite is a local file: it has no network to hang on, and its "database is locked" is no outage.
        self._circuit = Circuit("the database") if self.dialect == "postgresql" else None
        if self._circuit is None:
            self.engine = _create_sqlite(url, busy_timeout_s)
        else:
            from server.registry.postgres import create_postgres_engine  # psycopg: the [replicas] extra

            self.engine = create_postgres_engine(url, self._circuit)
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._subscribers: list[Callable[[Change], None]] = []

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def describe(self) -> str:
        return redact_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def subscribe(self, on_change: Callable[[Change], None]) -> None:
        self._subscribers.append(on_change)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._call(), self.engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """Commits when the block ends normally, rolls back if it raises; then tells this process's
        subscribers what was announced (other replicas hear the NOTIFY)."""
        announced: list[Change] = []
        with self._call(), self._serialised(), self.engine.connect() as connection:
            if self._write_lock is not None:
                connection.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
            connection.info["announced"] = announced
            try:
                with connection.begin():
                    yield connection
            finally:
                connection.info.pop("announced", None)
        for change in announced:
            for subscriber in self._subscribers:
                try:
                    subscriber(change)
                except Exception:
                    log.exception("a change subscriber failed")

    def announce(self, connection: Connection, change: Change) -> None:
        connection.info["announced"].append(change)
        if self.is_postgres:
            payload = json.dumps({"kind": change.kind, "tenant": change.tenant, "task": change.task})
            connection.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": NOTIFY_CHANNEL, "payload": payload})

    def lock_blob(self, connection: Connection, sha256: str) -> None:
        """Serialises committing a reference to a blob with removing it (SQLite: the write lock does)."""
        if self.is_postgres:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key("blob:" + sha256)})

    @contextmanager
    def exclusive(self, purpose: str, *, wait: bool) -> Iterator[Connection | None]:
        """One holder at a time across every replica (PostgreSQL: a session advisory lock; SQLite: the
        write lock). Yields a connection inside a transaction, or None when `wait` is False and
        another holder has it."""
        if not self.is_postgres:
            with self.write() as connection:
                yield connection
            return
        key = advisory_key(purpose)
        with self._call(), self.engine.connect() as connection:
            if wait:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            elif not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one():
                connection.rollback()
                yield None
                return
            connection.commit()  # the session lock outlives this; the caller's work gets its own transaction
            try:
                with connection.begin():
                    yield connection
            finally:
                if not connection.invalidated:  # a lost connection's session, and its lock, ended with it
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()

    def ping(self) -> bool:
        """Whether the server answers now. It asks even while the circuit is open: the health monitor's
        probe, every second, is what closes it soon after the server returns."""
        try:
            with self._call(probe=True), self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except RegistryUnavailable:
            return False

    @contextmanager
    def _serialised(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
        else:
            with self._write_lock:
                yield

    @contextmanager
    def _call(self, probe: bool = False) -> Iterator[None]:
        """One use of the database. Errors that mean "not reachable or not answering in time" (refused or
        lost connections, a bound passed, no pooled connection free, a lock or statement timeout) become
        RegistryUnavailable: nothing is known about what was asked, so the caller must not answer 401 or
        404. PostgreSQL: refused at once while the circuit is open; an answer closes it, none opens it."""
        circuit = self._circuit
        if circuit is not None:
            try:
                circuit.admit(probe)
            except CircuitOpen as error:
                raise RegistryUnavailable("database", str(error)) from None
        # An answer closes the circuit: a result, an error the server reported, or the block's own refusal
        # (NotFound, Conflict...) made from one. Opening it is the engine's handle_error hook's.
        answered = True
        try:
            yield
        except exc.TimeoutError as error:  # no pooled connection came free: the server was not asked
            answered = False
            raise RegistryUnavailable("database", _first_line(error)) from error
        except exc.DBAPIError as error:
            answered = circuit is None or _reported(error.orig)
            if isinstance(error, (exc.OperationalError, exc.InterfaceError)):
                raise RegistryUnavailable("database", _first_line(error.orig or error)) from error
            if error.connection_invalidated:
                raise RegistryUnavailable("database", "the connection was lost") from error
            raise
        except exc.SQLAlchemyError:  # e.g. a connection invalidated earlier in the block: nothing was asked
            answered = False
            raise
        finally:
            if circuit is not None:
                if answered:
                    circuit.answered()
                circuit.release()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _create_sqlite(url: str, busy_timeout_s: float) -> Engine:
    engine = create_engine(
        url,
        # Pooled connections move between FastAPI's threadpool threads; each is used by one at a time.
        connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
        pool_size=8,
        max_overflow=24,
    )
    busy_timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        # The driver stays out of transaction control; we emit BEGIN ourselves (IMMEDIATE for writes:
        # in WAL mode a read transaction that later writes fails at once if another writer committed).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", f"busy_timeout={busy_timeout_ms}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _reported(error: BaseException | None) -> bool:
    from server.registry.postgres import reported  # only with a circuit, i.e. on PostgreSQL

    return reported(error)
