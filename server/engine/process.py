"""EngineProcess: the engine in a child process, behind the calls the batcher makes of an Engine.

Why: in one process, every torch op of a forward pass hands the GIL back and forth with the event
loop, the tokenizer and the HTTP layer; measured on the 2-core CPU at the engine level, the same
load ran 4-8% slower in one process (BENCHMARKS.md, "engine process vs in-process"). Here the forward is the only Python
in its process. The server keeps tokenization (the batcher's TextEncoder), batching and the prefix cache;
the child keeps the model and the loaded tasks, addressed by the handles the server gave them.

Calls block (the batcher makes them from its compute and prep threads); one reader thread routes
replies. A released handle is only queued (release may run inside any thread, from a finalizer), and
the next message carries the queue along. If the child dies, every waiting call fails with
EngineUnavailable (HTTP 503) and a new child is started with backoff; `generation` moves on, so the
cache knows the tasks it loaded are gone and loads them again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from multiprocessing.connection import Connection

import numpy as np

from server.artifact import BackboneShape, HeadKind, ProblemType
from server.engine import wire
from server.engine.batch import BatchScores, TokenBatch
from server.engine.surface import TaskFacts

log = logging.getLogger(__name__)

# Read once by the child's libraries as they load, so they go through its environment.
CHILD_ENV_DEFAULTS = {
    # oneDNN keeps a compiled primitive per distinct shape (1,024 of them by default). A packed batch's
    # token count is new almost every time, so on the CPU that cache grew the engine's heap by about
    # 19 KB a batch and fragmented it (RSS +100 MiB in 5 minutes of varied batches); off, the heap stays
    # flat, at about 7% of throughput (BENCHMARKS.md, "Soak"). CUDA matmuls do not go through it.
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0",
}


class EngineUnavailable(RuntimeError):
    """The engine process is down or restarting; the call may be retried."""


class EngineStartFailed(RuntimeError):
    """The engine process could not start; the message is its reason (a bad backbone folder...)."""


class EngineProcess:
    def __init__(self, backbone: str, device: str = "cpu", dtype: str = "float32", merge_pairs: int | None = None,
                 torch_threads: int = 0, start_timeout_s: float = 600.0, max_restarts: int = 5,
                 attention: str = "auto", on_restart: Callable[[], None] | None = None, pipeline: bool | None = None,
                 log_json: bool = False):
        """`on_restart` is called after each successful restart (the serving side counts them; the engine
        imports no metrics library, so it runs where only torch is installed). `pipeline`: whether the
        child launches the next batch before it collects the one running (None: where the device runs
        asynchronously, i.e. CUDA; tests force it on the CPU). `log_json`: the child writes JSON log lines
        (serve's LOG_FORMAT), so its lines on the same stderr match the server's."""
        self._on_restart = on_restart
        self._config = {"backbone": str(backbone), "device": device, "dtype": dtype, "merge_pairs": merge_pairs,
                        "attention": attention, "torch_threads": torch_threads,
                        **({"pipeline": pipeline} if pipeline is not None else {}),
                        "log_level": logging.getLevelName(log.getEffectiveLevel()), "log_json": log_json}
        self._start_timeout_s, self._max_restarts = start_timeout_s, max_restarts
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # the current connection's (_send_messages)
        self._pending: dict[int, Future] = {}
        self._ids = itertools.count()
        self._released: deque[int] = deque()
        self._closing = False
        self.generation = 0
        self.restarts = 0
        self._up = threading.Event()
        self._start()

    # --- the engine surface (surface.py) the batcher, the cache and the runtime use ---------------

    @property
    def shape(self) -> BackboneShape:
        return self._shape

    def info(self) -> dict:
        return dict(self._info)

    @property
    def merge_pairs(self) -> int:
        return self._merge_pairs

    @property
    def alive(self) -> bool:
        return self._up.is_set()

    @property
    def batches_in_flight(self) -> int:
        """2 when the child pipelines (the batcher may send the next batch before this one's scores
        are back), else 1."""
        return self._batches_in_flight

    def load_task(self, handle: int, data: bytes) -> TaskFacts:
        return self.start_load(handle, data).result()

    def start_load(self, handle: int, data: bytes) -> Future[TaskFacts]:
        replied = self._send({"op": "load", "handle": handle}, data)
        loaded: Future[TaskFacts] = Future()

        def settle(done: Future) -> None:
            try:
                reply, _ = _checked(done.result())
                facts = reply["facts"]
                loaded.set_result(TaskFacts(**{**facts, "head": HeadKind(facts["head"]),
                                               "problem_type": ProblemType(facts["problem_type"])}))
            except Exception as error:  # noqa: BLE001 — handed to the caller through the future
                loaded.set_exception(error)

        replied.add_done_callback(settle)
        return loaded

    def release_task(self, handle: int) -> None:
        self._released.append(handle)  # may run inside any thread (a finalizer): the next message carries it

    def score(self, batch: TokenBatch) -> BatchScores:
        _, data = self._call({"op": "score"}, wire.encode_batch(batch))
        return wire.decode_scores(data)

    def pooled(self, batch: TokenBatch) -> np.ndarray:
        _, data = self._call({"op": "pooled"}, wire.encode_batch(batch))
        return wire.decode_matrix(data)  # [B, C]

    def stats(self) -> dict:
        reply, _ = self._call({"op": "stats"})
        return {"resident_prefixes": reply["resident_prefixes"], "pool_slots": reply["pool_slots"], "pid": self.pid}

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the engine process: ask it, then hang up on it, then kill it, each with `timeout_s`."""
        self._closing = True
        if self._up.is_set():
            with contextlib.suppress(EngineUnavailable, TimeoutError):
                self._call({"op": "stop"}, timeout_s=timeout_s)
        self._hang_up()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._up.clear()

    def _hang_up(self) -> None:
        # shutdown(), not close(): closing an fd does not wake the reader thread blocked on it, and the
        # socket (so the child's EOF) lives on until that recv returns.
        try:
            with socket.socket(fileno=os.dup(self._conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    @property
    def pid(self) -> int | None:
        return self._process.pid

    # --- the pipe ------------------------------------------------------------------------------

    def _call(self, header: dict, payload: bytes | None = None, timeout_s: float | None = None) -> tuple[dict, bytes | None]:
        return _checked(self._send(header, payload).result(timeout=timeout_s))

    def _send(self, header: dict, payload: bytes | None = None) -> Future:
        """Sends one message; the future gets (reply, data) when the child answers it."""
        if not self._up.is_set():
            raise EngineUnavailable("the engine process is not running (restarting); retry shortly")
        future: Future = Future()
        call_id = next(self._ids)
        self._pending[call_id] = future
        released = []
        while self._released:
            released.append(self._released.popleft())
        message = {**header, "id": call_id, "payload": payload is not None, "release": released}
        self._outbox.put((call_id, wire.encode_header(message), payload))
        return future

    def _send_messages(self, conn, outbox: queue.SimpleQueue) -> None:
        """The one writer of a connection, in the order messages were queued. Callers never block on
        the socket: its buffer holds about one artifact, and a caller that waited there would wait a
        whole forward pass (the child reads its next message when the pass ends)."""
        while (item := outbox.get()) is not None:
            call_id, header, payload = item
            try:
                conn.send_bytes(header)
                if payload is not None:
                    conn.send_bytes(payload)
            except (OSError, ValueError) as exc:
                future = self._pending.pop(call_id, None)
                if future is not None:
                    with contextlib.suppress(InvalidStateError):
                        future.set_exception(EngineUnavailable(f"the engine process is not reachable ({exc})"))

    def _read_replies(self, conn, generation: int) -> None:
        while True:
            try:
                reply = wire.decode_header(conn.recv_bytes())
                data = conn.recv_bytes() if reply.get("payload") else None
            except (EOFError, OSError):
                break
            future = self._pending.pop(reply.get("id"), None)
            if future is not None:
                future.set_result((reply, data))
        self._on_exit(generation)

    def _on_exit(self, generation: int) -> None:
        if generation != self.generation:
            return
        self._up.clear()
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._outbox.put(None)  # its writer stops; a message still queued is failed below, with the rest
        pending, self._pending = self._pending, {}
        for future in pending.values():
            with contextlib.suppress(InvalidStateError):
                future.set_exception(EngineUnavailable(f"the engine process exited (code {code}) during this call"))
        if self._closing:
            return
        log.error("engine process %s exited with code %s; restarting it", self._process.pid, code)
        threading.Thread(target=self._restart, name="engine-restart", daemon=True).start()

    def _restart(self) -> None:
        for attempt in range(self._max_restarts):
            time.sleep(min(30.0, 0.5 * 2**attempt))
            try:
                self._start()
                self.restarts += 1
                if self._on_restart is not None:
                    self._on_restart()
                log.warning("engine process restarted (pid %s); stale prefixes reload on their next request", self.pid)
                return
            except Exception:
                log.exception("engine process restart %d of %d failed", attempt + 1, self._max_restarts)
        log.error("the engine process could not be restarted; the server stays unready")

    def _start(self) -> None:
        # A fresh interpreter (`python -m server.engine.worker`), not multiprocessing: nothing of the
        # server's threads, locks or __main__ module is copied or re-imported into the engine.
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "server.engine.worker", str(theirs.fileno()), json.dumps(self._config)]
        env = {**CHILD_ENV_DEFAULTS, **os.environ}  # what the server's environment sets wins
        process = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        conn = Connection(ours.detach())
        if not conn.poll(self._start_timeout_s):
            process.kill()
            raise EngineStartFailed(f"the engine process did not start within {self._start_timeout_s:.0f} s")
        try:
            ready = wire.decode_header(conn.recv_bytes())
        except (EOFError, OSError):
            raise EngineStartFailed(f"the engine process exited at start-up (code {process.wait()})") from None
        if ready.get("op") != "ready":
            process.wait()
            raise EngineStartFailed(f"the engine process failed to start on {self._config['backbone']}: {ready.get('error')}")
        self._info, self._shape, self._merge_pairs = ready["info"], BackboneShape(**ready["shape"]), ready["merge_pairs"]
        self._batches_in_flight = ready.get("batches_in_flight", 1)
        self._process, self._conn, self._outbox = process, conn, queue.SimpleQueue()
        threading.Thread(target=self._send_messages, args=(conn, self._outbox), name="engine-sends", daemon=True).start()
        self.generation += 1
        log.info("engine process %s up (%s threads)", ready["pid"], ready["torch_threads"])
        threading.Thread(target=self._read_replies, args=(conn, self.generation), name="engine-replies", daemon=True).start()
        self._up.set()


def _checked(answer: tuple[dict, bytes | None]) -> tuple[dict, bytes | None]:
    reply, _ = answer
    if not reply.get("ok"):
        raise RuntimeError(f"engine process: {reply.get('error')}")
    return answer
