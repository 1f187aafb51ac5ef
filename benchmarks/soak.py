"""`python -m benchmarks soak`: a long run of mixed traffic against a `serve` process it starts, to show
that the server neither leaks nor fails under churn.

Owns the traffic mix (classify, uploads of new versions with the old ones deleted, route changes, and
requests that must be refused: no key, a wrong key, an unknown task or version, malformed bodies, a
broken artifact, an oversized body), the sampling of statuses, classify latency and resident memory
(the server and its engine process) at regular times, and the verdict: no 5xx, no status outside what
each request may answer, and RSS flat, i.e. no sample after the warm-up above the warm-up's last one by
more than `rss_tolerance`.

The working set is bounded on purpose: each task cycles through a few fixed artifacts (the blob store
is content-addressed, so re-uploading one adds a version, not a blob) and versions beyond the newest
few are deleted, so memory that keeps growing is a leak, not a bigger registry or prefix cache.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks import http_servers
from benchmarks.stats import proc_memory
from benchmarks.workload import BuiltTask, TextPools, build_tasks, make_tasks
from harness.processes import child_pids

# action -> share of the requests; "bad" picks one of BAD_REQUESTS
MIX = {"classify": 0.72, "upload": 0.04, "route": 0.06, "bad": 0.18}
BAD_REQUESTS = ("no_key", "wrong_key", "unknown_task", "unknown_version", "malformed_json", "empty_inputs",
                "broken_artifact", "oversized")
EXPECTED = {  # what each kind of request may answer; 429 is a refusal the mix may provoke, never a failure
    "classify": {200, 429}, "upload": {201, 429}, "delete_version": {204}, "route": {200}, "no_key": {401},
    "wrong_key": {401}, "unknown_task": {404}, "unknown_version": {404}, "malformed_json": {422},
    "empty_inputs": {422}, "broken_artifact": {422}, "oversized": {413},
}
ARTIFACTS_PER_TASK = 3  # the fixed artifacts each task cycles through
VERSIONS_KEPT = 3


@dataclass
class SoakConfig:
    backbone: str
    minutes: float
    rate: float = 20.0  # requests started per second (fewer if `concurrency` are all in flight)
    concurrency: int = 8
    tasks: int = 8
    tenants: int = 2
    samples: int = 30  # rows of the table over time
    warmup_fraction: float = 0.2
    rss_tolerance: float = 0.05
    seed: int = 0


@dataclass
class _Window:
    """What happened since the last sample."""

    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> count
    classify_s: list[float] = field(default_factory=list)


class _Traffic:
    def __init__(self, config: SoakConfig, server, tasks: list[list[BuiltTask]], pools: TextPools):
        self.config, self.server, self.pools = config, server, pools
        self.tasks = {variants[0].spec.name: variants for variants in tasks}
        self.tenant_of = {name: variants[0].spec.tenant for name, variants in self.tasks.items()}
        self.locks = {name: asyncio.Lock() for name in self.tasks}  # a task's writes never race each other
        self.uploads = Counter()  # task -> uploads so far, to cycle through its artifacts
        self.rng = random.Random(f"soak-{config.seed}")
        self.window, self.totals = _Window(), Counter()

    def headers(self, task: str) -> dict:
        return {"Authorization": f"Bearer {self.server.keys[self.tenant_of[task]]}"}

    def count(self, kind: str, status: int) -> None:
        self.window.statuses[(kind, status)] += 1
        self.totals[(kind, status)] += 1

    async def one(self, client: httpx.AsyncClient) -> None:
        action = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        task = self.rng.choice(sorted(self.tasks))
        try:
            if action == "classify":
                await self._classify(client, task)
            elif action == "upload":
                async with self.locks[task]:
                    await self._upload(client, task)
            elif action == "route":
                async with self.locks[task]:
                    await self._route(client, task)
            else:
                kind = self.rng.choice(BAD_REQUESTS)
                self.count(kind, (await self._bad(client, kind, task)).status_code)
        except httpx.HTTPError as exc:  # no answer at all: counted as status 0, a failure
            self.count(f"{action} ({type(exc).__name__})", 0)

    async def _classify(self, client, task: str) -> None:
        source = self.pools.sources[self.rng.choice(sorted(self.pools.sources))]
        inputs = [_as_json(self.rng.choice(source)) for _ in range(self.rng.randint(1, 4))]
        started = time.perf_counter()
        response = await client.post("/v1/classify", json={"task": task, "inputs": inputs}, headers=self.headers(task))
        self.window.classify_s.append(time.perf_counter() - started)
        self.count("classify", response.status_code)

    async def _upload(self, client, task: str) -> None:
        """A new version (made active by the upload), then the versions beyond the newest few go."""
        variant = self.tasks[task][self.uploads[task] % ARTIFACTS_PER_TASK]
        self.uploads[task] += 1
        files = {"file": ("prefix.safetensors", variant.data)}
        response = await client.put(f"/v1/tasks/{task}", files=files, headers=self.headers(task))
        self.count("upload", response.status_code)
        if response.status_code != 201:
            return
        shown = (await client.get(f"/v1/tasks/{task}", headers=self.headers(task))).json()
        active = set(shown["active_versions"])
        numbers = [v["version"] for v in shown["versions"]]
        for number in [n for n in numbers[:-VERSIONS_KEPT] if n not in active]:
            gone = await client.delete(f"/v1/tasks/{task}/versions/{number}", headers=self.headers(task))
            self.count("delete_version", gone.status_code)

    async def _route(self, client, task: str) -> None:
        """Pins one of the task's versions, or splits traffic between its two newest."""
        shown = (await client.get(f"/v1/tasks/{task}", headers=self.headers(task))).json()
        numbers = [v["version"] for v in shown["versions"]]
        if len(numbers) >= 2 and self.rng.random() < 0.5:
            body = {"weights": {str(numbers[-2]): 0.3, str(numbers[-1]): 0.7}}
        else:
            body = {"version": self.rng.choice(numbers)}
        response = await client.put(f"/v1/tasks/{task}/route", json=body, headers=self.headers(task))
        self.count("route", response.status_code)

    async def _bad(self, client, kind: str, task: str) -> httpx.Response:
        body = {"task": task, "inputs": ["a text"]}
        if kind == "no_key":
            return await client.post("/v1/classify", json=body)
        if kind == "wrong_key":
            return await client.post("/v1/classify", json=body, headers={"Authorization": "Bearer psk_not-a-key"})
        headers = self.headers(task)
        if kind == "unknown_task":
            return await client.post("/v1/classify", json={**body, "task": "no-such-task"}, headers=headers)
        if kind == "unknown_version":
            return await client.post("/v1/classify", json={**body, "version": 10**6}, headers=headers)
        if kind == "malformed_json":
            return await client.post("/v1/classify", content=b'{"task": ', headers={**headers, "content-type": "application/json"})
        if kind == "empty_inputs":
            return await client.post("/v1/classify", json={**body, "inputs": []}, headers=headers)
        if kind == "broken_artifact":
            files = {"file": ("prefix.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")}
            return await client.put(f"/v1/tasks/{task}", files=files, headers=headers)
        # oversized: refused from its Content-Length, before the body is read
        return await client.post("/v1/classify", content=b" " * (4 * 2**20 + 1), headers={**headers, "content-type": "application/json"})


def _as_json(item) -> str | dict:
    return item if isinstance(item, str) else {"text": item[0], "text_pair": item[1]}


def run_soak(config: SoakConfig, pools: TextPools, progress=print) -> dict:
    from server.engine.backbone import read_backbone_folder

    shape = read_backbone_folder(config.backbone).shape()
    specs = make_tasks(config.tasks, config.seed, config.tenants, shape.max_prefix_len, tag="soak")
    variants = [build_tasks(shape, [_variant(spec, i) for i in range(ARTIFACTS_PER_TASK)]) for spec in specs]
    with tempfile.TemporaryDirectory(prefix="prefix-server-soak-") as folder:
        server = http_servers.launch_server("prefix-server", config.backbone, Path(folder), Path(folder))
        try:
            http_servers.wait_ready(server)
            http_servers.install_tasks(server, [v[0] for v in variants])
            progress(f"soak: {config.minutes} min of mixed traffic at {config.rate} req/s against {server.base}")
            samples, totals, wall_s = asyncio.run(_drive(config, server, variants, pools, progress))
        finally:
            server.stop()
    return summarize(config, samples, totals, wall_s, pools)


def _variant(spec, index: int):
    """The task's `index`-th fixed artifact: same name and tenant, another seed and prefix length."""
    from dataclasses import replace

    return replace(spec, seed=spec.seed * 10 + index, prefix_len=max(1, spec.prefix_len - 3 * index))


async def _drive(config: SoakConfig, server, variants, pools, progress) -> tuple[list[dict], Counter, float]:
    traffic = _Traffic(config, server, variants, pools)
    duration = config.minutes * 60
    every = max(duration / config.samples, 0.5)
    slots, running, samples = asyncio.Semaphore(config.concurrency), set(), []
    limits = httpx.Limits(max_connections=config.concurrency)
    async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        next_sample, sent = started + every, 0
        while (now := time.perf_counter()) < started + duration:
            if now >= next_sample:
                samples.append(_sample(traffic, server, now - started))
                progress(_progress_line(samples[-1]))
                next_sample += every
            await asyncio.sleep(max(0.0, started + sent / config.rate - time.perf_counter()))
            await slots.acquire()
            job = asyncio.create_task(traffic.one(client))
            job.add_done_callback(lambda _: slots.release())
            running.add(job)
            job.add_done_callback(running.discard)
            sent += 1
        await asyncio.gather(*running)
        wall_s = time.perf_counter() - started
        samples.append(_sample(traffic, server, wall_s))
    return samples, traffic.totals, wall_s


def _sample(traffic: _Traffic, server, at_s: float) -> dict:
    window, traffic.window = traffic.window, _Window()
    engines = [proc_memory(pid)["rss_mb"] for pid in child_pids(server.proc.pid)]
    server_rss = proc_memory(server.proc.pid)["rss_mb"] if server.proc.poll() is None else 0.0
    latency = np.asarray(window.classify_s) * 1000
    statuses = Counter()
    for (_, status), count in window.statuses.items():
        statuses[status] += count
    return {
        **_cache_gauges(server),
        "t_s": round(at_s, 1),
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "classify_p50_ms": round(float(np.percentile(latency, 50)), 1) if latency.size else None,
        "classify_p99_ms": round(float(np.percentile(latency, 99)), 1) if latency.size else None,
        "server_rss_mb": server_rss,
        "engine_rss_mb": round(sum(engines), 1),
        "rss_mb": round(server_rss + sum(engines), 1),
    }


def _cache_gauges(server) -> dict:
    """The device tier's entries, bytes and misses so far (/metrics): whether memory follows the cache."""
    names = {'prefix_server_tier_entries{tier="device"}': "cache_entries", 'prefix_server_tier_bytes{tier="device"}': "cache_mb",
             'prefix_server_tier_misses_total{tier="device"}': "cache_misses"}
    try:
        # Multi-tenant, /metrics answers the admin token only (every tenant's traffic is on it).
        response = httpx.get(f"{server.base}/metrics", headers={"Authorization": f"Bearer {http_servers.ADMIN_TOKEN}"}, timeout=10)
        response.raise_for_status()
        text = response.text
    except httpx.HTTPError:
        return {}
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            values[names[name]] = round(float(value) / (2**20 if names[name] == "cache_mb" else 1), 1)
    return values


def _progress_line(sample: dict) -> str:
    return (f"  t={sample['t_s']:.0f}s requests={sample['requests']} statuses={sample['statuses']} "
            f"rss={sample['rss_mb']} MiB (server {sample['server_rss_mb']}, engine {sample['engine_rss_mb']})")


def summarize(config: SoakConfig, samples: list[dict], totals: Counter, wall_s: float, pools: TextPools) -> dict:
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, status), count in sorted(totals.items()):
        by_kind.setdefault(kind, {})[str(status)] = count
    unexpected = {f"{kind} -> {status}": count for (kind, status), count in totals.items()
                  if status not in EXPECTED.get(kind, set())}
    server_errors = sum(count for (_, status), count in totals.items() if status >= 500 or status == 0)
    warm = [s for s in samples if s["t_s"] <= wall_s * config.warmup_fraction]
    after = [s for s in samples if s["t_s"] > wall_s * config.warmup_fraction]
    baseline = (warm or samples[:1])[-1]["rss_mb"]
    peak = max((s["rss_mb"] for s in after), default=baseline)
    growth = round(peak / baseline - 1, 4) if baseline else None
    flat = growth is not None and growth <= config.rss_tolerance
    return {
        "level": "soak",
        "config": {k: v for k, v in vars(config).items()},
        "texts": pools.describe(),
        "wall_s": round(wall_s, 1),
        "requests": sum(totals.values()),
        "by_kind": by_kind,
        "unexpected": unexpected,
        "server_errors": server_errors,
        "samples": samples,
        "rss": {"after_warmup_mb": baseline, "peak_after_warmup_mb": peak, "growth": growth, "flat": flat},
        "passed": flat and server_errors == 0 and not unexpected,
    }


def render_sections(result: dict) -> list[str]:
    """The soak's Markdown: the verdict, RSS and statuses over time, the totals per kind of request."""
    rss, config = result["rss"], result["config"]
    growth = "—" if rss["growth"] is None else f"{rss['growth'] * 100:+.1f}%"
    lines = [
        "## Verdict", "",
        f"- {result['requests']} requests in {result['wall_s']} s ({config['rate']} req/s asked, "
        f"{result['requests'] / max(result['wall_s'], 1e-9):.1f} answered/s), {config['tasks']} tasks over {config['tenants']} tenants",
        f"- 5xx or no answer: {result['server_errors']}; statuses outside what each request may answer: "
        f"{result['unexpected'] or 'none'}",
        f"- RSS (server + engine) at the end of the warm-up ({config['warmup_fraction']:.0%} of the run): "
        f"{rss['after_warmup_mb']} MiB; peak after it: {rss['peak_after_warmup_mb']} MiB ({growth}; flat means "
        f"<= +{config['rss_tolerance']:.0%}): {'flat' if rss['flat'] else 'NOT flat'}",
        f"- passed: **{'yes' if result['passed'] else 'no'}**", "",
        "## Over time", "",
        "| t (min) | requests | statuses | classify p50 ms | classify p99 ms | server RSS MiB | engine RSS MiB | total RSS MiB"
        " | prefix cache: entries, MiB, misses so far |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in result["samples"]:
        statuses = " ".join(f"{k}:{v}" for k, v in s["statuses"].items())
        lines.append(f"| {s['t_s'] / 60:.2f} | {s['requests']} | {statuses} | {_cell(s['classify_p50_ms'])} | "
                     f"{_cell(s['classify_p99_ms'])} | {s['server_rss_mb']} | {s['engine_rss_mb']} | {s['rss_mb']} | "
                     f"{_cell(s.get('cache_entries'))}, {_cell(s.get('cache_mb'))}, {_cell(s.get('cache_misses'))} |")
    lines += ["", "## Totals per kind of request", "", "| request | statuses | expected |", "|---|---|---|"]
    for kind, statuses in result["by_kind"].items():
        shown = " ".join(f"{k}:{v}" for k, v in statuses.items())
        lines.append(f"| {kind} | {shown} | {', '.join(map(str, sorted(EXPECTED.get(kind, ()))))} |")
    return lines + [""]


def _cell(value) -> str:
    return "—" if value is None else f"{value}"
