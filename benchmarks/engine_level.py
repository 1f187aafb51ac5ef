"""Engine-level benchmark: the Batcher and the engine as `serve` runs them (the engine in its own
process, EngineProcess), fed by a closed-loop request driver in this process, against the baselines
on the very same texts:

- `limit`: the backbone alone, no prefix, the inputs sorted by length and cut into batches under the
  same size and token bounds, on the same engine process (tokenization included in the time);
- `seed`: transformers' BertModel with a DynamicCache, one request at a time (a time-boxed prefix of
  the same request stream; its latency is the service time, there is no queue);
- `per-task`: the Batcher with BatchLimits(per_task_batches=True), one prefix per forward pass;
- `prefix-server`: the Batcher as it serves;
- `in-process` (an ablation, not a baseline): prefix-server with the engine in this process, as
  `serve --engine-in-process` runs it;
- `replay`, `replay-bare` (a decomposition, not baselines): the batches prefix-server formed in the
  same round, run again back to back on the same engine process with nothing else running, with
  their prefixes and without. limit -> replay-bare is what arrival order costs the layout, replay-bare
  -> replay what the prefixes cost, replay -> prefix-server what serving them costs (the batcher,
  tokenization and the request driver sharing the cores with the forward pass).

For each inputs-per-request, `repeats` rounds run every (task count, mode) back to back, task counts
and modes in alternating order (so a drift in the machine's load hits every configuration alike);
each figure pools its rounds. Every forward pass, the baselines' too, runs on one worker thread, as
the Batcher's compute thread does.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from benchmarks.seed_model import SeedModel
from benchmarks.stats import ForwardRecorder, RecordingEngine, SteadyWindow, latency_summary, proc_memory
from benchmarks.workload import BenchRequest, BuiltTask, TextPools, build_tasks, flat_inputs, generate_requests, make_tasks
from server.batching import Batcher, BatchLimits, ClassifyJob, PrefixCache
from server.engine import NO_TASK, Engine, EngineProcess, TextEncoder, TokenBatch
from server.heap import freeze_heap

MODES = ("limit", "seed", "per-task", "prefix-server", "in-process", "replay", "replay-bare")
REPLAYS = ("replay", "replay-bare")  # run after the round's other modes, on prefix-server's batches


@dataclass
class EngineBenchConfig:
    backbone: str
    tasks: list[int] = field(default_factory=lambda: [1, 8, 64, 512])
    inputs_per_request: list[int] = field(default_factory=lambda: [1, 16])
    inputs_per_run: int = 256  # per repeat; requests per run = inputs_per_run // inputs_per_request
    requests: int | None = None  # overrides inputs_per_run
    concurrency: int | None = None  # requests in flight; default 128 // inputs_per_request
    repeats: int = 3
    seed_seconds: float = 2.0  # time box of the one-at-a-time seed baseline per configuration and repeat
    num_tenants: int = 8
    seed: int = 0
    limits: BatchLimits = field(default_factory=BatchLimits)
    modes: tuple[str, ...] = MODES
    torch_threads: int = 0  # the engine process's; 0 keeps torch's default
    dtype: str = "float32"  # the engine's (limit, per-task, prefix-server, in-process); the seed stays float32
    merge_pairs: int | None = None  # the engine's default when None

    def requests_for(self, ipr: int) -> int:
        return self.requests or max(1, self.inputs_per_run // ipr)

    def concurrency_for(self, ipr: int) -> int:
        return self.concurrency or max(1, 128 // ipr)

    def describe(self) -> dict:
        return {**asdict(self), "limits": asdict(self.limits), "modes": list(self.modes)}


@dataclass
class Measured:
    """One mode's raw measurements, summed over rounds (`rounds`: each round's inputs/s)."""

    requests: int = 0
    inputs: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    forwards: ForwardRecorder = field(default_factory=ForwardRecorder)
    rounds: list[float] = field(default_factory=list)

    def add(self, other: Measured) -> None:
        self.rounds.append(round(other.inputs / other.wall_s, 2) if other.wall_s > 0 else 0.0)
        self.requests += other.requests
        self.inputs += other.inputs
        self.wall_s += other.wall_s
        self.latencies += other.latencies
        self.forwards.extend(other.forwards)


@dataclass
class _Setup:
    spies: dict[str, RecordingEngine]  # "process": the engine process, "in-process": an Engine here
    seed_model: SeedModel | None
    compute: ThreadPoolExecutor  # the baselines' forward thread
    tasks: list[BuiltTask]
    requests: list[BenchRequest]
    caches: dict[str, PrefixCache]
    concurrency: int
    served_batches: list[TokenBatch] = field(default_factory=list)  # what prefix-server formed this round


def run_engine_bench(config: EngineBenchConfig, pools: TextPools, progress=print) -> dict:
    process = EngineProcess(config.backbone, dtype=config.dtype, merge_pairs=config.merge_pairs, torch_threads=config.torch_threads)
    spies = {"process": RecordingEngine(process, ForwardRecorder())}
    if "in-process" in config.modes:
        in_process = Engine.from_folder(config.backbone, dtype=getattr(torch, config.dtype), merge_pairs=config.merge_pairs)
        spies["in-process"] = RecordingEngine(in_process, ForwardRecorder())
    seed_model = SeedModel(config.backbone) if "seed" in config.modes else None
    shape = spies["process"].shape
    runs = []
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="bench-compute") as compute:
            setups = {}
            for num_tasks in config.tasks:
                tasks = build_tasks(shape, make_tasks(num_tasks, config.seed, config.num_tenants, shape.max_prefix_len))
                setups[num_tasks] = (tasks, {kind: _resident_cache(spy, tasks) for kind, spy in spies.items()})
            freeze_heap()  # as `serve` does once it is up: the batcher runs in this process
            runs = _measure_all(config, pools, spies, seed_model, compute, setups, progress)
    finally:
        spies["process"].close()
    return {
        "level": "engine", "config": config.describe(), "texts": pools.describe(), "runs": runs,
        "engine": {**spies["process"].info(), "merge_pairs": spies["process"].merge_pairs},
        # One process runs every mode and holds every task set and the seed model: see `bench memory`.
        "bench_process_memory": proc_memory(),
    }


def _resident_cache(spy: RecordingEngine, tasks: list[BuiltTask]) -> PrefixCache:
    blobs = {task.sha256: task.data for task in tasks}
    cache = PrefixCache(spy, blobs.__getitem__, max_bytes=1 << 40)
    for task in tasks:
        cache.get(task.sha256)  # all resident: loading is not what this level measures
    return cache


def _measure_all(config, pools, spies, seed_model, compute, setups, progress) -> list[dict]:
    runs = []
    for ipr in config.inputs_per_request:
        measured = {(n, mode): Measured() for n in config.tasks for mode in config.modes}
        for repeat in range(config.repeats):
            # Task counts and modes alternate their order each round: a drift in the machine's load
            # then weighs on every configuration alike.
            for num_tasks in _alternate(config.tasks, repeat):
                tasks, caches = setups[num_tasks]
                requests = generate_requests(pools, num_tasks, config.requests_for(ipr), ipr, config.seed)
                setup = _Setup(spies, seed_model, compute, tasks, requests, caches, config.concurrency_for(ipr))
                for mode in [m for m in _alternate(config.modes, repeat + num_tasks) if m not in REPLAYS]:
                    measured[(num_tasks, mode)].add(_run_mode(setup, config, mode))
                for mode in [m for m in config.modes if m in REPLAYS]:
                    measured[(num_tasks, mode)].add(setup.compute.submit(run_replay, setup, mode).result())
        for num_tasks in config.tasks:
            for mode in config.modes:
                runs.append(summarize(num_tasks, ipr, mode, measured[(num_tasks, mode)], config.concurrency_for(ipr)))
                progress(_line(runs[-1]))
    return runs


def _alternate(items, index: int) -> list:
    return list(items) if index % 2 == 0 else list(reversed(items))


def _run_mode(setup: _Setup, config: EngineBenchConfig, mode: str) -> Measured:
    if mode == "limit":
        encoder = bench_encoder(config.backbone)
        return setup.compute.submit(run_limit, setup.spies["process"], encoder, setup.requests, config.limits).result()
    if mode == "seed":
        return setup.compute.submit(run_seed, setup.seed_model, setup.tasks, setup.requests, config.seed_seconds).result()
    limits = replace(config.limits, per_task_batches=(mode == "per-task"))
    kind = "in-process" if mode == "in-process" else "process"
    jobs = make_jobs(setup.tasks, setup.requests)
    spy = setup.spies[kind]
    spy.batches = [] if mode == "prefix-server" else None
    try:
        return run_batcher(spy, setup.caches[kind], limits, jobs, setup.concurrency, bench_encoder(config.backbone))
    finally:
        if mode == "prefix-server":
            setup.served_batches, spy.batches = spy.batches, None


def run_replay(setup: _Setup, mode: str) -> Measured:
    """prefix-server's batches of this round again, back to back, with their prefixes or without."""
    if not setup.served_batches:
        raise ValueError(f"mode {mode!r} replays prefix-server's batches: run it with mode 'prefix-server'")
    spy = setup.spies["process"]
    batches = setup.served_batches if mode == "replay" else [_bare(b) for b in setup.served_batches]
    run = spy.inner.score if mode == "replay" else spy.inner.pooled
    recorder = ForwardRecorder(spy.recorder.merge_pairs)
    run(batches[0])  # warm
    started = time.perf_counter()
    for batch in batches:
        forward_started = time.perf_counter()
        run(batch)
        recorder.record(batch, spy.prefix_lens(batch), time.perf_counter() - forward_started)
    return Measured(0, sum(map(len, batches)), time.perf_counter() - started, [], recorder)


def _bare(batch: TokenBatch) -> TokenBatch:
    """The same rows with no task: the backbone alone."""
    return replace(batch, tasks=np.full(batch.rows, NO_TASK, np.int64), heads=np.zeros(batch.rows, np.int8))


def summarize(num_tasks: int, ipr: int, mode: str, m: Measured, concurrency: int) -> dict:
    forwards = m.forwards.summary()
    latency = latency_summary(m.latencies) if m.latencies else forwards.get("forward_ms")
    return {
        "tasks": num_tasks, "inputs_per_request": ipr, "mode": mode, "requests": m.requests, "inputs": m.inputs,
        "concurrency": {"limit": None, "seed": 1, "replay": None, "replay-bare": None}.get(mode, concurrency),
        "wall_s": round(m.wall_s, 3),
        "inputs_per_s": round(m.inputs / m.wall_s, 2) if m.wall_s > 0 else 0.0, "rounds_inputs_per_s": m.rounds, "latency": latency,
        "latency_kind": "request" if m.latencies else "forward pass",
        **{k: v for k, v in forwards.items() if k != "forward_ms"}, "forward_ms": forwards.get("forward_ms"),
    }


def make_jobs(tasks: list[BuiltTask], requests: list[BenchRequest]) -> list[ClassifyJob]:
    jobs = []
    for request in requests:
        spec = tasks[request.task].spec
        jobs.append(ClassifyJob(
            tenant=spec.tenant, sha256=tasks[request.task].sha256, prefix_len=spec.prefix_len,
            inputs=list(request.inputs), truncate=True, timeout_s=3600.0, tenant_max_queued=1 << 30,
        ))
    return jobs


@functools.lru_cache(maxsize=2)
def bench_encoder(backbone: str) -> TextEncoder:
    """The serving side's tokenizer for `backbone` (the batcher's, and the limit's), built once."""
    return TextEncoder.from_folder(backbone)


def run_batcher(
    spy: RecordingEngine, cache: PrefixCache, limits: BatchLimits, jobs: list[ClassifyJob], concurrency: int,
    encoder: TextEncoder,
) -> Measured:
    """A closed loop at `concurrency` requests in flight over `concurrency` warm-up requests and then
    `jobs`, measured in steady state (closed_loop); forward passes are recorded from the window's arming
    on, which is where its first whole pass begins."""

    async def main():
        batcher = Batcher(spy, cache, replace(limits, max_queued_inputs=max(limits.max_queued_inputs, 1 << 20)), encoder)
        batcher.start()
        try:
            warm = jobs[:concurrency]
            return await closed_loop(batcher, warm + jobs, concurrency, len(warm), spy.recorder.reset)
        finally:
            await batcher.stop()

    requests, inputs, latencies, wall = asyncio.run(main())
    return Measured(requests, inputs, wall, latencies, spy.recorder.copy())


async def closed_loop(batcher: Batcher, jobs: list[ClassifyJob], concurrency: int, warmup: int = 0,
                      on_arm=None) -> tuple[int, int, list[float], float]:
    """Each of `concurrency` workers sends its next request as soon as its previous one is answered.
    Measured in the SteadyWindow after `warmup` completions, up to the last answer (the closing drain
    keeps batches full: the last requests in flight are all queued already); returns the requests,
    inputs and latencies completed in the window, and its length."""
    indices = iter(range(len(jobs)))  # shared by the workers: each takes the next request
    window = SteadyWindow(warmup, on_arm)

    async def worker():
        for index in indices:
            started = time.perf_counter()
            await batcher.classify(jobs[index])
            window.completed((time.perf_counter() - started, len(jobs[index].inputs)))

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(jobs)))))
    counted, length = window.finish()
    return len(counted), sum(n for _, n in counted), [latency for latency, _ in counted], length


def limit_batches(lengths: list[int], limits: BatchLimits) -> list[list[int]]:
    """Indices sorted by length, cut into batches under max_batch_size and max_batch_tokens (counted as
    the batcher counts them: real tokens)."""
    batches, current, tokens = [], [], 0
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) >= limits.max_batch_size or tokens + lengths[index] > limits.max_batch_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += lengths[index]
    if current:
        batches.append(current)
    return batches


def run_limit(engine: Engine | EngineProcess, encoder: TextEncoder, requests: list[BenchRequest], limits: BatchLimits) -> Measured:
    """The backbone alone over the same inputs, sorted by length; its latency is one batch's forward."""
    inputs = flat_inputs(requests)
    max_tokens = engine.shape.max_tokens(0)
    warm = encoder.encode(inputs[: 2 * limits.max_batch_size], max_tokens)
    for batch in limit_batches([len(e) for e in warm], limits):
        engine.pooled(TokenBatch.of([warm[i] for i in batch]))
    recorder = ForwardRecorder()
    started = time.perf_counter()
    encoded = encoder.encode(inputs, max_tokens)
    for batch in limit_batches([len(e) for e in encoded], limits):
        rows = TokenBatch.of([encoded[i] for i in batch])
        forward_started = time.perf_counter()
        engine.pooled(rows)
        recorder.record(rows, [0] * rows.rows, time.perf_counter() - forward_started)
    return Measured(len(requests), len(inputs), time.perf_counter() - started, [], recorder)


def run_seed(model: SeedModel, tasks: list[BuiltTask], requests: list[BenchRequest], seconds: float) -> Measured:
    """One request at a time for up to `seconds` (at least 4 requests)."""
    for request in requests[:2]:
        model.classify(tasks[request.task].artifact, list(request.inputs))  # warm-up
    latencies, inputs = [], 0
    started = time.perf_counter()
    for request in requests:
        if len(latencies) >= 4 and time.perf_counter() - started > seconds:
            break
        request_started = time.perf_counter()
        model.classify(tasks[request.task].artifact, list(request.inputs))
        latencies.append(time.perf_counter() - request_started)
        inputs += len(request.inputs)
    return Measured(len(latencies), inputs, time.perf_counter() - started, latencies)


def _line(run: dict) -> str:
    lat = run["latency"] or {}
    return (
        f"engine tasks={run['tasks']:>3} inputs/request={run['inputs_per_request']:>2} {run['mode']:<13} "
        f"{run['inputs_per_s']:>8.1f} inputs/s  p50 {lat.get('p50_ms')} ms  p99 {lat.get('p99_ms')} ms  "
        f"({run['inputs']} inputs in {run['wall_s']} s)"
    )
