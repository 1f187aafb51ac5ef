"""The tiers benchmark's parts (benchmarks/tiers.py, also benchmarks/affinity.py): synthetic artifacts, a
timed store and engine, closed-loop clients, and readings of the tiers' counters, RSS and CPU time of
this process and the engine's."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import torch
from prometheus_client import REGISTRY, generate_latest

from benchmarks.stats import proc_memory
from server.artifact import PrefixArtifact, ProblemType, artifact_to_bytes
from server.batching import Batcher, ClassifyJob
from server.registry.blobs.local import FileBlobStore

PREFIX_LEN = 16


def artifact_bytes(shape, index: int) -> bytes:
    gen = torch.Generator().manual_seed(index)
    return artifact_to_bytes(PrefixArtifact(
        key_values=torch.randn(shape.num_layers, 2, shape.num_heads, PREFIX_LEN, shape.head_dim, generator=gen).half(),
        classifier_weight=torch.randn(2, shape.hidden_size, generator=gen) * 0.5,
        classifier_bias=torch.zeros(2), problem_type=ProblemType.SINGLE_LABEL, labels=("negative", "positive"),
    ))


class Timed:
    """A store's reads, timed; the key is `synthetic-<index>` or a sha256 of the file store. A synthetic
    task's bytes are a copy of one of SYNTHETIC made beforehand (the engine keys tasks by handle, not by
    content), so making them costs what reading a cached file costs, not the server's CPU."""

    SYNTHETIC = 97

    def __init__(self, shape, files: FileBlobStore):
        self.shape, self.files, self.read_seconds, self.reads = shape, files, [], 0
        self.synthetic = [artifact_bytes(shape, i) for i in range(self.SYNTHETIC)]

    def __call__(self, key: str) -> bytes:
        started = time.perf_counter()
        if key.startswith("synthetic-"):
            data = bytes(bytearray(self.synthetic[int(key.split("-")[1]) % self.SYNTHETIC]))  # a fresh copy, as a read makes
        else:
            data = self.files.read(key)
        self.read_seconds.append(time.perf_counter() - started)
        self.reads += 1
        return data


class TimedEngine:
    """The engine, with its task loads (parse, copy into the pools) timed."""

    def __init__(self, engine):  # an Engine or an EngineProcess
        self.engine, self.load_seconds = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def load_task(self, handle, data):
        return self.start_load(handle, data).result()

    def start_load(self, handle, data):
        started = time.perf_counter()
        loading = self.engine.start_load(handle, data)
        loading.add_done_callback(lambda _: self.load_seconds.append(time.perf_counter() - started))
        return loading


def job(key: str, text) -> ClassifyJob:
    return ClassifyJob("bench", key, PREFIX_LEN, [text], True, 120.0, 10**6)


async def timed(batcher: Batcher, key: str, text) -> float:
    started = time.perf_counter()
    await batcher.classify(job(key, text))
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1e3, 2)


async def closed_loop(batcher, keys: list[str], texts, requests: int, concurrency: int) -> tuple[list[float], float]:
    latencies, queue = [], list(range(requests))
    started = time.perf_counter()

    async def client():
        while queue:
            i = queue.pop()
            latencies.append(await timed(batcher, keys[i % len(keys)], texts[i % len(texts)]))

    await asyncio.gather(*[client() for _ in range(concurrency)])
    return latencies, time.perf_counter() - started


def tier_counts() -> dict:
    names = ("hits_total", "misses_total", "evictions_total")
    return {tier: {n: REGISTRY.get_sample_value(f"prefix_server_tier_{n}", {"tier": tier}) or 0.0 for n in names}
            for tier in ("device", "host")}


def rss_both(engine) -> float:
    """RSS in MiB of this process plus the engine's own, where it has one."""
    pid = getattr(engine, "pid", None)
    return round(proc_memory()["rss_mb"] + (proc_memory(pid)["rss_mb"] if pid else 0.0), 1)


def cpu_seconds(engine) -> float:
    """CPU time of this process and of the engine's own, where it has one."""
    total = time.process_time()
    pid = getattr(engine, "pid", None)
    if pid:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def batches() -> tuple[float, float]:
    return (REGISTRY.get_sample_value("prefix_server_batch_size_count") or 0.0,
            REGISTRY.get_sample_value("prefix_server_batch_size_sum") or 0.0)


def metrics_size() -> dict:
    text = generate_latest(REGISTRY).decode()
    return {"bytes": len(text), "series": sum(1 for line in text.splitlines() if line and not line.startswith("#"))}
