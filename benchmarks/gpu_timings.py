"""The timings of the GPU check (scripts/gpu_check.py): the machine's matmul peak and copy bandwidth,
the model alone on packed batches, and the engine end to end, one batch at a time or pipelined as the
engine process serves; each summarised as tokens/s, inputs/s, p50/p99 and the fraction of peak FLOPs.

On CUDA the forward passes are timed with CUDA events (the device's clock); the engine end to end with
the host's clock, since what a caller waits for includes the copies and the host work.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from server.engine import EncodedInput, Engine, TokenBatch


class Timer:
    """Per-batch times in ms: CUDA events on the GPU (no host stall between batches), else the clock."""

    def __init__(self, cuda: bool):
        self.cuda, self.marks = cuda, []

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((started, event))
        else:
            self.marks.append((started, time.perf_counter()))

    def times_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in self.marks]
        return [(b - a) * 1000 for a, b in self.marks]


def measure_machine(cfg: dict, device: str) -> dict:
    cuda = device == "cuda"
    n, dtype = cfg["matmul"], torch.bfloat16 if cuda else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    timer = Timer(cuda)
    for i in range(25):
        started = timer.start()
        a @ b
        if i >= 5:
            timer.stop(started)
    peak = 2 * n**3 / (statistics.median(timer.times_ms()) / 1000) / 1e12
    src = torch.empty(cfg["copy_mb"] << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timer = Timer(cuda)
    for i in range(12):
        started = timer.start()
        dst.copy_(src)
        if i >= 2:
            timer.stop(started)
    bandwidth = 2 * src.numel() / (statistics.median(timer.times_ms()) / 1000) / 1e9  # read + write
    name = torch.cuda.get_device_name() if cuda else "cpu"
    return {"device": name, "matmul_dtype": str(dtype).removeprefix("torch."), "peak_tflops": peak,
            "copy_gb_s": bandwidth}


@dataclass(frozen=True)
class Work:
    """A batch, and each row's prefix length (for the FLOP count)."""

    batch: TokenBatch
    prefix_lens: np.ndarray  # [B]


def bare_work(batches: list[list[EncodedInput]]) -> list[Work]:
    return [Work(TokenBatch.of(b), np.zeros(len(b), np.int64)) for b in batches]


def batch_flops(g, work: Work) -> float:
    """Dense layers, attention over prefix + tokens (QK and PV), the pooler."""
    C, inner, L = g.hidden_size, g.intermediate_size, g.num_layers
    lengths = work.batch.lengths.astype(np.int64)  # [B]
    tokens = int(lengths.sum())
    attention = int((4 * lengths * (lengths + work.prefix_lens) * C).sum())
    return L * (2 * tokens * (4 * C * C + 2 * C * inner) + attention) + 2 * len(lengths) * C * C


def summarize(times_ms: list[float], works: list[Work], g, peak_tflops: float) -> dict:
    tokens = sum(int(w.batch.lengths.sum()) for w in works)
    inputs = sum(w.batch.rows for w in works)
    seconds = sum(times_ms) / 1000
    flops = sum(batch_flops(g, w) for w in works)
    ordered = sorted(times_ms)
    return {"tokens_s": tokens / seconds, "inputs_s": inputs / seconds, "p50_ms": statistics.median(times_ms),
            "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "tflops": flops / seconds / 1e12,
            "peak_fraction": flops / seconds / 1e12 / peak_tflops, "batches": len(times_ms),
            "rows_per_batch": inputs / len(works)}


def measure_forward(engine: Engine, batches: list[Work], peak: float) -> dict:
    """The model alone on pre-packed batches (index arrays already on the device)."""
    packed = [engine.pack(work.batch) for work in batches]
    with torch.inference_mode():
        for batch in packed[:2]:
            engine.model.forward_packed(batch)
        timer = Timer(engine.device.type == "cuda")
        for batch in packed[2:]:
            started = timer.start()
            engine.model.forward_packed(batch)
            timer.stop(started)
    return summarize(timer.times_ms(), batches[2:], engine.files.geometry, peak)


def measure_engine(engine: Engine, batches: list[Work], peak: float) -> dict:
    """score end to end, on the host's clock: packing, the copy in, forward, heads, the copy back."""
    for work in batches[:2]:
        engine.score(work.batch)
    times = []
    for work in batches[2:]:
        started = time.perf_counter()
        engine.score(work.batch)
        times.append((time.perf_counter() - started) * 1000)
    return summarize(times, batches[2:], engine.files.geometry, peak)


def measure_engine_pipelined(engine: Engine, batches: list[Work], peak: float) -> dict:
    """As the engine process serves when the next batch is waiting: batch n+1 is packed and launched
    before batch n's scores are collected. Per batch: the host time from its launch to the next
    collection, the throughput over the whole stream."""
    for work in batches[:2]:
        engine.score(work.batch)
    started = time.perf_counter()
    pending, times, last = None, [], started
    for work in batches[2:]:
        launched = engine.launch(work.batch)
        if pending is not None:
            pending.wait()
            now = time.perf_counter()
            times.append((now - last) * 1000)
            last = now
        pending = launched
    pending.wait()
    times.append((time.perf_counter() - last) * 1000)
    return summarize(times, batches[2:], engine.files.geometry, peak)
