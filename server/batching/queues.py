"""The batcher's queue: inputs waiting for a forward pass, and the room each tenant and the server has
reserved for them. Only the Batcher touches it, on the event loop; nothing here awaits.

One FIFO per tenant (per tenant and task in the per-task baseline); a request's inputs sit together in
its tenant's FIFO, so the request at the head of a FIFO is the only one of that tenant that may have
started. Batches are taken in one of two orders:
- in turn (serving): one input from each tenant with queued inputs, round after round, so a tenant
  that floods 10,000 inputs waits its turn like one that sends one;
- request by request (draining, after SIGTERM): fairness no longer matters, finishing does: the
  requests already started first, then the oldest, each taken whole before the next; a request that
  would not finish within the caller's budget of tokens is refused with ShuttingDown, as early as that
  is known, so its client can retry elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from server.batching.prefix_cache import ResidentTask
from server.engine import EncodedInput, InputRefused, ScoreFunction


class Overloaded(Exception):
    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass(eq=False)
class PendingRequest:
    """One classify call's inputs in flight: its future resolves with the scores in input order."""

    future: asyncio.Future
    results: list
    deadline: float  # event-loop time
    remaining: int
    cancelled: bool = False
    started: bool = False  # one of its inputs has gone to the engine
    # Wall-clock nanoseconds for the spans (server.tracing), 0 while tracing is off.
    enqueued_ns: int = 0
    batch_started_ns: int = 0
    batch_ended_ns: int = 0

    def deliver(self, index: int, values) -> None:
        self.results[index] = values
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.results)

    def fail(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)
        self.cancelled = True


@dataclass(eq=False, slots=True)
class QueuedInput:
    """One input of a request: a row of a future batch."""

    request: PendingRequest
    index: int  # its place in the request's inputs
    encoded: EncodedInput
    task: ResidentTask
    score_function: ScoreFunction
    tenant: str
    enqueued_at: float = field(default_factory=time.perf_counter)

    @property
    def tokens(self) -> int:
        """What the input costs a batch: its tokens plus its prefix, the keys it attends over (the
        engine packs rows, so no padding is counted)."""
        return len(self.encoded) + self.task.prefix_len


class InputQueues:
    def __init__(self, per_task: bool = False) -> None:
        self.per_task = per_task
        self._queues: dict[object, deque[QueuedInput]] = {}
        self._turns: deque[object] = deque()  # keys with queued inputs, in serving order
        self.reserved = 0  # inputs admitted and not yet computed or dropped
        self._reserved_by_tenant: Counter[str] = Counter()

    # --- room -------------------------------------------------------------------------------

    def reserve(self, tenant: str, count: int, server_max: int, tenant_max: int) -> None:
        """Room for `count` inputs, or Overloaded (429: retry later) when the queues are full now, or
        InputRefused (422) when the request could never fit, full or empty."""
        for limit, whose in ((server_max, "the server's queue"), (tenant_max, f"tenant {tenant!r}'s queue")):
            if count > limit:
                raise InputRefused(
                    f"inputs: expected at most {limit} inputs, {whose} allowance, got {count}: "
                    "the request can never be admitted; split it into smaller requests"
                )
        if self.reserved + count > server_max:
            raise Overloaded(
                f"the server queue is full: {self.reserved} of {server_max} inputs queued, this request adds {count}",
                retry_after_s=1,
            )
        if self._reserved_by_tenant[tenant] + count > tenant_max:
            raise Overloaded(
                f"tenant {tenant!r} has {self._reserved_by_tenant[tenant]} inputs queued, at most {tenant_max} "
                f"allowed; this request adds {count}",
                retry_after_s=1,
            )
        self.reserved += count
        self._reserved_by_tenant[tenant] += count

    def release(self, tenant: str, count: int) -> None:
        self.reserved -= count
        self._reserved_by_tenant[tenant] -= count
        if self._reserved_by_tenant[tenant] <= 0:
            del self._reserved_by_tenant[tenant]

    # --- inputs -----------------------------------------------------------------------------

    def push(self, tenant: str, sha256: str, inputs: list[QueuedInput]) -> None:
        key = (tenant, sha256) if self.per_task else tenant
        queue = self._queues.setdefault(key, deque())
        if not queue:
            self._turns.append(key)
        queue.extend(inputs)

    def __bool__(self) -> bool:
        return bool(self._turns)

    def queued_inputs(self) -> int:
        return sum(len(self._queues[key]) for key in self._turns)

    def oldest_enqueued_at(self) -> float:
        return min(self._queues[key][0].enqueued_at for key in self._turns)

    def remove_all(self) -> list[QueuedInput]:
        """Empties the queues, returning what they held; the caller releases the room."""
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self._turns.clear()
        return items

    def take_in_turn(self, max_size: int, max_tokens: int, now: float) -> list[QueuedInput]:
        batch: list[QueuedInput] = []
        tokens = 0
        while self._turns and len(batch) < max_size:
            key = self._turns[0]
            queue = self._queues[key]
            item = queue[0]
            if self._dropped_if_dead(item, now):
                queue.popleft()
            else:
                if batch and tokens + item.tokens > max_tokens:
                    break
                batch.append(self._start(queue.popleft()))
                tokens += item.tokens
                if not self.per_task:
                    self._turns.rotate(-1)  # the next input comes from the next tenant in turn
            if not queue:
                self._forget(key)
                if self.per_task and batch:
                    return batch
        if self.per_task and self._turns and batch and self._turns[0] == key:
            self._turns.rotate(-1)  # the next batch serves the next task
        return batch

    def take_draining(self, max_size: int, max_tokens: int, now: float, budget_tokens: float) -> list[QueuedInput]:
        """Request by request, started ones first, then the oldest. A request is started only if it,
        with the queued work of those started before it, fits in `budget_tokens` (what the engine can
        compute before the drain deadline); otherwise it is refused."""
        batch: list[QueuedInput] = []
        tokens = 0
        committed = self._started_tokens()
        while self._turns and len(batch) < max_size:
            key = min(self._turns, key=self._drain_order)
            queue = self._queues[key]
            item = queue[0]
            if self._dropped_if_dead(item, now):
                queue.popleft()
            elif not item.request.started and committed + self._request_tokens(queue) > budget_tokens:
                self._refuse({item.request})
                continue
            else:
                if not item.request.started:
                    committed += self._request_tokens(queue)
                if batch and tokens + item.tokens > max_tokens:
                    break
                batch.append(self._start(queue.popleft()))
                tokens += item.tokens
            if not queue:
                self._forget(key)
        return batch

    def refuse_beyond(self, budget_tokens: float) -> None:
        """Refuses now the requests that, queued behind the started ones and the older ones, would not
        finish within `budget_tokens`: their clients can retry elsewhere at once instead of at the deadline."""
        committed, waiting = 0, []
        for key in self._turns:
            for request, tokens, first in self._requests_of(self._queues[key]):
                if request.started:
                    committed += tokens
                else:
                    waiting.append((first, tokens, request))
        hopeless = set()
        for _, tokens, request in sorted(waiting, key=lambda entry: entry[0]):
            if committed + tokens > budget_tokens:
                hopeless.add(request)
            else:
                committed += tokens
        if hopeless:
            self._refuse(hopeless)

    def _started_tokens(self) -> int:
        """Tokens of the queued inputs of requests that have started (they sit at the heads)."""
        total = 0
        for key in self._turns:
            queue = self._queues[key]
            request = queue[0].request
            if request.started:
                total += self._request_tokens(queue)
        return total

    # --- helpers ----------------------------------------------------------------------------

    def _drain_order(self, key: object) -> tuple[bool, float]:
        head = self._queues[key][0]
        return (not head.request.started, head.enqueued_at)

    @staticmethod
    def _request_tokens(queue: deque[QueuedInput]) -> int:
        """The tokens of the head request's queued inputs (they sit together at the head)."""
        request, total = queue[0].request, 0
        for item in queue:
            if item.request is not request:
                break
            total += item.tokens
        return total

    @staticmethod
    def _start(item: QueuedInput) -> QueuedInput:
        item.request.started = True
        return item

    def _dropped_if_dead(self, item: QueuedInput, now: float) -> bool:
        """Drops (releasing its room) an input whose request was cancelled or has expired."""
        request = item.request
        if not (request.cancelled or request.deadline <= now):
            return False
        self.release(item.tenant, 1)
        if not request.cancelled:
            request.fail(DeadlineExceeded("the request expired while queued"))
        return True

    @staticmethod
    def _requests_of(queue: deque[QueuedInput]) -> list[tuple[PendingRequest, int, float]]:
        """(request, tokens of its queued inputs, when its first was queued) in queue order."""
        found: list[list] = []
        for item in queue:
            if found and found[-1][0] is item.request:
                found[-1][1] += item.tokens
            else:
                found.append([item.request, item.tokens, item.enqueued_at])
        return [tuple(entry) for entry in found]

    def _refuse(self, requests: set[PendingRequest]) -> None:
        for key in list(self._turns):
            queue = self._queues[key]
            kept = deque(item for item in queue if item.request not in requests)
            for _ in range(len(queue) - len(kept)):
                self.release(key[0] if self.per_task else key, 1)
            self._queues[key] = kept
            if not kept:
                self._forget(key)
        for request in requests:
            request.fail(ShuttingDown(
                "the server is shutting down and this request could not finish before its drain deadline; "
                "retry it (another replica will answer)"
            ))

    def _forget(self, key: object) -> None:
        self._turns.remove(key)
        del self._queues[key]
