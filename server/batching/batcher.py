"""The dynamic batcher: the one owner of the queue (queues.py holds it; only this class touches it).

Handlers call `classify(job)` and await its result; nothing else touches the queue. Admission
reserves queue room (429 past the bounds, 422 for a request larger than the bounds themselves), waits
(up to the request's deadline) on the prefix cache's load of the routed prefix if it is not resident,
tokenizes long requests off the event loop (short ones and cache hits stay on it), then enqueues one
item per input in the tenant's own FIFO. A single loop forms
batches by taking items from the tenants in turn, closes a batch on max_batch_size, max_batch_tokens
(inputs' tokens plus their prefixes: the engine packs rows, so no padding is counted) or max_wait_ms,
drops items of cancelled or expired requests before compute, and runs the forward pass on the compute
thread; where the engine pipelines (`batches_in_flight` 2, CUDA), the next batch forms and is sent
while one runs.

On SIGTERM the server calls `drain(deadline)`: requests are then finished whole, started ones first,
a request is started only if it will finish by the deadline at the measured throughput, and at the
deadline whatever is left is refused with ShuttingDown (503 + Retry-After), never dropped unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from server import metrics, tracing
from server.artifact import HeadKind
from server.batching.inputs import Input, InputRows, assemble, check_shapes, count_rows, expand, input_chars
from server.batching.prefix_cache import PrefixCache
from server.batching.queues import DeadlineExceeded, InputQueues, PendingRequest, QueuedInput, ShuttingDown
from server.decoding import SpanOptions
from server.engine import EngineUnavailable, ScoreFunction, TextEncoder, TokenBatch
from server.engine.scoring import default_score_function
from server.engine.surface import EngineSurface

log = logging.getLogger(__name__)
# Requests up to this many characters are tokenized on the event loop (about 0.2 ms on MiniLM's
# tokenizer); longer ones in the prep pool, so the loop never stalls on a big request.
INLINE_CHARS = 1024
# While draining, a request is refused ahead of its turn only if it would not finish even were the
# engine this much faster than measured.
HOPELESS_MARGIN = 2.0


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 64
    max_batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    max_queued_inputs: int = 4096
    # Baseline only: one task per forward pass (what one-prefix-at-a-time servers such as PEFT allow).
    per_task_batches: bool = False


@dataclass(frozen=True)
class ClassifyJob:
    tenant: str
    sha256: str  # the version this request was routed to at admission
    prefix_len: int
    inputs: list[Input]
    truncate: bool
    timeout_s: float
    tenant_max_queued: int
    score_function: ScoreFunction | None = None  # None: the task's own (softmax, sigmoid or raw)
    heads: frozenset[HeadKind] = frozenset({HeadKind.SEQUENCE})  # the task heads the caller's protocol answers
    span: SpanOptions = field(default_factory=SpanOptions)  # a span task's request fields (SPEC 2d)


class Batcher:
    def __init__(self, engine: EngineSurface, cache: PrefixCache, limits: BatchLimits, encoder: TextEncoder):
        self.engine, self.cache, self.limits = engine, cache, limits
        self.encoder = encoder  # tokenizing is the serving side's: the engine gets token ids
        self._queues = InputQueues(per_task=limits.per_task_batches)
        self._arrival = asyncio.Event()
        self._prep_pool = ThreadPoolExecutor(2, thread_name_prefix="prep")  # tokenizer, span assembly
        # One forward at a time, or two where the engine launches the next batch while one runs (CUDA).
        self._depth = max(1, engine.batches_in_flight)
        self._compute_pool = ThreadPoolExecutor(self._depth, thread_name_prefix="compute")
        self._loop_task: asyncio.Task | None = None
        self._running: dict[asyncio.Task, list[QueuedInput]] = {}  # batches sent to the engine, not yet answered
        self._throughput = _Throughput()
        self._drain_deadline: float | None = None  # event-loop time; set by drain()
        self._closed = False  # past the drain deadline, or stopped: nothing more is computed

    @property
    def queued_inputs(self) -> int:
        return self._queues.reserved

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop(), name="batcher")

    def drain(self, deadline: float) -> None:
        """SIGTERM: finish what can finish by `deadline` (event-loop time), refuse the rest with ShuttingDown.

        From now on batches take requests whole, those already started first, then the oldest; a
        request is started only if, at the throughput measured so far, it finishes by the deadline
        (otherwise it is refused at once, so its client retries elsewhere without waiting). At the
        deadline every request still queued or running is refused, and nothing more is computed."""
        if self._drain_deadline is not None:
            return
        loop = asyncio.get_running_loop()
        self._drain_deadline = deadline
        self._throughput = _Throughput()  # estimated from batches of the drain alone: load changes
        loop.call_at(deadline, self._close, "the server is shutting down: this request did not finish before the drain deadline")
        self._arrival.set()

    async def stop(self) -> None:
        self._close("the server is shutting down")
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._prep_pool.shutdown(wait=False, cancel_futures=True)
        self._compute_pool.shutdown(wait=True)

    async def classify(self, job: ClassifyJob) -> list:
        """The result per input, in input order: scores, or for the heads of other shapes a TokenScores,
        SpanAnswer or ChoiceScores (inputs.py). Raises Overloaded, DeadlineExceeded, ShuttingDown or
        InputRefused."""
        if self._closed:
            raise ShuttingDown("the server is shutting down; retry the request (another replica will answer)")
        reserved = count_rows(job.inputs)  # a question's windows are counted once it is tokenized
        self._queues.reserve(job.tenant, reserved, self.limits.max_queued_inputs, job.tenant_max_queued)
        request = None
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + job.timeout_s
            # A resident prefix and a short request are handled here: a thread hop costs more CPU than
            # the work, and every CPU cycle spent here is one the forward pass does not get.
            task = self.cache.peek(job.sha256)
            if task is None:  # parked on the cache's load, which other requests may share; never past the deadline
                fetched = asyncio.wrap_future(self.cache.fetch(job.sha256))
                task = await asyncio.wait_for(fetched, timeout=max(deadline - loop.time(), 0))
            head = task.facts.head
            check_shapes(job.inputs, head, job.heads)
            function = default_score_function(head, task.facts.problem_type)
            if job.score_function is not None and head in (HeadKind.SEQUENCE, HeadKind.TOKEN):
                function = job.score_function
            tokenize_started_ns = tracing.now_ns() if tracing.TRACER is not None else 0
            planned = await self._expand(job, head)
            rows = [encoded for plan in planned for encoded in plan.rows]
            if len(rows) > reserved:
                self._queues.reserve(job.tenant, len(rows) - reserved, self.limits.max_queued_inputs, job.tenant_max_queued)
                reserved = len(rows)
            if self._closed:
                raise ShuttingDown("the server is shutting down; retry the request (another replica will answer)")
            request = PendingRequest(loop.create_future(), [None] * len(rows), deadline, len(rows))
            if tokenize_started_ns:
                request.enqueued_ns = tracing.now_ns()
                tracing.record_span("tokenize", tokenize_started_ns, request.enqueued_ns, {"inputs": len(rows)})
            self._queues.push(job.tenant, job.sha256, [
                QueuedInput(request, i, e, task, function, job.tenant) for i, e in enumerate(rows)
            ])
            metrics.QUEUED_INPUTS.set(self._queues.reserved)
            self._arrival.set()
            remaining = request.deadline - loop.time()
            row_results = await asyncio.wait_for(asyncio.shield(request.future), timeout=max(remaining, 0))
            if request.enqueued_ns:
                tracing.record_span("queue wait", request.enqueued_ns, request.batch_started_ns)
                tracing.record_span("forward pass", request.batch_started_ns, request.batch_ended_ns)
            if head is HeadKind.SPAN:  # numpy over every window: off the event loop
                return await loop.run_in_executor(self._prep_pool, assemble, planned, row_results)
            return assemble(planned, row_results)
        except TimeoutError:
            raise DeadlineExceeded(f"the request did not finish within {job.timeout_s:g} s") from None
        finally:
            if request is None:
                self._release(job.tenant, reserved)  # never queued: give the room back now
            elif not request.future.done():
                request.cancelled = True  # queued items are dropped, and their room released, by the loop

    async def _expand(self, job: ClassifyJob, head: HeadKind) -> list[InputRows]:
        """The inputs' rows, tokenized here when short (and the tokenizer free), else in the prep pool."""
        fit = self.engine.shape.max_tokens(job.prefix_len)
        work = (job.inputs, head, self.encoder, fit, job.truncate, job.span)
        if sum(input_chars(value) for value in job.inputs) <= INLINE_CHARS:
            with self.encoder.unless_busy() as free:
                if free:
                    return expand(*work)
        return await asyncio.get_running_loop().run_in_executor(self._prep_pool, expand, *work)

    def _release(self, tenant: str, count: int) -> None:
        self._queues.release(tenant, count)
        metrics.QUEUED_INPUTS.set(self._queues.reserved)

    def _close(self, reason: str) -> None:
        """Refuses every request queued or running with ShuttingDown; nothing more is computed."""
        if self._closed:
            return
        self._closed = True
        for item in self._queues.remove_all():
            self._release(item.tenant, 1)
            item.request.fail(ShuttingDown(reason))
        for batch in self._running.values():  # their room is released when the engine answers
            for item in batch:
                item.request.fail(ShuttingDown(reason))
        self._arrival.set()

    async def _batch_loop(self) -> None:
        engine_free = asyncio.Semaphore(self._depth)  # batches the engine may have outstanding
        while not self._closed:
            await engine_free.acquire()
            try:
                await self._wait_for_batch()
                batch = self._take_batch()
            except Exception:  # a bug here must not stop serving: log it and keep the loop alive
                log.exception("batch loop error")
                batch = []
            if not batch:
                engine_free.release()
                continue
            # With room for a second batch, the next one forms while this one runs; with one, the
            # loop waits at acquire until this one is answered.
            task = asyncio.get_running_loop().create_task(self._run_released(batch, engine_free))
            self._running[task] = batch
            task.add_done_callback(self._running.pop)

    async def _run_released(self, batch: list[QueuedInput], engine_free: asyncio.Semaphore) -> None:
        try:
            await self._run_batch(batch)
        except Exception:  # as in _batch_loop
            log.exception("batch loop error")
        finally:
            engine_free.release()

    async def _wait_for_batch(self) -> None:
        """Returns when a batch is due: enough inputs for a full batch, or the oldest waited max_wait_ms."""
        while not self._queues and not self._closed:
            self._arrival.clear()
            await self._arrival.wait()
        if self._closed:
            return
        close_at = self._queues.oldest_enqueued_at() + self.limits.max_wait_ms / 1000
        while self._queues.queued_inputs() < self.limits.max_batch_size:
            left = close_at - time.perf_counter()
            if left <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), timeout=left)
            except TimeoutError:
                return

    def _take_batch(self) -> list[QueuedInput]:
        now = asyncio.get_running_loop().time()
        size, tokens = self.limits.max_batch_size, self.limits.max_batch_tokens
        if self._closed:
            batch = []
        elif self._drain_deadline is None:
            batch = self._queues.take_in_turn(size, tokens, now)
        else:
            running = sum(item.tokens for items in self._running.values() for item in items)
            budget = self._throughput.tokens_within(self._drain_deadline - now) - running
            # Only the plainly hopeless are refused ahead (the throughput is an estimate); a request
            # is refused on the exact budget when its turn comes.
            self._queues.refuse_beyond(budget * HOPELESS_MARGIN)
            batch = self._queues.take_draining(size, tokens, now, budget)
        metrics.QUEUED_INPUTS.set(self._queues.reserved)
        return batch

    async def _run_batch(self, batch: list[QueuedInput]) -> None:
        started = time.perf_counter()
        started_ns = tracing.now_ns() if tracing.TRACER is not None else 0
        for item in batch:
            metrics.QUEUE_SECONDS.observe(started - item.enqueued_at)
            if started_ns and not item.request.batch_started_ns:
                item.request.batch_started_ns = started_ns  # a request's first batch ends its queue wait
        try:
            delivered = await self._forward(batch)
        finally:
            for item in batch:
                self._release(item.tenant, 1)
        seconds = time.perf_counter() - started
        self._observe(batch, seconds)
        if started_ns:
            ended_ns = tracing.now_ns()
            for item in batch:
                item.request.batch_ended_ns = ended_ns
        if delivered:
            self._throughput.record(sum(item.tokens for item in batch), seconds)
        for item, values in delivered:
            item.request.deliver(item.index, values)

    async def _forward(self, batch: list[QueuedInput]) -> list[tuple[QueuedInput, object]]:
        """Each computed row with its result; rows that failed are not among them (their requests are told)."""
        stale = [item for item in batch if item.task.stale]
        if stale:  # loaded in an engine process that has since restarted: the new one does not have it
            for item in stale:
                item.request.fail(EngineUnavailable("the engine process restarted while this request was queued; retry it"))
            batch = [item for item in batch if not item.task.stale]
        if not batch:
            return []
        rows = TokenBatch.of(
            [i.encoded for i in batch], [i.task.handle for i in batch], [i.task.facts.head for i in batch],
            [int(i.score_function) for i in batch],
        )
        try:
            scores = await asyncio.get_running_loop().run_in_executor(self._compute_pool, self.engine.score, rows)
        except Exception as exc:
            log.exception("forward pass failed for a batch of %d", len(batch))
            for item in batch:
                item.request.fail(exc)
            return []
        return list(zip(batch, scores.split(rows, [i.task.facts.num_labels for i in batch])))

    @staticmethod
    def _observe(batch: list[QueuedInput], seconds: float) -> None:
        metrics.INFERENCE_SECONDS.observe(seconds)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_TOKENS.observe(sum(item.tokens for item in batch))
        metrics.BATCH_TASKS.observe(len({i.task.handle for i in batch}))


class _Throughput:
    """Tokens per second of the last few forward passes: how much more the engine computes by a deadline."""

    WINDOW = 8

    def __init__(self) -> None:
        self._batches: deque[tuple[int, float]] = deque(maxlen=self.WINDOW)  # (tokens, seconds)

    def record(self, tokens: int, seconds: float) -> None:
        self._batches.append((tokens, seconds))

    def tokens_within(self, seconds: float) -> float:
        """Infinite before a batch was measured: nothing is refused on a guess."""
        spent = sum(s for _, s in self._batches)
        return sum(t for t, _ in self._batches) / spent * seconds if spent > 0 else math.inf
