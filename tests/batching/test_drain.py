"""Draining (SIGTERM): requests finish whole, started ones first; what cannot finish by the deadline
is refused with ShuttingDown, early when plainly hopeless, and at the deadline whatever is left; a
request larger than the queue bounds is refused as invalid, not as overloaded."""

from __future__ import annotations

import asyncio
import threading

import pytest

from harness.processes import wait_until_async
from server.batching import Batcher, BatchLimits, ClassifyJob, PrefixCache, ShuttingDown
from server.batching.queues import InputQueues, PendingRequest, QueuedInput
from server.engine import InputRefused
from tests.batching.test_batcher import Store

WAIT_S = 30  # generous: events end every wait long before this


class GatedEngine:
    """The real engine, each forward pass held until the test opens the gate; `entered` is set when
    a pass begins, and every pass's rows are recorded."""

    def __init__(self, engine):
        self.engine, self.batches = engine, []
        self.entered, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def score(self, batch):
        self.batches.append(batch)
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        return self.engine.score(batch)


def make(engine, store, **limits):
    """The store's prefixes are loaded first, so a request is queued in the event-loop step that sends it."""
    gated = GatedEngine(engine)
    cache = PrefixCache(engine, store.read, 1 << 30)
    for sha in store.blobs:
        cache.get(sha)
    return Batcher(gated, cache, BatchLimits(**{"max_wait_ms": 1.0, **limits}), engine.encoder), gated


def job(tenant, task, inputs, tenant_max_queued=10_000):
    sha, prefix_len = task
    return ClassifyJob(tenant, sha, prefix_len, inputs, True, 60.0, tenant_max_queued)


async def until(predicate, what: str) -> None:
    await wait_until_async(predicate, WAIT_S, what)


def test_draining_finishes_requests_whole_started_first_then_the_oldest(tiny_engine):
    store = Store(tiny_engine.shape)
    task = store.add(4)
    # Each input a different number of words, so a row tells which input it is by its length.
    names = ["a0", "a1", "a2", "b0", "b1", "b2", "b3", "a3", "a4"]
    text = {name: " ".join(["word"] * (i + 1)) for i, name in enumerate(names)}

    async def main():
        batcher, engine = make(tiny_engine, store, max_batch_size=4)
        batcher.start()
        # Two tenants; a's first request starts in turn with b's, then the queue builds behind the gate.
        first_a = asyncio.ensure_future(batcher.classify(job("a", task, [text["a0"], text["a1"], text["a2"]])))
        first_b = asyncio.ensure_future(batcher.classify(job("b", task, [text["b0"], text["b1"], text["b2"]])))
        await asyncio.to_thread(engine.entered.wait, WAIT_S)
        later_b = asyncio.ensure_future(batcher.classify(job("b", task, [text["b3"]])))
        await until(lambda: batcher.queued_inputs == 7, "b's second request queued")
        later_a = asyncio.ensure_future(batcher.classify(job("a", task, [text["a3"], text["a4"]])))
        await until(lambda: batcher.queued_inputs == 9, "a's second request queued")
        batcher.drain(asyncio.get_running_loop().time() + 600)
        engine.gate.set()
        results = await asyncio.gather(first_a, first_b, later_b, later_a)
        await batcher.stop()
        return engine.batches, results

    batches, results = asyncio.run(main())
    by_length = {len(tiny_engine.encoder.encode([text[name]], 512)[0]): name for name in names}
    assert len(by_length) == len(names)
    order = [[by_length[length] for length in batch.lengths.tolist()] for batch in batches]
    assert order[0] == ["a0", "b0", "a1", "b1"]  # in turn, before the drain
    # Draining: the started requests' rest first, then the oldest waiting request (b's, queued before a's).
    assert order[1:] == [["a2", "b2", "b3", "a3"], ["a4"]]
    assert [len(r) for r in results] == [3, 3, 1, 2]


def test_at_the_deadline_everything_left_is_refused_and_new_requests_too(tiny_engine):
    store = Store(tiny_engine.shape)
    task = store.add(4)

    async def main():
        batcher, engine = make(tiny_engine, store, max_batch_size=2)
        batcher.start()
        running = asyncio.ensure_future(batcher.classify(job("a", task, ["r0", "r1"])))
        await asyncio.to_thread(engine.entered.wait, WAIT_S)
        queued = asyncio.ensure_future(batcher.classify(job("a", task, ["q0"])))
        await until(lambda: batcher.queued_inputs == 3, "the second request queued")
        batcher.drain(asyncio.get_running_loop().time() + 0.05)  # passes while the engine is held
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        with pytest.raises(ShuttingDown):
            await batcher.classify(job("a", task, ["late"]))
        engine.gate.set()
        await batcher.stop()
        return outcomes, batcher.queued_inputs, len(engine.batches)

    outcomes, queued_after, passes = asyncio.run(main())
    assert all(isinstance(outcome, ShuttingDown) for outcome in outcomes), outcomes
    assert "drain deadline" in str(outcomes[0])
    assert queued_after == 0 and passes == 1  # the queued request never reached the engine


def test_a_request_larger_than_the_queue_bounds_is_invalid_not_overloaded(tiny_engine):
    store = Store(tiny_engine.shape)
    task = store.add(4)

    async def main():
        batcher, engine = make(tiny_engine, store, max_queued_inputs=8)
        engine.gate.set()
        batcher.start()
        with pytest.raises(InputRefused, match=r"tenant 'a'.s queue allowance, got 3"):
            await batcher.classify(job("a", task, ["x"] * 3, tenant_max_queued=2))
        with pytest.raises(InputRefused, match="at most 8 inputs, the server's queue allowance, got 9"):
            await batcher.classify(job("a", task, ["x"] * 9))
        assert len(await batcher.classify(job("a", task, ["x"] * 2, tenant_max_queued=2))) == 2
        await batcher.stop()
        return batcher.queued_inputs

    assert asyncio.run(main()) == 0


# --- the queue's draining order and budgets, on their own ---------------------------------------


class FakeTask:
    prefix_len = 0


class FakeEncoded:
    def __init__(self, tokens: int):
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens


def queue_requests(queues: InputQueues, loop, spec: list[tuple[str, list[int]]]) -> list[PendingRequest]:
    """spec: (tenant, [tokens per input]) per request, in arrival order."""
    requests = []
    for tenant, sizes in spec:
        request = PendingRequest(loop.create_future(), [None] * len(sizes), loop.time() + 600, len(sizes))
        queues.reserve(tenant, len(sizes), 10_000, 10_000)
        queues.push(tenant, "sha", [QueuedInput(request, i, FakeEncoded(n), FakeTask(), 0, tenant) for i, n in enumerate(sizes)])
        requests.append(request)
    return requests


def test_a_request_is_started_only_if_it_fits_the_budget_and_the_hopeless_are_refused_ahead():
    async def main():
        loop = asyncio.get_running_loop()
        queues = InputQueues()
        big, small, late = queue_requests(queues, loop, [("a", [50, 50]), ("b", [10]), ("c", [30, 30])])
        # A budget of 40 tokens: the 100-token request cannot finish, the 10-token one can, and then
        # the 60-token one cannot either (10 + 60 > 40).
        batch = queues.take_draining(max_size=8, max_tokens=1000, now=loop.time(), budget_tokens=40)
        assert [item.request for item in batch] == [small]
        for request in (big, late):
            with pytest.raises(ShuttingDown):
                request.future.result()
        assert queues.reserved == 1 and not queues  # only the batch's input still holds its room

        queues = InputQueues()
        first, second, third = queue_requests(queues, loop, [("a", [20]), ("b", [20]), ("c", [20])])
        queues.refuse_beyond(budget_tokens=45)  # two fit, the third is plainly beyond: refused now
        assert not first.future.done() and not second.future.done()
        with pytest.raises(ShuttingDown):
            third.future.result()
        assert queues.reserved == 2

    asyncio.run(main())
