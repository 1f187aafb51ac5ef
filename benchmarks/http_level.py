"""HTTP-level benchmark: load generators against real server processes over many tenants and tasks.

For every (tasks, inputs per request) configuration: the backbone-alone limit in process on the same
texts, then a closed loop at fixed concurrency against each server (prefix-server, per-task, seed),
back to back; with `repeats` rounds, task counts and servers alternate their order each round.
Then an open loop with Poisson arrivals at a sweep of rates (at 64 tasks, one input per request)
against prefix-server and per-task: each rate in `open_loop_rounds` rounds, the servers alternating,
both servers of a round fed the same arrival times; a server whose p99 passes 10x the budget (or that
fails requests) is saturated and skipped at higher rates. Each server's latency one request at a time
is measured too: on a loaded machine it is the floor under any p99.
Before each measured run every task is touched once (its prefix loaded) and a short closed loop warms
the server; batch counters are read from /metrics around the run.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from benchmarks import http_servers
from benchmarks.engine_level import Measured, bench_encoder, run_limit, summarize
from benchmarks.http_client import Call, HttpPool, LoadResult, closed_loop, open_loop
from benchmarks.stats import latency_summary
from benchmarks.workload import BenchRequest, BuiltTask, TextPools, build_tasks, generate_requests, make_tasks
from server.batching import BatchLimits
from server.engine import EngineProcess

RATE_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class HttpBenchConfig:
    backbone: str
    tasks: list[int] = field(default_factory=lambda: [1, 8, 64, 512])
    inputs_per_request: list[int] = field(default_factory=lambda: [1, 16])
    inputs_per_run: int = 256  # per round
    requests: int | None = None
    concurrency: int | None = None  # requests in flight; default 128 // inputs_per_request
    repeats: int = 1
    seed_tasks: int = 64  # the seed server runs at this task count only (its speed does not depend on it)
    seed_seconds: float = 8.0  # time box of a seed run (requests in flight then finish)
    open_loop_tasks: int = 64
    open_loop_inputs_per_request: int = 1
    rates: list[float] | None = None  # requests/s; default: rate_fractions of prefix-server's closed-loop rate
    rate_fractions: tuple[float, ...] = RATE_FRACTIONS
    open_loop_seconds: float = 6.0  # per round and rate (stretched to open_loop_min_requests, up to 3x)
    open_loop_rounds: int = 2
    open_loop_min_requests: int = 100
    p99_budget_ms: float = 100.0
    num_tenants: int = 8
    seed: int = 0
    torch_threads: int = 0
    dtype: str = "float32"  # the engine's, in every server but the seed's (transformers in float32)
    modes: tuple[str, ...] = http_servers.MODES
    open_loop: bool = True

    def requests_for(self, ipr: int) -> int:
        return self.requests or max(1, self.inputs_per_run // ipr)

    def concurrency_for(self, ipr: int) -> int:
        return self.concurrency or max(1, 128 // ipr)

    def describe(self) -> dict:
        return {**asdict(self), "modes": list(self.modes)}


def run_http_bench(config: HttpBenchConfig, pools: TextPools, progress=print) -> dict:
    engine = EngineProcess(config.backbone, dtype=config.dtype, torch_threads=config.torch_threads)  # the limit, as served
    counts = sorted(set(config.tasks) | ({config.open_loop_tasks} if config.open_loop else set()))
    task_sets = {n: build_tasks(engine.shape, make_tasks(n, config.seed, config.num_tenants, engine.shape.max_prefix_len)) for n in counts}
    every_task = [task for n in counts for task in task_sets[n]]
    servers: dict[str, http_servers.ServerProcess] = {}
    runs, open_runs, solo = [], [], {}
    with tempfile.TemporaryDirectory(prefix="prefix-bench-http-") as tmp, ThreadPoolExecutor(1) as compute:
        try:
            http_servers.write_task_files(every_task, Path(tmp) / "tasks")
            progress(f"http: starting the {', '.join(config.modes)} servers")
            for mode in config.modes:
                servers[mode] = http_servers.launch_server(mode, config.backbone, Path(tmp), Path(tmp) / "tasks", config.torch_threads,
                                                           serve_flags=("--dtype", config.dtype) if mode != "seed" else ())
            for mode in config.modes:
                http_servers.wait_ready(servers[mode])
                progress(f"http: {mode} ready; installing {len(every_task)} tasks")
                http_servers.install_tasks(servers[mode], every_task)
            for ipr in config.inputs_per_request:
                runs += _closed_loops(config, engine, compute, servers, task_sets, pools, ipr, progress)
            if config.open_loop:
                open_runs, solo = _open_sweep(config, engine, servers, task_sets[config.open_loop_tasks], pools, runs, progress)
        finally:
            for server in servers.values():
                server.stop()
            engine.close()
    return {
        "level": "http", "config": config.describe(), "texts": pools.describe(), "runs": runs,
        "open_loop": open_runs, "open_loop_solo_latency": solo,
    }


def request_calls(server: http_servers.ServerProcess, tasks: list[BuiltTask], requests: list[BenchRequest]) -> list[Call]:
    """The classify calls for `requests`, each with its tenant's key on `server`."""
    calls = []
    for request in requests:
        spec = tasks[request.task].spec
        inputs = [text if isinstance(text, str) else {"text": text[0], "text_pair": text[1]} for text in request.inputs]
        body = orjson.dumps({"task": spec.name, "inputs": inputs})
        calls.append(Call(body, server.auth_header(spec.tenant), len(request.inputs)))
    return calls


def _closed_loops(config, engine, compute, servers, task_sets, pools, ipr: int, progress) -> list[dict]:
    """Every task count and server at one inputs-per-request, `repeats` rounds in alternating order."""
    concurrency = config.concurrency_for(ipr)
    plans = {}
    for n in config.tasks:
        requests = generate_requests(pools, n, config.requests_for(ipr), ipr, config.seed)
        plans[n] = (task_sets[n], requests)
    limits = {n: Measured() for n in config.tasks}
    loads: dict[tuple[int, str], tuple[LoadResult, dict]] = {}
    for repeat in range(config.repeats):
        for n in _alternate(config.tasks, repeat):
            tasks, requests = plans[n]
            limits[n].add(compute.submit(run_limit, engine, bench_encoder(config.backbone), requests, BatchLimits()).result())
            for mode in _alternate(_modes_at(config, n), repeat + n):
                result, delta = asyncio.run(_measure(servers[mode], tasks, requests, concurrency, config, first=repeat == 0))
                total, counters = loads.setdefault((n, mode), (LoadResult(), {}))
                total.merge(result)
                for name, value in delta.items():
                    counters[name] = counters.get(name, 0.0) + value
    out = []
    for n in config.tasks:
        out.append(summarize(n, ipr, "limit", limits[n], concurrency))
        progress(_line(out[-1]))
        for mode in _modes_at(config, n):
            result, counters = loads[(n, mode)]
            stats = http_servers.batch_stats(counters) if counters else {}
            stats.update(http_servers.cpu_per_request(counters, result.requests))
            out.append(_summary(n, ipr, mode, result, stats, concurrency, servers[mode]))
            progress(_line(out[-1]))
    return out


def _modes_at(config: HttpBenchConfig, n: int) -> list[str]:
    return [m for m in config.modes if m != "seed" or n == config.seed_tasks]


def _alternate(items, index: int) -> list:
    return list(items) if index % 2 == 0 else list(reversed(items))


async def _measure(server, tasks, requests, concurrency: int, config: HttpBenchConfig, first: bool):
    """One closed loop over a warm-up's worth of requests and then `requests`, measured in steady state
    (see closed_loop); on the first round every task is touched once before, so every prefix is
    loaded. Returns the result and the server's batch counters over the measurement window."""
    calls = request_calls(server, tasks, requests)
    max_seconds = config.seed_seconds if server.mode == "seed" else None
    pool = HttpPool("127.0.0.1", server.port)
    scrapes = {}

    def scrape(key: str) -> None:  # blocks the load generator for one GET: the counters are exact
        scrapes[key] = {**(http_servers.scrape(server) or {}), **server.cpu_seconds()}

    try:
        if first:
            touch = request_calls(server, tasks, [BenchRequest(i, requests[0].inputs[:1]) for i in range(len(tasks))])
            await closed_loop(pool, touch if server.mode != "seed" else touch[:4], min(32, concurrency))
        warm = calls[:concurrency]
        result = await closed_loop(pool, warm + calls, concurrency, max_seconds=max_seconds, warmup=len(warm),
                                   on_arm=lambda: scrape("before"))
        scrape("after")
    finally:
        await pool.close()
    return result, http_servers.counter_delta(scrapes.get("before"), scrapes.get("after"))


def _summary(n, ipr, mode, result: LoadResult, stats: dict, concurrency, server, **extra) -> dict:
    return {
        "tasks": n, "inputs_per_request": ipr, "mode": mode, "requests": result.requests, "inputs": result.inputs_ok,
        "concurrency": concurrency, "wall_s": round(result.wall_s, 3),
        "inputs_per_s": round(result.inputs_ok / result.wall_s, 2) if result.wall_s else 0.0,
        "rounds_inputs_per_s": result.rounds, "latency": latency_summary(result.latencies), "latency_kind": "request", "statuses": result.statuses,
        **stats, "server_memory": server.memory(), **extra,
    }


def _open_sweep(config, engine, servers, tasks, pools, runs, progress) -> tuple[list[dict], dict]:
    """The rate sweep; also each server's latency with one request at a time, the floor of its p99."""
    ipr, n = config.open_loop_inputs_per_request, len(tasks)
    modes = [m for m in ("per-task", "prefix-server") if m in servers]
    rates = sorted(config.rates or _auto_rates(config, engine, servers, tasks, pools, runs, progress))
    count = max(64, math.ceil(max(rate * _open_seconds(config, rate) for rate in rates) * 1.2))
    requests = generate_requests(pools, n, count, ipr, config.seed + 1)
    calls = {mode: request_calls(servers[mode], tasks, requests) for mode in modes}
    solo = {}
    for mode in modes:
        solo[mode] = latency_summary(asyncio.run(_solo(servers[mode], calls[mode][:60])))
        progress(f"http open loop: {mode} alone, one request at a time: {solo[mode]}")
    saturated: set[str] = set()
    out = []
    for index, rate in enumerate(rates):
        results = {mode: LoadResult() for mode in modes if mode not in saturated}
        for round_index in range(config.open_loop_rounds):  # rounds alternate the order of the servers
            for mode in _alternate(list(results), index + round_index):
                seconds = _open_seconds(config, rate)
                results[mode].merge(asyncio.run(_open_run(servers[mode], calls[mode], rate, seconds, config.seed + round_index)))
        for mode, result in results.items():
            run = _summary(n, ipr, mode, result, {}, None, servers[mode], rate_rps=round(rate, 2),
                           offered_inputs_per_s=round(rate * ipr, 2))
            p99 = run["latency"]["p99_ms"]
            failed = sum(v for k, v in result.statuses.items() if k != "200")
            if p99 is None or p99 > 10 * config.p99_budget_ms or failed > 0.01 * max(1, result.requests):
                saturated.add(mode)
                run["saturated"] = True
            out.append(run)
            progress(f"http open loop {mode:<13} {rate:7.1f} req/s offered: {run['inputs_per_s']:7.1f} inputs/s, "
                     f"p50 {run['latency']['p50_ms']} ms, p99 {p99} ms, statuses {result.statuses}")
    return out, solo


def _open_seconds(config: HttpBenchConfig, rate: float) -> float:
    """Long enough for `open_loop_min_requests` arrivals per round, within 1x..3x open_loop_seconds."""
    return min(3 * config.open_loop_seconds, max(config.open_loop_seconds, config.open_loop_min_requests / rate))


async def _solo(server, calls: list[Call]) -> list[float]:
    pool = HttpPool("127.0.0.1", server.port)
    try:
        await closed_loop(pool, calls[:5], 1)
        return (await closed_loop(pool, calls, 1)).latencies
    finally:
        await pool.close()


async def _open_run(server, calls: list[Call], rate: float, seconds: float, seed: int) -> LoadResult:
    pool = HttpPool("127.0.0.1", server.port)
    try:
        await closed_loop(pool, calls[:64], 16)  # connections open, server warm
        return await open_loop(pool, calls, rate, seconds, seed, timeout_s=10.0)
    finally:
        await pool.close()


def _auto_rates(config, engine, servers, tasks, pools, runs, progress) -> list[float]:
    """Fractions of prefix-server's closed-loop request rate at the open loop's configuration."""
    ipr = config.open_loop_inputs_per_request
    found = [r for r in runs if r["mode"] == "prefix-server" and r["tasks"] == len(tasks) and r["inputs_per_request"] == ipr]
    if not found:
        calibration = HttpBenchConfig(**dict(asdict(config), modes=("prefix-server",), tasks=[len(tasks)], repeats=1))
        with ThreadPoolExecutor(1) as compute:
            found = _closed_loops(calibration, engine, compute, servers, {len(tasks): tasks}, pools, ipr, progress)[1:]
    capacity = found[0]["inputs_per_s"] / ipr
    progress(f"http open loop: prefix-server closed-loop capacity {capacity:.1f} req/s; rates at {config.rate_fractions}")
    return [round(capacity * f, 2) for f in config.rate_fractions]


def _line(run: dict) -> str:
    lat = run["latency"] or {}
    return (
        f"http tasks={run['tasks']:>3} inputs/request={run['inputs_per_request']:>2} {run['mode']:<13} "
        f"{run['inputs_per_s']:>8.1f} inputs/s  p50 {lat.get('p50_ms')} ms  p99 {lat.get('p99_ms')} ms  "
        f"statuses {run.get('statuses', {})}"
    )
