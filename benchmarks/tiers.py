"""Tiers at scale (issue 20, SPEC 6), in one run: the serving side as `serve` builds it (Batcher, the
device tier `PrefixCache`, the `HostTier`) over the engine in its own process (default MiniLM, float32;
`--engine-in-process` for the engine in this one), with tasks of P=16 stored in float16 (about 147 KB
each, as the trainer writes them).

1. cold vs warm first answer: single requests one after another, alternating a task already on the
   device and a task never seen, read from a file blob store on the local disk; the cold side split
   into the store read, the engine's load (parse and copy) and the rest;
2. warm latency beside a stream of cold tasks: a closed loop over 64 resident tasks beside a stream of
   requests one at a time, each for a new task (one fetch and load each) or, as the baseline, all for a
   resident task (the same extra work, no fetch), rounds alternating;
3. Zipf(s) over `--tasks` tasks whose artifacts a synthetic store makes on demand (no disk holds 10^5 of
   them), with the host budget `--host-fraction` of all tasks' bytes and the device budget `--device-tasks`
   tasks: hit rates per tier and throughput against the same request stream over 64 resident tasks
   (all warm), rounds alternating, after `--warmup` other draws of the distribution have filled the
   tiers (a server that has been running, not one just started);
4. /metrics' size after touching 10 tasks and after all of the above, and the process's RSS against the
   backbone plus the two budgets.

    python -m benchmarks.tiers [--tasks 100000] [--requests 3000] [--rounds 3] [--warmup 6000] [--out tiers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.stats import proc_memory
from benchmarks.tiers_harness import (
    Timed,
    TimedEngine,
    artifact_bytes,
    batches,
    closed_loop,
    cpu_seconds,
    metrics_size,
    pct,
    rss_both,
    tier_counts,
    timed,
)
from benchmarks.workload import DataMissing, load_text_pools, synthetic_pools
from server.artifact import read_artifact
from server.batching import Batcher, BatchLimits, PrefixCache
from server.batching.host_tier import HostTier
from server.engine import Engine, TextEncoder
from server.engine.backbone import default_backbone_dir
from server.engine.process import EngineProcess
from server.registry.blobs.local import FileBlobStore


async def cold_vs_warm(batcher, store: Timed, engine: TimedEngine, cold_keys: list[str], texts) -> dict:
    warm_key = "synthetic-0"
    await timed(batcher, warm_key, texts[0])
    store.read_seconds.clear(), engine.load_seconds.clear()
    warm, cold = [], []
    for i, key in enumerate(cold_keys):
        warm.append(await timed(batcher, warm_key, texts[i % len(texts)]))
        cold.append(await timed(batcher, key, texts[i % len(texts)]))
    return {
        "requests_each": len(cold_keys),
        "warm_ms": {"p50": pct(warm, 50), "p99": pct(warm, 99)},
        "cold_ms": {"p50": pct(cold, 50), "p99": pct(cold, 99)},
        "cold_store_read_ms": {"p50": pct(store.read_seconds, 50), "p99": pct(store.read_seconds, 99)},
        "cold_engine_load_ms": {"p50": pct(engine.load_seconds, 50), "p99": pct(engine.load_seconds, 99)},
        "cold_engine_load_split_ms": parse_and_copy(engine, store, cold_keys),
        "cold_p99_minus_warm_p99_ms": round(pct(cold, 99) - pct(warm, 99), 2),
    }


def parse_and_copy(engine: TimedEngine, store: Timed, keys: list[str]) -> dict:
    """The engine's load split in two, measured again on the same artifacts after the timed run, one at a
    time and with nothing else running: the parse (header checks, tensors, finiteness) and the rest of
    the load (the copy into the pools)."""
    parse, load = [], []
    for i, key in enumerate(keys):
        data = store.files.read(key)
        started = time.perf_counter()
        read_artifact(data, engine.shape)
        parse.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.engine.load_task(10**9 + i, data)
        load.append(time.perf_counter() - started)
        engine.engine.release_task(10**9 + i)
    copy = [max(total - parsed, 0.0) for total, parsed in zip(load, parse)]
    return {"parse": {"p50": pct(parse, 50), "p99": pct(parse, 99)}, "copy": {"p50": pct(copy, 50), "p99": pct(copy, 99)}}


async def warm_beside_cold(batcher, texts, requests: int, rounds: int, first_cold: int) -> dict:
    """Warm p99 beside a stream of one request at a time, either each for a new task (one fetch and load
    each) or all for a resident task: the same extra work, so the ratio is the cost of the coldness."""
    warm_keys = [f"synthetic-{i}" for i in range(1, 65)]
    await closed_loop(batcher, [*warm_keys, "synthetic-65"], texts, 130, 8)  # all 65 resident
    p99s: dict[bool, list[float]] = {False: [], True: []}
    streamed: dict[bool, int] = {False: 0, True: 0}
    next_cold = first_cold
    for round_index in range(rounds):
        for cold in ((False, True) if round_index % 2 == 0 else (True, False)):
            stop = asyncio.Event()

            async def stream(stop: asyncio.Event, cold: bool):
                nonlocal next_cold
                while not stop.is_set():
                    next_cold += cold
                    await timed(batcher, f"synthetic-{next_cold if cold else 65}", texts[0])
                    streamed[cold] += 1

            side = asyncio.create_task(stream(stop, cold))
            latencies, _ = await closed_loop(batcher, warm_keys, texts, requests, 8)
            stop.set()
            await side
            p99s[cold].append(pct(latencies, 99))
    return {"warm_p99_ms_beside_a_warm_stream": p99s[False], "warm_p99_ms_beside_a_cold_stream": p99s[True],
            "stream_requests": {"warm": streamed[False], "cold": streamed[True]},
            "ratio_median": round(statistics.median(c / w for w, c in zip(p99s[False], p99s[True])), 3)}


async def zipf(batcher, engine, args, texts, first: int) -> dict:
    """Throughput (and CPU per input, both processes) of the Zipf stream against the same stream over 64
    resident tasks, at `--zipf-in-flight` clients: enough that every batch fills on both sides, so the
    ratio is the tiers' cost and not the closed loop's luck (at 16 clients the loads split the clients
    into two groups of 8 that then take turns, and an all-warm run stays in step or not by chance)."""
    rng = np.random.default_rng(7)
    weights = np.arange(1, args.tasks + 1) ** -args.zipf
    draws = rng.choice(args.tasks, size=args.requests * args.rounds, p=weights / weights.sum())
    # A server that has been running on this distribution: tiers filled by other draws of it, not timed.
    warmup = rng.choice(args.tasks, size=args.warmup, p=weights / weights.sum())
    await closed_loop(batcher, [f"synthetic-{first + int(i)}" for i in warmup], texts, len(warmup), args.zipf_in_flight)
    sides = {kind: {"inputs_per_s": [], "cpu_ms_per_input": [], "mean_batch": []} for kind in ("tiered", "warm")}
    hit_rates = []
    for r in range(args.rounds):
        stream = draws[r * args.requests:(r + 1) * args.requests]
        for kind in (("tiered", "warm") if r % 2 == 0 else ("warm", "tiered")):
            offset = 1 if kind == "warm" else first  # warm: the same stream over 64 resident tasks
            keys = [f"synthetic-{offset + int(i) % 64}" if kind == "warm" else f"synthetic-{offset + int(i)}" for i in stream]
            before, cpu, (count, total) = tier_counts(), cpu_seconds(engine), batches()
            _, seconds = await closed_loop(batcher, keys, texts, len(keys), args.zipf_in_flight)
            count_after, total_after = batches()
            side = sides[kind]
            side["inputs_per_s"].append(round(len(keys) / seconds, 1))
            side["cpu_ms_per_input"].append(round((cpu_seconds(engine) - cpu) / len(keys) * 1e3, 2))
            side["mean_batch"].append(round((total_after - total) / max(count_after - count, 1), 1))
            if kind == "tiered":
                after = tier_counts()
                hit_rates.append({t: round((after[t]["hits_total"] - before[t]["hits_total"]) / len(keys), 3) for t in after})
    tiered, warm = sides["tiered"], sides["warm"]
    return {"tasks": args.tasks, "zipf_s": args.zipf, "distinct_tasks_drawn": len(set(draws.tolist())),
            "warmup_requests": args.warmup, "distinct_tasks_in_warmup": len(set(warmup.tolist())),
            "requests_per_round": args.requests, "in_flight": args.zipf_in_flight, "tiered": tiered, "all_warm": warm,
            "hit_rates_per_round": hit_rates,
            "ratio_median": round(statistics.median(t / w for t, w in zip(tiered["inputs_per_s"], warm["inputs_per_s"])), 3),
            "ratio_by_cpu_median": round(statistics.median(
                w / t for t, w in zip(tiered["cpu_ms_per_input"], warm["cpu_ms_per_input"])), 3)}

async def run(args, workdir: Path) -> dict:
    torch.set_num_threads(args.threads)
    rss_before = proc_memory()["rss_mb"]
    if args.engine_in_process:
        engine = Engine.from_folder(default_backbone_dir())
        encoder = engine.encoder
    else:  # as `serve` runs it: the device tier's memory and the forward passes in the engine process
        engine = EngineProcess(default_backbone_dir(), torch_threads=args.threads)
        encoder = TextEncoder.from_folder(default_backbone_dir())
    rss_backbone = rss_both(engine)
    try:
        texts = load_text_pools().sources["sst2"]
    except (DataMissing, KeyError):
        texts = [t for ts in synthetic_pools().sources.values() for t in ts]
    one_task = len(artifact_bytes(engine.shape, 0))
    files = FileBlobStore(workdir / "blobs")
    cold_keys = []
    for i in range(args.cold):
        data = artifact_bytes(engine.shape, 10**7 + i)
        key = hashlib.sha256(data).hexdigest()
        files.put(key, data)
        cold_keys.append(key)
    store, timed_engine = Timed(engine.shape, files), TimedEngine(engine)
    host = HostTier(store, int(args.host_fraction * args.tasks * one_task))
    probe = engine.load_task(10**9, artifact_bytes(engine.shape, 0))  # a task's bytes on the device
    engine.release_task(10**9)
    cache = PrefixCache(timed_engine, host.get, args.device_tasks * probe.nbytes)
    batcher = Batcher(timed_engine, cache, BatchLimits(max_batch_size=64, max_wait_ms=2.0, max_queued_inputs=10**6), encoder)
    batcher.start()
    try:
        for i in range(1, 11):
            await timed(batcher, f"synthetic-{i}", texts[0])
        metrics_small = metrics_size()  # 10 tasks touched
        await closed_loop(batcher, [f"synthetic-{i}" for i in range(1, 65)], texts, 256, 8)
        # The forward passes' workspace at the Zipf runs' concurrency and 64 tasks: the fixed overhead
        # the budgets come on top of.
        await closed_loop(batcher, [f"synthetic-{i}" for i in range(1, 65)], texts, 2000, args.zipf_in_flight)
        rss_serving = rss_both(engine)
        first = await cold_vs_warm(batcher, store, timed_engine, cold_keys, texts)
        beside = await warm_beside_cold(batcher, texts, args.requests // 4, args.rounds * 2, 10**6)
        spread = await zipf(batcher, engine, args, texts, 2 * 10**6)
        rss_after = rss_both(engine)
        rss_split = {"this_process": proc_memory()["rss_mb"],
                     "engine_process": proc_memory(engine.pid)["rss_mb"] if getattr(engine, "pid", None) else None,
                     "engine_pool_slots_used_and_capacity": engine.stats()["pool_slots"] if hasattr(engine, "stats") else None}
    finally:
        await batcher.stop()
        cache.close()
        engine.close()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads",
        "engine": "in this process" if args.engine_in_process else "its own process, as serve runs it",
        "artifact_bytes": one_task, "device_task_bytes": probe.nbytes,
        "budgets": {"device_bytes": cache.max_bytes, "device_tasks": args.device_tasks, "host_bytes": host.max_bytes,
                    "host_tasks": int(host.max_bytes // one_task)},
        "cold_vs_warm": first, "warm_beside_cold": beside, "zipf": spread,
        "metrics": {"after_10_tasks": metrics_small, "after_all": metrics_size(),
                    "store_reads": store.reads},
        "rss_mb": {"start": rss_before, "backbone_loaded": rss_backbone, "serving_64_tasks": rss_serving, "end": rss_after, "end_split": rss_split,
                   "serving_plus_budgets": round(rss_serving + (cache.max_bytes + host.max_bytes) / 2**20, 1)},
        "resident": {"device": {"tasks": len(cache._entries), "bytes": cache.resident_bytes},
                     "host": {"tasks": len(host), "bytes": host.resident_bytes}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks of the Zipf workload")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--requests", type=int, default=3000, help="Zipf requests per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=6000, help="Zipf requests, not timed, that fill the tiers first")
    parser.add_argument("--cold", type=int, default=300, help="cold tasks on the file store, for the first-answer latency")
    parser.add_argument("--host-fraction", type=float, default=0.05, help="host budget as a fraction of all tasks' bytes")
    parser.add_argument("--device-tasks", type=int, default=256, help="device budget in tasks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--zipf-in-flight", type=int, default=128,
                        help="Zipf clients: enough that both sides' batches fill (max_batch_size 64)")
    parser.add_argument("--engine-in-process", action="store_true", help="the engine in this process (the default: its own)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
