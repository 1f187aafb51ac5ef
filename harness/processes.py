"""Real processes for tests and benchmarks: free loopback ports, polling with a deadline, a process's
children, hanging processes for real (`stopped`: SIGSTOP leaves their sockets open and their kernel still
accepts connections, but nothing answers until SIGCONT), and `ServeProcess`, a `prefix-server serve` started on a free port, waited for until ready,
and stopped (SIGTERM, then SIGKILL) or killed outright with its engine process.

Waits poll with a deadline and never assume the machine is fast: CI runs on two shared cores, where
starting a server takes seconds and a request can wait a second for a core. A deadline is how long to
wait before calling it broken, not how long things should take.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")
READY_TIMEOUT_S = 120.0  # a replica starting beside three others on two busy cores takes tens of seconds
STOP_TIMEOUT_S = 30.0  # SIGTERM drains and closes the engine process; past this it gets SIGKILL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Polls `predicate` until it returns a truthy value, and returns that value. Raises TimeoutError
    naming `what` after `timeout_s`; an exception from `predicate` ends the wait at once."""
    deadline = _Deadline(timeout_s, what)
    while not (value := predicate()):
        deadline.check(value)
        time.sleep(interval_s)
    return value


async def wait_until_async(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.005) -> T:
    """`wait_until` for a coroutine: the event loop keeps running while it polls."""
    deadline = _Deadline(timeout_s, what)
    while not (value := predicate()):
        deadline.check(value)
        await asyncio.sleep(interval_s)
    return value


class _Deadline:
    def __init__(self, timeout_s: float, what: str) -> None:
        self.at, self.timeout_s, self.what = time.monotonic() + timeout_s, timeout_s, what

    def check(self, last_seen) -> None:
        if time.monotonic() > self.at:
            raise TimeoutError(f"waited {self.timeout_s:g} s for {self.what}; last saw {last_seen!r}")


def child_pids(pid: int) -> list[int]:
    """A process's children, from /proc (per thread: a child belongs to the thread that started it)."""
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:  # it exited meanwhile
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


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet (it is not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and its children (no shutdown of any kind), and reap it."""
    if proc.poll() is not None:
        return
    children = child_pids(proc.pid)
    proc.kill()
    proc.wait()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def stop_process(proc: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL (children too) if it has not exited within `timeout_s`; returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
    return proc.returncode


def answers_ready(proc: subprocess.Popen, base: str, exited: Callable[[int], str], timeout_s: float = 5.0) -> bool:
    """Whether `base`/readyz answers 200 now (a wait_until predicate); raises RuntimeError(exited(code))
    once `proc` has exited, so a server that died is reported at once, not at the deadline."""
    code = proc.poll()
    if code is not None:
        raise RuntimeError(exited(code))
    try:
        return httpx.get(f"{base}/readyz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class ServeProcess:
    """`python -m server serve` on 127.0.0.1:<port>, configured by `env` (its PREFIX_SERVER_* variables),
    logging to `log_path`. `launch` starts it, `wait_ready` waits for /readyz; it can be launched again
    on the same port after `kill` or `stop`."""

    name: str
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()  # more `serve` flags
    proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--port", str(self.port), *self.args],
                env=self.env, stdout=log, stderr=log,
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until /readyz answers 200. Raises RuntimeError (with the log's tail) if the process exits first."""
        try:
            wait_until(self._ready, timeout_s, f"{self.name} on port {self.port} to answer /readyz with 200", 0.05)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; its log ends:\n{self.log_tail()}") from None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> ServeProcess:
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the server and its engine process (no shutdown of any kind)."""
        if self.proc is not None:
            kill_tree(self.proc)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (a drain), SIGKILL past `timeout_s`; the exit code, or None if it never ran."""
        return stop_process(self.proc, timeout_s) if self.proc is not None else None

    def log_tail(self, chars: int = 4000) -> str:
        return Path(self.log_path).read_text(errors="replace")[-chars:] if Path(self.log_path).exists() else ""

    def client(self, key: str | None = None, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def _ready(self) -> bool:
        return answers_ready(self.proc, self.base, lambda code: f"{self.name} exited with {code} before it was ready:\n{self.log_tail()}")
