"""The HTTP load generator: a lean HTTP/1.1 keep-alive client on asyncio streams, a closed loop at
fixed concurrency and an open loop with Poisson arrivals.

The client is hand-rolled on purpose: it shares the machine's cores with the server under test, and
a general client (httpx) spends several times more CPU per request. Bodies are serialized before
the clock starts. In the open loop each request's latency runs from its *scheduled* send time, so a
client or server that falls behind shows up as latency (no coordinated omission); requests that are
not answered within `timeout_s` are abandoned (the connection is closed, which the server sees as a
disconnect) and counted as timeouts.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from benchmarks.stats import SteadyWindow


class HttpPool:
    """Keep-alive connections to one host, at most `max_connections` open at a time."""

    def __init__(self, host: str, port: int, max_connections: int = 512):
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def post(self, path: str, body: bytes, headers: str = "") -> tuple[int, bytes]:
        """POSTs a JSON body; `headers` are extra raw header lines, each ending in CRLF."""
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n"
        ).encode() + body
        async with self._slots:
            for attempt in range(2):
                reused = attempt == 0 and bool(self._idle)  # a retry always opens a new connection
                reader, writer = self._idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(request)
                    status, payload, keep = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    writer.close()
                    if reused and attempt == 0:
                        continue  # the server closed an idle keep-alive connection: once more on a new one
                    raise
                except BaseException:
                    writer.close()  # cancelled or timed out mid-request: the server sees a disconnect
                    raise
                if keep:
                    self._idle.append((reader, writer))
                else:
                    writer.close()
                return status, payload
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                break
            del body[-2:]
        payload = bytes(body[:-2]) if body.endswith(b"\r\n") else bytes(body)
    else:
        payload = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, payload, headers.get("connection", "").lower() != "close"


@dataclass(frozen=True)
class Call:
    """One prepared request: its serialized body, auth header line and number of inputs."""

    body: bytes
    headers: str
    inputs: int
    path: str = "/v1/classify"  # another protocol's endpoint (benchmarks/protocols.py)


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # answered with 200 only
    inputs_ok: int = 0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    rounds: list[float] = field(default_factory=list)  # inputs/s of each merged result

    def count(self, status: str, times: int = 1) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + times

    def merge(self, other: LoadResult) -> None:
        """Adds another round's result (and notes that round's inputs/s)."""
        self.rounds.append(round(other.inputs_ok / other.wall_s, 2) if other.wall_s else 0.0)
        self.absorb(other)
        self.wall_s += other.wall_s

    def absorb(self, other: LoadResult) -> None:
        """Adds another result's requests, inputs, latencies and statuses (not its time)."""
        self.latencies += other.latencies
        self.inputs_ok += other.inputs_ok
        self.requests += other.requests
        for status, times in other.statuses.items():
            self.count(status, times)


async def _send(pool: HttpPool, call: Call, start: float, result: LoadResult, timeout_s: float) -> None:
    """One request; its outcome (status, and latency and inputs when answered 200) goes to `result`."""
    result.requests += 1
    try:
        status, _ = await asyncio.wait_for(pool.post(call.path, call.body, call.headers), timeout_s)
    except TimeoutError:
        result.count("timeout")
        return
    except (OSError, asyncio.IncompleteReadError) as exc:
        result.count(type(exc).__name__)
        return
    result.count(str(status))
    if status == 200:
        result.latencies.append(time.perf_counter() - start)
        result.inputs_ok += call.inputs


async def closed_loop(pool: HttpPool, calls: list[Call], concurrency: int, timeout_s: float = 60.0,
                      max_seconds: float | None = None, warmup: int = 0, on_arm=None) -> LoadResult:
    """`concurrency` workers each send their next request when the previous one is answered. Measured
    in the SteadyWindow after `warmup` completions (`on_arm` as there), up to the last answer; with
    `max_seconds`, no request starts later than that after the arming."""
    indices = iter(range(len(calls)))
    window = SteadyWindow(warmup, on_arm)

    async def worker():
        for index in indices:
            if window.armed and max_seconds is not None and time.perf_counter() - window.armed_at > max_seconds:
                return
            own = LoadResult()
            await _send(pool, calls[index], time.perf_counter(), own, timeout_s)
            window.completed(own)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(calls)))))
    counted, length = window.finish()
    result = LoadResult(wall_s=length)
    for own in counted:
        result.absorb(own)
    return result


def run_closed_loop(port: int, calls: list[Call], concurrency: int, **options) -> LoadResult:
    """closed_loop against 127.0.0.1:`port` on a fresh pool and event loop, for synchronous callers."""

    async def main():
        pool = HttpPool("127.0.0.1", port)
        try:
            return await closed_loop(pool, calls, concurrency, **options)
        finally:
            await pool.close()

    return asyncio.run(main())


async def open_loop(pool: HttpPool, calls: list[Call], rate: float, seconds: float, seed: int = 0,
                    timeout_s: float = 10.0) -> LoadResult:
    """Poisson arrivals at `rate` requests/s for `seconds`, cycling through `calls`; latency counts from
    each request's scheduled time."""
    rng = random.Random(f"arrivals-{seed}-{rate}")
    result = LoadResult()
    in_flight = []
    started = time.perf_counter()
    at, index = rng.expovariate(rate), 0
    while at < seconds:
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        call = calls[index % len(calls)]
        in_flight.append(asyncio.create_task(_send(pool, call, started + at, result, timeout_s)))
        at, index = at + rng.expovariate(rate), index + 1
    await asyncio.gather(*in_flight)
    result.wall_s = time.perf_counter() - started
    return result
