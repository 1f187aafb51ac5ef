"""The SQLAlchemy engine for the embedded registry database, and its read and write transactions.

SQLite settings and why:
- WAL journal: readers (every classify request's `resolve`) never wait for the one writer, and a
  `kill -9` at any point leaves the last committed state.
- synchronous=FULL: a version the API answered 201 for survives a power cut, not just a process crash.
- busy_timeout: another process (e.g. `prefix-server import` next to a running server) holding the write
  lock makes us wait instead of failing at once.
- Python's sqlite3 driver is told to stay out of transaction control (isolation_level=None) and we
  emit BEGIN ourselves: plain BEGIN for reads (a consistent snapshot), BEGIN IMMEDIATE for writes. A
  write must take the lock up front, because in WAL mode a read transaction that later tries to write
  fails with SQLITE_BUSY at once if another writer committed meanwhile, without waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event

_BEGIN_OPTION = "registry_begin"


def create_sqlite_engine(path: Path, busy_timeout_s: float) -> Engine:
    engine = create_engine(
        f"sqlite+pysqlite:///{path}",
        # Pooled connections move between FastAPI's threadpool threads; each is used by one at a time.
        connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
        pool_size=8,
        max_overflow=24,
    )
    busy_timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
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


class Transactions:
    """Read and write transactions on one engine; writes of this process are also serialised by a
    lock, so threads queue in order instead of polling SQLite's busy handler."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock = threading.Lock()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """Commits when the block ends normally, rolls back if it raises."""
        with self._write_lock, self.engine.connect() as connection:
            connection.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
            with connection.begin():
                yield connection
