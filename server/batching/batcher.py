"""The dynamic batcher: the one owner of the queue.

Handlers call `classify(job)` and await its result; nothing else touches the queue. Admission
reserves queue room (429 past the bounds), loads the routed prefix if it is not resident and
tokenizes long requests off the event loop (short ones and cache hits stay on it), then enqueues one
item per input in the tenant's own FIFO. A single loop forms batches by taking
items from the tenants in turn (a tenant that floods 10,000 inputs waits its turn like one that sends
one), closes a batch on max_batch_size, max_batch_tokens (inputs' tokens plus their prefixes: the
engine packs rows, so no padding is counted) or max_wait_ms, drops items of cancelled
or expired requests before compute, and runs the forward pass on the compute thread; where the
engine pipelines (`batches_in_flight` 2, CUDA), the next batch forms and is sent while one runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from server import metrics, tracing
from server.batching.prefix_cache import PrefixCache
from server.engine import InputRefused, Row, ScoreFunction, TextEncoder, TextInput
from server.engine.surface import EngineSurface

log = logging.getLogger(__name__)
# Requests up to this many characters are tokenized on the event loop (about 0.2 ms on MiniLM's
# tokenizer); longer ones in the prep pool, so the loop never stalls on a big request.
INLINE_CHARS = 1024


class Overloaded(Exception):
    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


class ShuttingDown(Exception):
    pass


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
    inputs: list[TextInput]
    truncate: bool
    timeout_s: float
    tenant_max_queued: int
    score_function: ScoreFunction | None = None  # None: the task's own (softmax, sigmoid or raw)
    token_tasks: bool = False  # whether the caller's protocol answers token-classification tasks


@dataclass(frozen=True, slots=True)
class TokenScores:
    """A token task's result for one input: scores per token and each token's character span."""

    scores: list[list[float]]  # [S][num_labels]
    offsets: list[tuple[int, int]]  # [S]


@dataclass(eq=False)
class _Request:
    future: asyncio.Future
    results: list
    deadline: float
    remaining: int
    cancelled: bool = False
    # Wall-clock nanoseconds for the spans (server.tracing), 0 while tracing is off.
    enqueued_ns: int = 0
    batch_started_ns: int = 0
    batch_ended_ns: int = 0


@dataclass(eq=False, slots=True)
class _Item:
    request: _Request
    index: int
    row: Row
    tenant: str
    enqueued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, engine: EngineSurface, cache: PrefixCache, limits: BatchLimits, encoder: TextEncoder):
        self.engine, self.cache, self.limits = engine, cache, limits
        self.encoder = encoder  # tokenizing is the serving side's: the engine gets token ids
        # Queues are per tenant (per tenant and task in the per-task baseline), served in turn.
        self._queues: dict[object, deque[_Item]] = {}
        self._turns: deque[object] = deque()  # queue keys with queued items, in serving order
        self._reserved = 0  # inputs admitted and not yet computed or dropped
        self._reserved_by_tenant: Counter[str] = Counter()
        self._arrival = asyncio.Event()
        self._prep_pool = ThreadPoolExecutor(2, thread_name_prefix="prep")  # tokenizer, prefix loads
        # One forward at a time, or two where the engine launches the next batch while one runs (CUDA).
        self._depth = max(1, engine.batches_in_flight)
        self._compute_pool = ThreadPoolExecutor(self._depth, thread_name_prefix="compute")
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # batches sent to the engine, not yet answered

    @property
    def queued_inputs(self) -> int:
        return self._reserved

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop(), name="batcher")

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        for queue in self._queues.values():
            for item in queue:
                if not item.request.future.done():
                    item.request.future.set_exception(ShuttingDown("the server is shutting down"))
        self._queues.clear()
        self._turns.clear()
        self._prep_pool.shutdown(wait=False, cancel_futures=True)
        self._compute_pool.shutdown(wait=True)

    async def classify(self, job: ClassifyJob) -> list[list[float]]:
        """Scores per input, in input order. Raises Overloaded, DeadlineExceeded or InputTooLong."""
        self._reserve(job)
        request = None
        try:
            loop = asyncio.get_running_loop()
            # A resident prefix and a short request are handled here: a thread hop costs more CPU than
            # the work, and every CPU cycle spent here is one the forward pass does not get.
            prefix = self.cache.peek(job.sha256)
            if prefix is None:
                prefix = await loop.run_in_executor(self._prep_pool, self.cache.get, job.sha256)
            token_task = prefix.token_head
            if token_task:
                _check_token_job(job)
            tokenize_started_ns = tracing.now_ns() if tracing.TRACER is not None else 0
            encoded, max_tokens = None, self.engine.shape.max_tokens(job.prefix_len)
            if sum(len(text) if isinstance(text, str) else len(text[0]) + len(text[1]) for text in job.inputs) <= INLINE_CHARS:
                encoded = self.encoder.try_encode(job.inputs, max_tokens, job.truncate, token_task)  # None: busy
            if encoded is None:
                encoded = await loop.run_in_executor(
                    self._prep_pool, self.encoder.encode, job.inputs, max_tokens, job.truncate, token_task
                )
            request = _Request(loop.create_future(), [None] * len(encoded), loop.time() + job.timeout_s, len(encoded))
            if tokenize_started_ns:
                request.enqueued_ns = tracing.now_ns()
                tracing.record_span("tokenize", tokenize_started_ns, request.enqueued_ns, {"inputs": len(encoded)})
            key = (job.tenant, job.sha256) if self.limits.per_task_batches else job.tenant
            queue = self._queues.setdefault(key, deque())
            if not queue:
                self._turns.append(key)
            queue.extend(_Item(request, i, Row(e, prefix, job.score_function), job.tenant) for i, e in enumerate(encoded))
            metrics.QUEUED_INPUTS.set(self._reserved)
            self._arrival.set()
            remaining = request.deadline - loop.time()
            scores = await asyncio.wait_for(asyncio.shield(request.future), timeout=max(remaining, 0))
            if request.enqueued_ns:
                tracing.record_span("queue wait", request.enqueued_ns, request.batch_started_ns)
                tracing.record_span("forward pass", request.batch_started_ns, request.batch_ended_ns)
            return scores
        except TimeoutError:
            raise DeadlineExceeded(f"the request did not finish within {job.timeout_s:g} s") from None
        finally:
            if request is None:
                self._release(job.tenant, len(job.inputs))  # never queued: give the room back now
            elif not request.future.done():
                request.cancelled = True  # queued items are dropped, and their room released, by the loop

    def _reserve(self, job: ClassifyJob) -> None:
        count = len(job.inputs)
        if self._reserved + count > self.limits.max_queued_inputs:
            raise Overloaded(
                f"the server queue is full: {self._reserved} of {self.limits.max_queued_inputs} inputs queued, "
                f"this request adds {count}",
                retry_after_s=1,
            )
        if self._reserved_by_tenant[job.tenant] + count > job.tenant_max_queued:
            raise Overloaded(
                f"tenant {job.tenant!r} has {self._reserved_by_tenant[job.tenant]} inputs queued, at most "
                f"{job.tenant_max_queued} allowed; this request adds {count}",
                retry_after_s=1,
            )
        self._reserved += count
        self._reserved_by_tenant[job.tenant] += count

    def _release(self, tenant: str, count: int) -> None:
        self._reserved -= count
        self._reserved_by_tenant[tenant] -= count
        if self._reserved_by_tenant[tenant] <= 0:
            del self._reserved_by_tenant[tenant]
        metrics.QUEUED_INPUTS.set(self._reserved)

    async def _batch_loop(self) -> None:
        engine_free = asyncio.Semaphore(self._depth)  # batches the engine may have outstanding
        while True:
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
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_released(self, batch: list[_Item], engine_free: asyncio.Semaphore) -> None:
        try:
            await self._run_batch(batch)
        except Exception:  # as in _batch_loop
            log.exception("batch loop error")
        finally:
            engine_free.release()

    async def _wait_for_batch(self) -> None:
        """Returns when a batch is due: enough inputs for a full batch, or the oldest waited max_wait_ms."""
        while not self._turns:
            self._arrival.clear()
            await self._arrival.wait()
        oldest = min(self._queues[t][0].enqueued_at for t in self._turns)
        close_at = oldest + self.limits.max_wait_ms / 1000
        while self._queued_items() < self.limits.max_batch_size:
            left = close_at - time.perf_counter()
            if left <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), timeout=left)
            except TimeoutError:
                return

    def _queued_items(self) -> int:
        return sum(len(self._queues[t]) for t in self._turns)

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        tokens = 0  # each input's tokens plus its prefix: the keys it attends over; the engine pads nothing else
        now = asyncio.get_running_loop().time()
        while self._turns and len(batch) < self.limits.max_batch_size:
            key = self._turns[0]
            queue = self._queues[key]
            item = queue[0]
            if item.request.cancelled or item.request.deadline <= now:
                self._drop(queue.popleft())
            else:
                cost = len(item.row.encoded) + item.row.prefix.prefix_len
                if batch and tokens + cost > self.limits.max_batch_tokens:
                    break
                batch.append(queue.popleft())
                tokens += cost
                if not self.limits.per_task_batches:
                    self._turns.rotate(-1)  # the next input comes from the next tenant in turn
            if not queue:
                self._turns.remove(key)
                del self._queues[key]
                if self.limits.per_task_batches and batch:
                    return batch
        if self.limits.per_task_batches and self._turns and batch and self._turns[0] == key:
            self._turns.rotate(-1)  # the next batch serves the next task
        return batch

    def _drop(self, item: _Item) -> None:
        self._release(item.tenant, 1)
        if not item.request.cancelled and not item.request.future.done():
            item.request.future.set_exception(DeadlineExceeded("the request expired while queued"))
        item.request.cancelled = True

    async def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        started_ns = tracing.now_ns() if tracing.TRACER is not None else 0
        for item in batch:
            metrics.QUEUE_SECONDS.observe(started - item.enqueued_at)
            if started_ns and not item.request.batch_started_ns:
                item.request.batch_started_ns = started_ns  # a request's first batch ends its queue wait
        loop = asyncio.get_running_loop()
        try:
            scores = await loop.run_in_executor(self._compute_pool, self.engine.score, [i.row for i in batch])
        except Exception as exc:
            log.exception("forward pass failed for a batch of %d", len(batch))
            scores = None
            for item in batch:
                if not item.request.future.done():
                    item.request.future.set_exception(exc)
        finally:
            for item in batch:
                self._release(item.tenant, 1)
        self._observe(batch, time.perf_counter() - started)
        if started_ns:
            ended_ns = tracing.now_ns()
            for item in batch:
                item.request.batch_ended_ns = ended_ns
        if scores is not None:
            self._deliver(batch, scores)

    @staticmethod
    def _deliver(batch: list[_Item], scores: list[list[float]]) -> None:
        for item, values in zip(batch, scores):
            if item.row.encoded.offsets is not None:  # a token task's row
                values = TokenScores(values, item.row.encoded.offsets)
            request = item.request
            request.results[item.index] = values
            request.remaining -= 1
            if request.remaining == 0 and not request.future.done():
                request.future.set_result(request.results)

    @staticmethod
    def _observe(batch: list[_Item], seconds: float) -> None:
        metrics.INFERENCE_SECONDS.observe(seconds)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_TOKENS.observe(sum(len(i.row.encoded) + i.row.prefix.prefix_len for i in batch))
        metrics.BATCH_TASKS.observe(len({id(i.row.prefix) for i in batch}))


def _check_token_job(job: ClassifyJob) -> None:
    if not job.token_tasks:
        raise InputRefused("task: expected a sequence-classification task for this protocol, got a token-classification one")
    for index, text in enumerate(job.inputs):
        if not isinstance(text, str):
            raise InputRefused(f"inputs[{index}]: expected a text for a token-classification task, got a text pair")
