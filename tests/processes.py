"""Hanging a test's server processes for real: SIGSTOP leaves their sockets open, and their kernel still
accepts connections and acknowledges data, but nothing answers until SIGCONT (a wedged host, a process
stuck in a long pause). Used by the servers' `hung()` (tests/postgres_server.py, tests/s3_server.py)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """The processes stopped with SIGSTOP for the block, continued with SIGCONT after it (in reverse order)."""
    done: list[int] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            done.append(pid)
        yield
    finally:
        for pid in reversed(done):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
