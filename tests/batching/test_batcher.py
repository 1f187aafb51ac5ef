"""The batcher: one queue owner, cross-task batches, fairness, backpressure, deadlines, cancellation.

The tests synchronise on events, never on time: the spy engine says when a forward pass has begun
(`entered`) and holds it until the test lets it go (`release`), and a test waits for requests to
reach the queue by polling it with a deadline."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import numpy as np
import pytest

from harness.processes import wait_until_async
from server.artifact import ProblemType, artifact_to_bytes
from server.batching import Batcher, BatchLimits, ClassifyJob, DeadlineExceeded, Overloaded, PrefixCache
from server.engine import TokenBatch
from server.engine.scoring import TASK_SCORE_FUNCTION
from tests.helpers import make_artifact

TOL = 1e-5
WAIT_S = 60.0  # only a broken test waits this long


class Store:
    """Artifacts by sha256, like the registry's blob store."""

    def __init__(self, shape):
        self.shape, self.blobs, self.reads = shape, {}, 0

    def add(self, prefix_len, num_labels=2, kind=ProblemType.SINGLE_LABEL, seed=0) -> tuple[str, int]:
        data = artifact_to_bytes(make_artifact(self.shape, prefix_len, num_labels, kind, seed=seed))
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha, prefix_len

    def read(self, sha):
        self.reads += 1
        return self.blobs[sha]


class SpyEngine:
    """Wraps the real engine, recording every forward pass. `entered` is set when a forward pass begins;
    after `hold()`, forward passes wait until `release` is set, so a test builds up a queue behind a
    batch it knows is running."""

    def __init__(self, engine):
        self.engine, self.batches = engine, []
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def hold(self) -> None:
        self.release.clear()

    def score(self, batch: TokenBatch):
        self.entered.set()
        if not self.release.wait(WAIT_S):
            raise RuntimeError(f"the test held a forward pass for {WAIT_S:g} s and never released it")
        self.batches.append(batch)
        return self.engine.score(batch)


def rows_ids(batch: TokenBatch) -> list[list[int]]:
    """Each row's token ids."""
    return [ids.tolist() for ids in np.split(batch.ids, np.cumsum(batch.lengths)[:-1])]


def score_alone(engine, encoded, task) -> list[float]:
    """The scores of one input of a cached task, in a batch of its own."""
    batch = TokenBatch.of([encoded], [task.handle], [task.facts.head], [TASK_SCORE_FUNCTION[task.facts.problem_type]])
    return engine.score(batch).split(batch, [task.facts.num_labels])[0]


def queued_rows(batcher) -> int:
    """Inputs in the batcher's queues, waiting for a batch (`queued_inputs` also counts the ones being
    admitted and the ones in the forward pass)."""
    return batcher._queues.queued_inputs()


async def until(predicate, what: str):
    return await wait_until_async(predicate, WAIT_S, what)


def make_batcher(engine, store, **limits):
    spy = SpyEngine(engine)
    cache = PrefixCache(engine, store.read, 1 << 30)
    batcher = Batcher(spy, cache, BatchLimits(**{"max_wait_ms": 5.0, **limits}), engine.encoder)
    return batcher, spy, cache


def job(tenant, task, inputs, timeout_s=10.0, truncate=True, tenant_max_queued=10_000):
    sha, prefix_len = task
    return ClassifyJob(tenant, sha, prefix_len, inputs, truncate, timeout_s, tenant_max_queued)


def run(coro):
    return asyncio.run(coro)


def test_tenants_and_tasks_share_one_forward_pass_and_match_alone(tiny_engine):
    store = Store(tiny_engine.shape)
    tasks = [store.add(p, n, k, seed=i) for i, (p, n, k) in enumerate(
        [(3, 2, ProblemType.SINGLE_LABEL), (17, 5, ProblemType.MULTI_LABEL), (8, 1, ProblemType.REGRESSION)]
    )]
    texts = ["good movie", ("is it?", "yes"), "terrible, boring and long"]

    async def main():
        # A batch closes when it is full (3) and not on time before that: the three requests meet in the
        # queue however slowly they arrive.
        batcher, spy, cache = make_batcher(tiny_engine, store, max_batch_size=3, max_wait_ms=WAIT_S * 1000)
        batcher.start()
        calls = [batcher.classify(job(f"tenant{i}", task, [text])) for i, (task, text) in enumerate(zip(tasks, texts))]
        results = await asyncio.gather(*calls)
        await batcher.stop()
        return results, spy.batches, cache

    results, batches, cache = run(main())
    assert len(batches) == 1 and len(batches[0]) == 3, "all three requests must share one forward pass"
    for (sha, prefix_len), text, (scores,) in zip(tasks, texts, results):
        encoded = tiny_engine.encode([text], prefix_len)[0]
        alone = score_alone(tiny_engine, encoded, cache.get(sha))
        assert max(abs(a - b) for a, b in zip(scores, alone)) <= TOL


def test_a_flooding_tenant_does_not_hold_back_another(tiny_engine):
    store = Store(tiny_engine.shape)
    task = store.add(4)

    async def main():
        batcher, spy, _ = make_batcher(tiny_engine, store, max_batch_size=8)
        batcher.start()
        spy.hold()
        flood = asyncio.ensure_future(batcher.classify(job("flood", task, ["spam"] * 200)))
        await until(spy.entered.is_set, "the flood's first batch to reach the engine")
        single = asyncio.ensure_future(batcher.classify(job("quiet", task, ["hello"])))
        await until(lambda: queued_rows(batcher) == 200 - 8 + 1, "the quiet request to queue behind the flood")
        spy.release.set()
        await asyncio.gather(single, flood)
        await batcher.stop()
        hello = tiny_engine.encode(["hello"], 4)[0].input_ids.tolist()
        first_with_single = next(i for i, batch in enumerate(spy.batches) if hello in rows_ids(batch))
        return first_with_single + 1, len(spy.batches)

    until_single, total = run(main())
    assert total >= 25  # 200 inputs / 8 per batch
    assert until_single <= 2, f"the quiet tenant waited {until_single} batches behind the flood"


def test_queue_bounds_give_overloaded(tiny_engine):
    store = Store(tiny_engine.shape)
    task = store.add(4)

    async def main():
        batcher, spy, _ = make_batcher(tiny_engine, store, max_queued_inputs=10)
        batcher.start()
        spy.hold()
        first = asyncio.ensure_future(batcher.classify(job("a", task, ["x"] * 8)))
        await until(spy.entered.is_set, "the first request's batch to reach the engine")  # its 8 inputs hold their room
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.classify(job("b", task, ["y"] * 3))
        with pytest.raises(Overloaded, match="tenant 'a'"):
            await batcher.classify(job("a", task, ["y"], tenant_max_queued=8))
        spy.release.set()
        await first
        assert batcher.queued_inputs == 0
        await batcher.classify(job("b", task, ["y"] * 3))  # room again once the first ran
        await batcher.stop()

    run(main())


def test_expired_and_cancelled_requests_are_dropped_before_compute(tiny_engine):
    store = Store(tiny_engine.shape)
    task = store.add(4)

    async def main():
        batcher, spy, _ = make_batcher(tiny_engine, store, max_batch_size=4)
        batcher.start()
        spy.hold()
        blocker = asyncio.ensure_future(batcher.classify(job("a", task, ["first"] * 4)))
        await until(spy.entered.is_set, "the blocker's batch to reach the (held) engine")
        expiring = asyncio.ensure_future(batcher.classify(job("b", task, ["expire me"], timeout_s=0.05)))
        cancelled = asyncio.ensure_future(batcher.classify(job("c", task, ["cancel me"])))
        await until(lambda: queued_rows(batcher) == 2, "both requests to queue behind the blocker")
        cancelled.cancel()
        with pytest.raises(DeadlineExceeded):
            await expiring
        spy.release.set()
        await blocker
        # Dropping an input gives its room back: at 0 the loop has dropped both, and nothing else is left.
        await until(lambda: batcher.queued_inputs == 0, "the batcher to drop the expired and the cancelled inputs")
        computed = [ids for batch in spy.batches for ids in rows_ids(batch)]
        await batcher.stop()
        return computed

    computed = run(main())
    assert len(computed) == 4, "only the blocker's inputs may reach the engine"


def test_batches_respect_size_and_token_budget(tiny_engine):
    store = Store(tiny_engine.shape)
    task = store.add(10)
    text = "word " * 20  # 22 tokens + prefix 10 = 32 padded slots per row

    async def main():
        batcher, spy, _ = make_batcher(tiny_engine, store, max_batch_size=64, max_batch_tokens=32 * 5)
        batcher.start()
        await batcher.classify(job("a", task, [text] * 12))  # one request: its inputs queue together
        await batcher.stop()
        return [batch.rows for batch in spy.batches]

    sizes = run(main())
    assert max(sizes) <= 5 and sum(sizes) == 12


def test_token_budget_counts_real_tokens_not_padding(tiny_engine):
    """One long input and short ones share a batch up to the budget of their own tokens + prefixes;
    padding every row to the longest would have left the long one alone."""
    store = Store(tiny_engine.shape)
    task = store.add(10)
    long_text, short_text = "word " * 60, "ok"  # 62 and 3 tokens

    async def main():
        batcher, spy, _ = make_batcher(tiny_engine, store, max_batch_size=64, max_batch_tokens=72 + 13 * 6)
        batcher.start()
        await batcher.classify(job("a", task, [long_text] + [short_text] * 10))  # one request: its inputs queue together
        await batcher.stop()
        return [batch.rows for batch in spy.batches]

    assert run(main())[0] == 7  # 72 + 6 x 13 tokens; padded it would be 7 x 72


def test_prefix_loads_once_per_version(tiny_engine):
    store = Store(tiny_engine.shape)
    task = store.add(6)

    async def main():
        batcher, _, _ = make_batcher(tiny_engine, store)
        batcher.start()
        await asyncio.gather(*[batcher.classify(job("a", task, ["x"])) for _ in range(20)])
        await batcher.stop()

    run(main())
    assert store.reads == 1


def test_per_task_baseline_puts_one_task_in_each_forward_pass(tiny_engine):
    store = Store(tiny_engine.shape)
    tasks = [store.add(3 + i, seed=i) for i in range(3)]

    async def main():
        batcher, spy, _ = make_batcher(tiny_engine, store, per_task_batches=True, max_batch_size=4)
        batcher.start()
        spy.hold()
        blocker = asyncio.ensure_future(batcher.classify(job("t0", tasks[0], ["w"])))
        await until(spy.entered.is_set, "the blocker's batch to reach the (held) engine")
        calls = [batcher.classify(job(f"t{i % 2}", task, ["x", "y", "z"])) for i, task in enumerate(tasks * 2)]
        gathered = asyncio.gather(*calls)
        await until(lambda: queued_rows(batcher) == 18, "all six requests to queue, mixed, behind the blocker")
        spy.release.set()
        await asyncio.gather(blocker, gathered)
        await batcher.stop()
        return spy.batches

    batches = run(main())
    assert sum(batch.rows for batch in batches) == 1 + 18
    assert all(len(set(batch.tasks.tolist())) == 1 for batch in batches)


class PipelinedSpy(SpyEngine):
    """An engine that takes two batches at once (as the engine process does on CUDA): counts how
    many `score` calls are outstanding together."""

    batches_in_flight = 2

    def __init__(self, engine):
        super().__init__(engine)
        self.outstanding = self.most_outstanding = 0
        self.lock = threading.Lock()

    def score(self, batch):
        with self.lock:
            self.outstanding += 1
            self.most_outstanding = max(self.most_outstanding, self.outstanding)
        try:
            return super().score(batch)
        finally:
            with self.lock:
                self.outstanding -= 1


def test_a_pipelining_engine_gets_the_next_batch_while_one_runs_and_never_a_third(tiny_engine):
    store = Store(tiny_engine.shape)
    tasks = [store.add(p, seed=p) for p in (3, 12)]
    texts = [f"review number {i} was {'good' if i % 2 else 'bad'}" for i in range(12)]

    async def main():
        spy = PipelinedSpy(tiny_engine)
        cache = PrefixCache(tiny_engine, store.read, 1 << 30)
        for sha, _ in tasks:
            cache.get(sha)  # resident: every request is queued in the loop turn it starts, so each batch is full
        batcher = Batcher(spy, cache, BatchLimits(max_batch_size=2, max_wait_ms=1.0), tiny_engine.encoder)
        batcher.start()
        spy.hold()  # the first batches hold: what does the batcher send meanwhile?
        calls = [batcher.classify(job(f"t{i % 3}", tasks[i % 2], [text])) for i, text in enumerate(texts)]
        gathered = asyncio.gather(*calls)
        # The next batch is sent while the first runs (a timeout here means it was not) ...
        await until(lambda: spy.outstanding == 2, "a second batch sent while the first is held in the engine")
        # ... and with the rest queued, a third is not (the count would reach 3 before the release).
        await until(lambda: queued_rows(batcher) == len(texts) - 4, "the other requests to queue")
        spy.release.set()
        results = await gathered
        await batcher.stop()
        return spy, cache, results

    spy, cache, results = run(main())
    assert spy.most_outstanding == 2 and len(spy.batches) == 6
    for i, (text, (scores,)) in enumerate(zip(texts, results)):
        sha, prefix_len = tasks[i % 2]
        alone = score_alone(tiny_engine, tiny_engine.encode([text], prefix_len)[0], cache.get(sha))
        assert max(abs(a - b) for a, b in zip(scores, alone)) <= TOL


def test_an_engine_of_one_batch_at_a_time_never_gets_two(tiny_engine):
    store = Store(tiny_engine.shape)
    task = store.add(5)

    async def main():
        spy = PipelinedSpy(tiny_engine)
        spy.batches_in_flight = 1
        batcher = Batcher(spy, PrefixCache(tiny_engine, store.read, 1 << 30), BatchLimits(max_batch_size=2), tiny_engine.encoder)
        batcher.start()
        await asyncio.gather(*[batcher.classify(job("a", task, [f"text {i}"])) for i in range(10)])
        await batcher.stop()
        return spy

    spy = run(main())
    assert spy.most_outstanding == 1 and len(spy.batches) >= 5
