"""The registry's database connection: one SQLAlchemy engine, its read and write transactions, and
what differs between the embedded SQLite file and a PostgreSQL server shared by replicas.

Correctness comes from the database, not from process locks:
- PostgreSQL: a write locks the rows it depends on (`FOR UPDATE`: the tenant, then the task), so two
  replicas uploading at once queue on the row, versions stay gap-free and quotas hold; a blob is
  guarded by a transaction-scoped advisory lock keyed by its sha256, taken by the upload that commits
  a reference to it and by the collector that removes it. Connections have bounded `connect_timeout`,
  `lock_timeout` and `statement_timeout`, so a write answers within seconds when the server is gone.
- SQLite: one writer at a time (`BEGIN IMMEDIATE`, plus a lock in this process so threads queue
  instead of polling), so row and blob locks are implied. WAL journal (readers never wait for the
  writer; `kill -9` leaves the last commit), synchronous=FULL (an answered 201 survives a power cut),
  busy_timeout (another process holding the lock makes us wait, not fail).

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

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "prefix_server_changes"
CONNECT_TIMEOUT_S = 2  # with lock and statement timeouts below: a write answers 503 within 3 s of an outage
LOCK_TIMEOUT_MS = 2000
STATEMENT_TIMEOUT_MS = 2500  # the registry's statements take milliseconds; past this the server is in trouble
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
        self.engine = _create_sqlite(url, busy_timeout_s) if self.dialect == "sqlite" else _create_postgres(url)
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
        with _unavailable_as_registry_error(), self.engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """Commits when the block ends normally, rolls back if it raises; then tells this process's
        subscribers what was announced (other replicas hear the NOTIFY)."""
        announced: list[Change] = []
        with _unavailable_as_registry_error(), self._serialised(), self.engine.connect() as connection:
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
        with _unavailable_as_registry_error(), self.engine.connect() as connection:
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
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()

    def ping(self) -> bool:
        try:
            with self.read() as connection:
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
def _unavailable_as_registry_error() -> Iterator[None]:
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as error:
        # Connection refused or lost, pool exhausted, lock or statement timeout: nothing is known about
        # what was asked, so the caller must not answer 401 or 404.
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0][:300]
        raise RegistryUnavailable("database", reason) from error
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise RegistryUnavailable("database", "the connection was lost") from error
        raise


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


def _create_postgres(url: str) -> Engine:
    options = f"-c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    return create_engine(
        url,
        pool_pre_ping=True,  # a connection the server dropped (restart, outage) is replaced, not handed out
        pool_size=8,
        max_overflow=8,
        pool_timeout=CONNECT_TIMEOUT_S,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "options": options, "application_name": "prefix-server"},
    )
