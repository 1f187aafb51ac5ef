"""Affinity behind nginx (issue 20, BENCHMARKS.md "Affinity behind nginx"): the fleet's device+host hit
rate with deploy/affinity/nginx.conf as shipped (consistent hashing on the task) against the same upstream
balanced round-robin, on the same request sequence, and how many of each task's requests reach one replica.

Three real `serve` replicas (default MiniLM backbone, engine processes, float32) on one PostgreSQL
database and one S3 bucket (moto), all started here with harness/ (postgres, s3, replicas, nginx). The
tasks (P=16, float16, one size) are uploaded once; each mode then starts three fresh replicas (cold
tiers) and nginx, and sends two workloads of disjoint tasks through it, each in two halves:
(a) Zipf(s) over `--tasks` tasks; (b) uniform over a working set of twice one replica's device+host
capacity. Budgets are set in bytes to hold `--device-tasks` tasks on the device and `--host-tasks` in
host memory (a task's device bytes read from a replica's own gauge).

Hit rate = (device hits + host hits) / device lookups, summed over the replicas from /metrics deltas:
the fraction of requests answered without a store fetch (every request looks its task up on the device
once; a device miss looks it up in host memory; a host miss fetches from the store). Where each request
went comes from nginx's access log ($upstream_addr, the X-Served-By header's value). Beside the
measurement: the ideal ratio (static caches of the most popular tasks: H_s(3C)/H_s(C), C = one
replica's capacity in tasks), the tiers' LRU logic replayed on the exact per-replica request order, and
for the Zipf workload that replay at other budgets (the hash run's placement against round-robin).

    python -m benchmarks.affinity --out bench-results/affinity.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from collections import Counter, OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.http_client import Call, run_closed_loop
from benchmarks.replicas import Services
from benchmarks.tiers_harness import artifact_bytes
from benchmarks.workload import DataMissing, load_text_pools, synthetic_pools
from harness.nginx import Nginx, Routed
from harness.processes import free_port
from harness.replicas import Replica, create_tenant, start_replicas
from server.engine.backbone import default_backbone_dir, read_backbone_folder

ROOT = Path(__file__).resolve().parents[1]
REPLICAS = ("a", "b", "c")
TIER_COUNTER = re.compile(r'^prefix_server_tier_(hits|misses)_total\{tier="(device|host)"\} (\S+)$', re.M)
DEVICE_BYTES = re.compile(r'^prefix_server_tier_bytes\{tier="device"\} (\S+)$', re.M)


@dataclass(frozen=True)
class Workload:
    name: str
    tasks: list[str]
    sequence: list[int]  # the task of each request, by index into `tasks`
    ideal_ratio: float  # hashing over round-robin with ideal caches of each replica's capacity


def harmonic(n: int, s: float) -> float:
    return float((np.arange(1, n + 1, dtype=np.float64) ** -s).sum())


def zipf_workload(tasks: int, requests: int, s: float, capacity: int, seed: int) -> Workload:
    weights = np.arange(1, tasks + 1, dtype=np.float64) ** -s
    sequence = np.random.default_rng(seed).choice(tasks, size=requests, p=weights / weights.sum())
    ideal = harmonic(min(3 * capacity, tasks), s) / harmonic(min(capacity, tasks), s)
    return Workload(f"zipf({s:g}) over {tasks} tasks", [f"zipf-{i:05d}" for i in range(tasks)], sequence.tolist(), ideal)


def uniform_workload(tasks: int, requests: int, capacity: int, seed: int) -> Workload:
    sequence = np.random.default_rng(seed + 1).integers(tasks, size=requests)
    ideal = min(3 * capacity, tasks) / min(capacity, tasks)
    return Workload(f"uniform over {tasks} tasks", [f"uniform-{i:04d}" for i in range(tasks)], sequence.tolist(), ideal)


def seed_registry(services: Services, workdir: Path, artifacts: dict[str, bytes], common: dict) -> tuple[dict, str, int]:
    """Uploads every task once through a replica of its own (stopped afterwards), and reads a task's
    device bytes from that replica's gauge after one classify. Returns the registry's settings, the
    tenant's key and those bytes."""
    database_url, blob_url = services.fresh()
    common = {**common, "database_url": database_url, "blob_url": blob_url}
    (seeder,) = start_replicas(["seeder"], workdir, **common)
    try:
        key = create_tenant(seeder, "fleet", max_tasks=len(artifacts) + 1)
        with seeder.client(key, timeout=120) as client, ThreadPoolExecutor(4) as pool:
            def upload(item: tuple[str, bytes]) -> None:
                client.put(f"/v1/tasks/{item[0]}", files={"file": ("p.safetensors", item[1])}).raise_for_status()

            list(pool.map(upload, artifacts.items()))
            probe = next(iter(artifacts))
            client.post("/v1/classify", json={"task": probe, "inputs": ["probe"]}).raise_for_status()
        with seeder.client() as admin:
            device_bytes = int(float(DEVICE_BYTES.search(admin.get("/metrics").text).group(1)))
    finally:
        seeder.stop()
    return common, key, device_bytes


def tier_counters(replica: Replica) -> Counter:
    with replica.client() as admin:
        text = admin.get("/metrics").text
    return Counter({f"{tier}_{kind}": float(value) for kind, tier, value in TIER_COUNTER.findall(text)})


def calls_for(workload: Workload, key: str, texts: list) -> list[Call]:
    calls = []
    for i, index in enumerate(workload.sequence):
        task = workload.tasks[index]
        body = json.dumps({"task": task, "inputs": [texts[i % len(texts)]]}).encode()
        calls.append(Call(body, f"Authorization: Bearer {key}\r\nX-Prefix-Task: {task}\r\n", 1))
    return calls


def run_half(nginx: Nginx, replicas: list[Replica], calls: list[Call], concurrency: int) -> dict:
    """One closed loop through nginx: the tier counters' deltas per replica and what nginx logged."""
    before, offset = [tier_counters(r) for r in replicas], nginx.log_size()
    started = time.perf_counter()
    result = run_closed_loop(nginx.port, calls, concurrency, timeout_s=120.0)
    seconds = time.perf_counter() - started
    deltas = {f"127.0.0.1:{r.port}": tier_counters(r) - b for r, b in zip(replicas, before)}
    return {"counters": deltas, "routed": nginx.routed(offset), "statuses": result.statuses, "seconds": seconds}


def hit_rates(counters: dict[str, Counter]) -> dict:
    total = sum(counters.values(), Counter())
    lookups = total["device_hits"] + total["device_misses"]
    return {"lookups": int(lookups), "store_fetches": int(total["host_misses"]),
            "device": round(total["device_hits"] / lookups, 4), "host": round(total["host_hits"] / lookups, 4),
            "fleet": round((total["device_hits"] + total["host_hits"]) / lookups, 4)}


def replicas_by_task(routed: list[Routed]) -> dict[str, Counter]:
    per_task: dict[str, Counter] = defaultdict(Counter)
    for request in routed:
        per_task[request.task][request.replica] += 1
    return per_task


def modal_share(routed: list[Routed]) -> dict:
    """Per task, the share of its requests on the replica that answered most of them: the minimum over
    tasks with at least 2 requests (one request is trivially on one replica), and the request-weighted mean."""
    per_task = replicas_by_task(routed)
    repeated = [c.most_common(1)[0][1] / c.total() for c in per_task.values() if c.total() >= 2]
    modal = sum(c.most_common(1)[0][1] for c in per_task.values())
    return {"tasks": len(per_task), "min_over_tasks_with_2_or_more": round(min(repeated), 4),
            "request_weighted_mean": round(modal / len(routed), 4)}


def replay_tiers(routed: list[Routed], device_tasks: int, host_tasks: int) -> list[bool]:
    """Per request, whether the tiers' logic (prefix_cache.py over host_tier.py: an LRU each, tasks of
    one size, a device miss reads through the host tier, which keeps what it fetched) answers it without
    a store fetch, on the replica nginx sent it to, in the order nginx logged them."""
    tiers: dict[str, tuple[OrderedDict, OrderedDict]] = defaultdict(lambda: (OrderedDict(), OrderedDict()))
    answered = []
    for request in routed:
        device, host = tiers[request.replica]
        if request.task in device:
            device.move_to_end(request.task)
            answered.append(True)
            continue
        answered.append(request.task in host)
        if request.task in host:
            host.move_to_end(request.task)
        else:
            host[request.task] = True
            while len(host) > host_tasks:
                host.popitem(last=False)
        device[request.task] = True
        while len(device) > device_tasks:
            device.popitem(last=False)
    return answered


def replayed_sweep(workload: Workload, placement: dict[str, str], host_per_device: int,
                   device_counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> list[dict]:
    """The tiers' LRU replayed on the workload's sequence at other budgets (host = `host_per_device` x
    device): each task on the replica the hash run put it on, against round-robin by position; the
    second half's hit rates. How far the ratio is from 2 at every budget, not only the measured one."""
    names = [workload.tasks[index] for index in workload.sequence]
    hashed = [Routed(task, placement.get(task, ""), 200) for task in names]
    balanced = [Routed(task, str(i % len(REPLICAS)), 200) for i, task in enumerate(names)]
    sweep = []
    for device in device_counts:
        rates = [np.mean(replay_tiers(routed, device, host_per_device * device)[len(names) // 2:]) for routed in (hashed, balanced)]
        sweep.append({"device_tasks": device, "host_tasks": host_per_device * device, "hash": round(float(rates[0]), 4),
                      "round_robin": round(float(rates[1]), 4), "ratio": round(float(rates[0] / rates[1]), 3)})
    return sweep


def modal_replicas(routed: list[Routed]) -> dict[str, str]:
    return {task: replicas.most_common(1)[0][0] for task, replicas in replicas_by_task(routed).items()}


def summarize(halves: list[dict], device_tasks: int, host_tasks: int) -> dict:
    routed = halves[0]["routed"] + halves[1]["routed"]
    whole = {a: halves[0]["counters"].get(a, Counter()) + halves[1]["counters"].get(a, Counter())
             for a in halves[0]["counters"]}
    replayed = replay_tiers(routed, device_tasks, host_tasks)
    second = replayed[len(halves[0]["routed"]):]
    statuses = sum((Counter(h["statuses"]) for h in halves), Counter())
    return {"whole": hit_rates(whole), "second_half": hit_rates(halves[1]["counters"]),
            "replayed_lru": {"whole": round(sum(replayed) / len(replayed), 4), "second_half": round(sum(second) / len(second), 4)},
            "modal_share": modal_share(routed), "statuses": dict(statuses),
            "per_replica": {a: {"requests": sum(r.replica == a for r in routed), **{k: int(v) for k, v in c.items()}}
                            for a, c in whole.items()},
            "seconds": round(sum(h["seconds"] for h in halves), 1)}


def run_mode(hashing: bool, workloads: list[Workload], services: Services, workdir: Path, env: dict, key: str,
             args, texts: list) -> tuple[dict, dict]:
    """Three fresh replicas (cold tiers) behind nginx, hashing or round-robin; each workload in two halves.
    Returns the summaries and each task's modal replica, by workload."""
    mode = "hash" if hashing else "round-robin"
    names = [f"{mode}-{name}" for name in REPLICAS]
    replicas = start_replicas(names, workdir, **env)
    (workdir / mode).mkdir()
    nginx = Nginx(workdir / mode, [r.port for r in replicas], free_port(), hashing=hashing)
    results, placements = {}, {}
    try:
        nginx.start()
        for workload in workloads:
            calls = calls_for(workload, key, texts)
            middle = len(calls) // 2
            halves = [run_half(nginx, replicas, part, args.concurrency) for part in (calls[:middle], calls[middle:])]
            results[workload.name] = summarize(halves, args.device_tasks, args.host_tasks)
            placements[workload.name] = modal_replicas(halves[0]["routed"] + halves[1]["routed"])
            print(f"{mode} {workload.name}: {json.dumps(results[workload.name]['second_half'])}", flush=True)
    finally:
        nginx.stop()
        for replica in replicas:
            replica.stop()
    return results, placements


def compare(workload: Workload, hashed: dict, balanced: dict, capacity: int) -> dict:
    ratio = {part: round(hashed[part]["fleet"] / balanced[part]["fleet"], 3) for part in ("whole", "second_half")}
    fewer_fetches = round(balanced["second_half"]["store_fetches"] / max(1, hashed["second_half"]["store_fetches"]), 2)
    share = hashed["modal_share"]["min_over_tasks_with_2_or_more"]
    return {"tasks": len(workload.tasks), "requests": len(workload.sequence),
            "distinct_tasks_drawn": len(set(workload.sequence)), "capacity_per_replica_tasks": capacity,
            "ideal_ratio": round(workload.ideal_ratio, 3), "hit_rate_ratio": ratio,
            "store_fetches_round_robin_over_hash": fewer_fetches,
            "met": {"modal_share_at_least_0.95": share >= 0.95, "ratio_at_least_2": ratio["second_half"] >= 2.0},
            "hash": hashed, "round_robin": balanced}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(memory_kb / 2**20, 1), "nginx": nginx, "commit": commit}


def texts_for_requests() -> list:
    try:
        return load_text_pools().sources["sst2"]
    except (DataMissing, KeyError):
        return [t for ts in synthetic_pools().sources.values() for t in ts if isinstance(t, str)]


def run(args, workdir: Path) -> dict:
    capacity = args.device_tasks + args.host_tasks
    workloads = [zipf_workload(args.tasks, args.zipf_requests, args.zipf, capacity, args.seed),
                 uniform_workload(2 * capacity, args.uniform_requests, capacity, args.seed)]
    backbone = default_backbone_dir()
    shape = read_backbone_folder(backbone).shape()
    artifacts = {name: artifact_bytes(shape, seed) for seed, name in enumerate(t for w in workloads for t in w.tasks)}
    services = Services(workdir)
    started = time.perf_counter()
    try:
        common = dict(backbone=backbone, s3_endpoint=services.s3.endpoint, PREFIX_SERVER_LOG_LEVEL="WARNING")
        env, key, device_task_bytes = seed_registry(services, workdir, artifacts, common)
        seeded_s = time.perf_counter() - started
        host_task_bytes = max(len(data) for data in artifacts.values())
        budgets = {"PREFIX_SERVER_DEVICE_CACHE_BYTES": str(args.device_tasks * device_task_bytes + device_task_bytes // 2),
                   "PREFIX_SERVER_HOST_CACHE_BYTES": str(args.host_tasks * host_task_bytes + host_task_bytes // 2)}
        texts = texts_for_requests()
        modes = {hashing: run_mode(hashing, workloads, services, workdir, {**env, **budgets}, key, args, texts)
                 for hashing in (True, False)}
    finally:
        services.close()
    return {"budgets": {"device_tasks": args.device_tasks, "host_tasks": args.host_tasks, "device_task_bytes": device_task_bytes,
                        "artifact_bytes": host_task_bytes, **budgets},
            "ideal_ratio_max_zipf": round(harmonic(3, args.zipf) / harmonic(1, args.zipf), 3),
            "workloads": {w.name: compare(w, modes[True][0][w.name], modes[False][0][w.name], capacity) for w in workloads},
            "zipf_replayed_sweep": replayed_sweep(workloads[0], modes[True][1][workloads[0].name], args.host_tasks // args.device_tasks),
            "seconds": {"upload_and_probe": round(seeded_s, 1), "total": round(time.perf_counter() - started, 1)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks of the Zipf workload")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--zipf-requests", type=int, default=20000)
    parser.add_argument("--uniform-requests", type=int, default=4000)
    parser.add_argument("--device-tasks", type=int, default=16, help="each replica's device budget, in tasks")
    parser.add_argument("--host-tasks", type=int, default=48, help="each replica's host budget, in tasks")
    parser.add_argument("--concurrency", type=int, default=6, help="requests in flight through nginx")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench-results/affinity.json"))
    args = parser.parse_args(argv)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
              "backbone": str(default_backbone_dir()), "settings": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="bench-affinity-") as tmp:
        report |= run(args, Path(tmp))
    report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({name: {k: v for k, v in w.items() if k not in ("hash", "round_robin")}
                      for name, w in report["workloads"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
