"""Measurement helpers shared by the benchmark levels: latency percentiles, the forward-pass recorder
(batch sizes, padding) and resident memory read from /proc.

Padding is counted per forward pass, for the batch as the batcher formed it:
- `padding_fraction`: what a padded [B, max S] layout wastes, 1 - sum(S_i) / (B * max S_i) (the
  seed's layout, and the engine's before it packed rows: a measure of how mixed the lengths are);
- `key_padding_fraction`: the same over keys, prefixes included,
  1 - sum(P_i + S_i) / (B * (max P_i + max S_i));
- `packed_key_padding_fraction`: the query-key pairs the packed engine's attention computes that
  are padding, from the engine's own chunk plan (server/engine/chunked.plan_chunks) for the batch.
  Its dense layers run on real tokens only.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from harness.processes import child_pids
from server.engine import TokenBatch
from server.engine.chunked import plan_chunks

# The server's prometheus buckets (server/metrics.py), so engine and HTTP levels report alike.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def latency_summary(seconds: list[float]) -> dict:
    if not seconds:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ms = np.asarray(seconds, dtype=float) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "count": int(ms.size), "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2), "mean_ms": round(float(ms.mean()), 2), "max_ms": round(float(ms.max()), 2),
    }


def bucket_of(size: int) -> str:
    for bound in BATCH_SIZE_BUCKETS:
        if size <= bound:
            return str(bound)
    return "inf"


class ForwardRecorder:
    """Collects one record per forward pass: rows, longest input, longest prefix, real tokens, seconds.
    `merge_pairs`: the engine's chunk-merging setting, to plan its attention chunks as it does."""

    def __init__(self, merge_pairs: int = 0):
        self.merge_pairs = merge_pairs
        self.reset()

    def reset(self) -> None:
        self.sizes: list[int] = []
        self.query_slots = self.query_real = self.key_slots = self.key_real = 0
        self.pairs_real = self.pairs_packed = 0
        self.distinct_prefixes: list[int] = []
        self.seconds: list[float] = []

    def record(self, batch: TokenBatch, prefixes: list[int], seconds: float) -> None:
        """`prefixes`: each row's prefix length (0 without a task)."""
        tokens = batch.lengths.tolist()
        self.sizes.append(len(tokens))
        self.query_slots += len(tokens) * max(tokens)
        self.query_real += sum(tokens)
        self.key_slots += len(tokens) * (max(tokens) + max(prefixes))
        self.key_real += sum(tokens) + sum(prefixes)
        ordered = sorted(zip(tokens, prefixes))  # the engine's packed order
        chunks = plan_chunks([t for t, _ in ordered], [p for _, p in ordered], self.merge_pairs)
        self.pairs_packed += sum(c.rows * c.query_len * c.key_len for c in chunks)
        self.pairs_real += sum(t * (t + p) for t, p in ordered)
        self.distinct_prefixes.append(len(set(batch.tasks.tolist())))
        self.seconds.append(seconds)

    def extend(self, other: ForwardRecorder) -> None:
        self.sizes += other.sizes
        self.query_slots += other.query_slots
        self.query_real += other.query_real
        self.key_slots += other.key_slots
        self.key_real += other.key_real
        self.pairs_real += other.pairs_real
        self.pairs_packed += other.pairs_packed
        self.distinct_prefixes += other.distinct_prefixes
        self.seconds += other.seconds

    def copy(self) -> ForwardRecorder:
        clone = ForwardRecorder(self.merge_pairs)
        clone.extend(self)
        return clone

    def summary(self) -> dict:
        if not self.sizes:
            return {"forwards": 0}
        return {
            "forwards": len(self.sizes),
            "padding_fraction": round(1 - self.query_real / self.query_slots, 4),
            "key_padding_fraction": round(1 - self.key_real / self.key_slots, 4),
            "packed_key_padding_fraction": round(1 - self.pairs_real / self.pairs_packed, 4),
            "batch_size": batch_size_summary(self.sizes),
            "tasks_per_forward_mean": round(float(np.mean(self.distinct_prefixes)), 2),
            "forward_ms": latency_summary(self.seconds),
            "compute_s": round(sum(self.seconds), 3),
        }


def batch_size_summary(sizes: list[int]) -> dict:
    counts = Counter(bucket_of(size) for size in sizes)
    return {
        "mean": round(float(np.mean(sizes)), 2),
        "p50": float(np.percentile(sizes, 50)),
        "max": int(max(sizes)),
        "histogram": {str(b): counts.get(str(b), 0) for b in BATCH_SIZE_BUCKETS if counts.get(str(b))},
    }


class RecordingEngine:
    """Stands in for the engine in front of a Batcher and a PrefixCache: records every `score` call
    (and each loaded task's prefix length, to count the batch's keys) and passes everything else
    through to the real engine."""

    def __init__(self, engine, recorder: ForwardRecorder):
        self._engine, self.recorder = engine, recorder
        recorder.merge_pairs = engine.merge_pairs
        self.batches: list[TokenBatch] | None = None  # a list: every scored batch is kept there too (for replays)
        self._prefix_lens: dict[int, int] = {}

    def prefix_lens(self, batch: TokenBatch) -> list[int]:
        return [self._prefix_lens.get(handle, 0) for handle in batch.tasks.tolist()]

    def __getattr__(self, name):
        return getattr(self._engine, name)

    @property
    def inner(self):
        """The engine itself, for calls that must not be recorded."""
        return self._engine

    def load_task(self, handle: int, data: bytes):
        return self.start_load(handle, data).result()

    def start_load(self, handle: int, data: bytes):
        loading = self._engine.start_load(handle, data)
        loading.add_done_callback(lambda done: done.exception() or self._prefix_lens.__setitem__(handle, done.result().prefix_len))
        return loading

    def score(self, batch: TokenBatch):
        if self.batches is not None:
            self.batches.append(batch)
        started = time.perf_counter()
        scores = self._engine.score(batch)
        self.recorder.record(batch, self.prefix_lens(batch), time.perf_counter() - started)
        return scores


def proc_tree_memory(pid: int) -> dict:
    """proc_memory summed over a process and its descendants (a server and its engine process).
    The peak is the sum of each process's own peak: an upper bound on the tree's."""
    total = {"rss_mb": 0.0, "peak_rss_mb": 0.0}
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            memory = proc_memory(current)
        except OSError:  # it exited meanwhile
            continue
        total = {key: round(total[key] + memory[key], 1) for key in total}
        pending += child_pids(current)
    return total


def proc_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, or 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory(pid: int | str = "self") -> dict:
    """VmRSS (now) and VmHWM (peak) of a process, in MiB, from /proc (psutil is not a dependency)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB -> MiB
    return {"rss_mb": round(values.get("VmRSS", 0.0), 1), "peak_rss_mb": round(values.get("VmHWM", 0.0), 1)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


class SteadyWindow:
    """The measurement window of a closed loop: it skips `warmup` completions and opens at the end of
    the burst the last of them belongs to. The answers of one forward pass arrive together and the
    next pass's a forward later, so the window then holds whole forward passes only (opening mid-burst
    would count answers computed before it). `on_arm()` runs at the warm-up's last completion, i.e.
    after that pass and before the next one ends: the place to read counters. When no gap separates
    the bursts (passes too quick to tell apart, tiny models), the window opens at the arming."""

    def __init__(self, warmup: int, on_arm=None, gap_s: float = 0.005):
        self.warmup, self.on_arm, self.gap_s = warmup, on_arm, gap_s
        self.done = 0
        self.armed_at: float | None = time.perf_counter() if warmup == 0 else None
        self._after: list[tuple[float, object]] = []  # (time, item) of completions after the arming

    def completed(self, item: object) -> None:
        self.done += 1
        if self.armed_at is not None:
            self._after.append((time.perf_counter(), item))
        elif self.done >= self.warmup:
            if self.on_arm is not None:
                self.on_arm()
            self.armed_at = time.perf_counter()

    @property
    def armed(self) -> bool:
        return self.armed_at is not None

    def finish(self) -> tuple[list, float]:
        """The items completed inside the window, and the window's length in seconds."""
        end = time.perf_counter()
        if self.armed_at is None:
            return [], 0.0
        if self.warmup == 0:
            return [item for _, item in self._after], end - self.armed_at
        previous = self.armed_at
        for index, (at, _) in enumerate(self._after):
            if at - previous > self.gap_s:
                return [item for _, item in self._after[index:]], end - previous
            previous = at
        return [item for _, item in self._after], end - self.armed_at
