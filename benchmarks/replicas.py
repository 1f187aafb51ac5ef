"""Replica benchmarks (issue 10, BENCHMARKS.md "Replicas"): real `serve` processes on a PostgreSQL
server and an S3 server (moto) that this script starts itself, on the MiniLM backbone.

1. propagation: an upload through replica A until replica B first answers with the new version,
   p50/p99 over N uploads, with NOTIFY and with it off (the TTL alone);
2. hot path: one closed-loop load against one replica on SQLite + files, one on PostgreSQL + S3, and
   two on PostgreSQL + S3 sharing it, in interleaved rounds (ratios against the SQLite one);
3. cold start: a new replica on a registry holding 1,000 tasks: time to ready, then the first
   classify of 100 distinct tasks (lookups and prefix loads from the store) against a second pass.

Run from the repository root: `python -m benchmarks.replicas --out bench-results/replicas.json`.
It starts the servers with the harness the tests use (harness/postgres.py, harness/s3.py, harness/replicas.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.http_client import Call, HttpPool, LoadResult, closed_loop  # noqa: E402
from benchmarks.stats import latency_summary  # noqa: E402
from benchmarks.workload import build_tasks, generate_requests, load_text_pools, make_tasks, synthetic_pools  # noqa: E402
from harness.postgres import PostgresServer, postgres_bin_dir  # noqa: E402
from harness.replicas import ADMIN, Replica, replica_env, start_replicas  # noqa: E402
from harness.s3 import S3Server, client_for  # noqa: E402
from server.engine.backbone import default_backbone_dir  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Services:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.pg = PostgresServer(postgres_bin_dir(), Path(tempfile.mkdtemp(prefix="bench-pg-")))
        self.pg.start()
        self.s3 = S3Server(workdir / "s3.log")
        self.s3.start()
        self.buckets = 0

    def fresh(self) -> tuple[str, str]:
        self.buckets += 1
        bucket = f"bench-{self.buckets}"
        client_for(self.s3.endpoint).create_bucket(Bucket=bucket)
        return self.pg.fresh_database(), f"s3://{bucket}/p"

    def close(self) -> None:
        self.s3.stop()
        self.pg.stop()


def make_tenant(replica: Replica, name: str) -> str:
    response = httpx.post(f"{replica.base}/v1/admin/tenants", json={"name": name},
                          headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    response.raise_for_status()
    return response.json()["api_key"]


def propagation(services: Services, backbone: Path, uploads: int, notify: bool, tasks) -> dict:
    database_url, blob_url = services.fresh()
    tag = "notify" if notify else "ttl"
    a, b = start_replicas([f"a-{tag}", f"b-{tag}"], services.workdir, backbone=backbone, database_url=database_url,
                          blob_url=blob_url, s3_endpoint=services.s3.endpoint, PREFIX_SERVER_LOG_LEVEL="WARNING",
                          PREFIX_SERVER_REGISTRY_NOTIFY=str(notify).lower())
    try:
        key = make_tenant(a, "probe")
        headers = {"Authorization": f"Bearer {key}"}
        body = {"task": "probe", "inputs": ["a short probe"]}
        seen = []
        with httpx.Client(base_url=a.base, headers=headers, timeout=30) as ca, \
                httpx.Client(base_url=b.base, headers=headers, timeout=30) as cb:
            for i in range(uploads):
                artifact = tasks[i % len(tasks)].data
                version = ca.put("/v1/tasks/probe", files={"file": ("p.safetensors", artifact)}).json()["version"]
                committed = time.perf_counter()
                while True:
                    answer = cb.post("/v1/classify", json=body)
                    if answer.status_code == 200 and answer.json()["version"] == version:
                        break
                    time.sleep(0.002)
                seen.append(time.perf_counter() - committed)
        return {"notify": notify, "uploads": uploads, "p50_ms": round(1000 * percentile(seen, 0.5), 1),
                "p99_ms": round(1000 * percentile(seen, 0.99), 1), "max_ms": round(1000 * max(seen), 1)}
    finally:
        a.stop()
        b.stop()


def register(replica: Replica, tasks) -> dict[str, str]:
    keys = {}
    for task in tasks:
        if task.spec.tenant not in keys:
            keys[task.spec.tenant] = make_tenant(replica, task.spec.tenant)
        response = httpx.put(f"{replica.base}/v1/tasks/{task.spec.name}", files={"file": ("p.safetensors", task.data)},
                             headers={"Authorization": f"Bearer {keys[task.spec.tenant]}"}, timeout=60)
        response.raise_for_status()
    return keys


def prepared_calls(tasks, keys, pools, count: int) -> list[Call]:
    requests = generate_requests(pools, len(tasks), count, 1, seed=7)
    calls = []
    for request in requests:
        spec = tasks[request.task].spec
        inputs = [text if isinstance(text, str) else {"text": text[0], "text_pair": text[1]} for text in request.inputs]
        body = json.dumps({"task": spec.name, "inputs": inputs}).encode()
        calls.append(Call(body, f"Authorization: Bearer {keys[spec.tenant]}\r\n", 1))
    return calls


def load_round(replicas: list[Replica], calls: list[Call], concurrency: int, seconds: float) -> LoadResult:
    """One closed loop split evenly over the replicas (as a balancer would), measured after a warm-up."""

    async def main():
        pools = [HttpPool("127.0.0.1", r.port) for r in replicas]
        share = len(calls) // len(replicas)
        try:
            parts = await asyncio.gather(*(
                closed_loop(pool, calls[i * share:(i + 1) * share], concurrency // len(replicas),
                            max_seconds=seconds, warmup=100)
                for i, pool in enumerate(pools)))
        finally:
            for pool in pools:
                await pool.close()
        total = LoadResult(wall_s=max(p.wall_s for p in parts))
        for part in parts:
            total.absorb(part)
        return total

    return asyncio.run(main())


def hot_path(services: Services, backbone: Path, tasks, pools, rounds: int, seconds: float, concurrency: int) -> dict:
    database_url, blob_url = services.fresh()
    common = dict(backbone=backbone, s3_endpoint=services.s3.endpoint, PREFIX_SERVER_LOG_LEVEL="WARNING")
    sqlite = start_replicas(["hot-sqlite"], services.workdir, database_url=f"sqlite:///{services.workdir}/hot.sqlite3",
                            blob_url=f"file://{services.workdir}/hot-blobs", **common)
    pg = start_replicas(["hot-pg-a", "hot-pg-b"], services.workdir, database_url=database_url, blob_url=blob_url, **common)
    setups = {"sqlite+file, 1 replica": sqlite, "postgresql+s3, 1 replica": pg[:1], "postgresql+s3, 2 replicas": pg}
    try:
        keys_sqlite, keys_pg = register(sqlite[0], tasks), register(pg[0], tasks)
        calls = {"sqlite": prepared_calls(tasks, keys_sqlite, pools, 40_000), "pg": prepared_calls(tasks, keys_pg, pools, 40_000)}
        results: dict[str, list[LoadResult]] = {name: [] for name in setups}
        for r in range(rounds):
            order = list(setups) if r % 2 == 0 else list(reversed(setups))
            for name in order:
                results[name].append(load_round(setups[name], calls["sqlite" if "sqlite" in name else "pg"],
                                                concurrency, seconds))
        summary = {}
        for name, runs in results.items():
            throughputs = [run.inputs_ok / run.wall_s for run in runs]
            p99s = [latency_summary(run.latencies)["p99_ms"] for run in runs]
            statuses: dict[str, int] = {}
            for run in runs:
                for status, times in run.statuses.items():
                    statuses[status] = statuses.get(status, 0) + times
            summary[name] = {"inputs_per_s": [round(t, 1) for t in throughputs], "p99_ms": p99s, "statuses": statuses}
        base = summary["sqlite+file, 1 replica"]
        for entry in summary.values():
            entry["throughput_ratio"] = round(statistics.median(
                [t / b for t, b in zip(entry["inputs_per_s"], base["inputs_per_s"])]), 3)
            entry["p99_ratio"] = round(statistics.median([p / b for p, b in zip(entry["p99_ms"], base["p99_ms"])]), 3)
        return summary
    finally:
        for replica in sqlite + pg:
            replica.stop()


def time_to_ready(name: str, workdir: Path, common: dict) -> tuple[Replica, float]:
    replica = Replica(name, replica_env(name, workdir, **common), workdir / f"{name}.log")
    launched = time.perf_counter()
    replica.launch()
    replica.wait_ready()
    return replica, time.perf_counter() - launched


def cold_start(services: Services, backbone: Path, tasks, probe: int) -> dict:
    """Per store: a replica's time to ready on an empty registry (the baseline), then on one holding
    `tasks`, and the first classify of `probe` distinct tasks on it against a second pass."""
    out = {}
    database_url, blob_url = services.fresh()
    stores = {"postgresql+s3": (database_url, blob_url),
              "sqlite+file": (f"sqlite:///{services.workdir}/cold.sqlite3", f"file://{services.workdir}/cold-blobs")}
    for label, (db, blobs) in stores.items():
        common = dict(backbone=backbone, database_url=db, blob_url=blobs, s3_endpoint=services.s3.endpoint,
                      PREFIX_SERVER_LOG_LEVEL="WARNING")
        seeder, empty_ready_s = time_to_ready(f"empty-{label}", services.workdir, common)
        started = time.perf_counter()
        keys = register(seeder, tasks)
        registered_s = time.perf_counter() - started
        seeder.stop()
        fresh, ready_s = time_to_ready(f"cold-{label}", services.workdir, common)
        passes = []
        for _ in range(2):
            began = time.perf_counter()
            for task in tasks[:probe]:
                response = httpx.post(f"{fresh.base}/v1/classify", json={"task": task.spec.name, "inputs": ["cold start"]},
                                      headers={"Authorization": f"Bearer {keys[task.spec.tenant]}"}, timeout=30)
                response.raise_for_status()
            passes.append((time.perf_counter() - began) / probe)
        fresh.stop()
        out[label] = {"tasks": len(tasks), "register_s": round(registered_s, 1), "ready_empty_s": round(empty_ready_s, 2),
                      "ready_s": round(ready_s, 2), "first_classify_ms": round(1000 * passes[0], 1),
                      "warm_classify_ms": round(1000 * passes[1], 1)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results/replicas.json")
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--ttl-uploads", type=int, default=30, help="with NOTIFY off each takes up to the 5 s TTL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cold-tasks", type=int, default=1000)
    parser.add_argument("--sections", default="propagation,hot,cold")
    args = parser.parse_args()
    backbone = default_backbone_dir()
    from server.engine import Engine

    shape = Engine.from_folder(backbone).shape
    try:
        pools = load_text_pools()
    except Exception:  # noqa: BLE001 — no ../shared data: the synthetic pools stand in
        pools = synthetic_pools()
    workdir = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    services = Services(workdir)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
              "cpus": __import__("os").cpu_count(), "backbone": str(backbone)}
    sections = set(args.sections.split(","))
    try:
        if "propagation" in sections:
            probes = build_tasks(shape, make_tasks(8, seed=3, tag="probe"))
            report["propagation"] = [propagation(services, backbone, count, notify, probes)
                                    for notify, count in ((True, args.uploads), (False, args.ttl_uploads))]
            print(json.dumps(report["propagation"], indent=1), flush=True)
        if "hot" in sections:
            hot_tasks = build_tasks(shape, make_tasks(64, seed=1, tag="hot"))
            report["hot_path"] = hot_path(services, backbone, hot_tasks, pools, args.rounds, args.seconds, args.concurrency)
            print(json.dumps(report["hot_path"], indent=1), flush=True)
        if "cold" in sections:
            cold_tasks = build_tasks(shape, make_tasks(args.cold_tasks, seed=2, tag="cold"))
            report["cold_start"] = cold_start(services, backbone, cold_tasks, probe=100)
            print(json.dumps(report["cold_start"], indent=1), flush=True)
    finally:
        services.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
