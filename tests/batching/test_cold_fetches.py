"""Cold fetches off the batch path (SPEC 6): while a task's artifact is being fetched from a store that
does not answer, requests for resident tasks keep being batched and answered, long ones (tokenized off
the event loop) included; many requests for the cold task wait on one fetch, and a fetch that fails
fails them together, after one attempt, never the others; a request never waits on a fetch past its
deadline, and the fetch it gave up on still serves the next request."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.batching import DeadlineExceeded
from server.batching.batcher import INLINE_CHARS
from tests.batching.test_batcher import WAIT_S, Store, job, make_batcher, run, until


class HeldStore(Store):
    """A store whose reads of some artifacts wait until the test lets them go (or fail)."""

    def __init__(self, shape):
        super().__init__(shape)
        self.cold: set[str] = set()
        self.fetching, self.release = threading.Event(), threading.Event()
        self.fail = False
        self.cold_attempts = 0

    def read(self, sha):
        if sha in self.cold:
            self.cold_attempts += 1
            self.fetching.set()
            if not self.release.wait(WAIT_S):
                raise RuntimeError(f"the test held a fetch for {WAIT_S:g} s and never released it")
            if self.fail:
                raise ConnectionError("the blob store is unreachable")
        return super().read(sha)


@pytest.mark.parametrize("fails", [False, True], ids=["fetched", "failed"])
def test_a_held_fetch_holds_up_only_its_own_requests(tiny_engine, fails):
    store = HeldStore(tiny_engine.shape)
    warm, cold = store.add(4, seed=1), store.add(6, seed=2)
    store.cold, store.fail = {cold[0]}, fails

    async def main():
        batcher, _, _ = make_batcher(tiny_engine, store)
        batcher.start()
        await batcher.classify(job("a", warm, ["warm up"]))  # resident from here on
        cold_requests = [asyncio.create_task(batcher.classify(job("b", cold, [f"cold {i}"]))) for i in range(5)]
        await until(store.fetching.is_set, "the cold task's fetch to begin")
        for i in range(3):  # answered while the fetch is held: the batch loop never waits on it
            assert len(await batcher.classify(job("a", warm, [f"warm {i}"]))) == 1
        assert not any(r.done() for r in cold_requests)
        store.release.set()
        outcomes = await asyncio.gather(*cold_requests, return_exceptions=True)
        await batcher.stop()
        return outcomes

    outcomes = run(main())
    if fails:
        assert all(isinstance(o, ConnectionError) for o in outcomes), outcomes
    else:
        assert all(len(o) == 1 for o in outcomes), outcomes
    assert store.cold_attempts == 1  # five requests, one fetch: shared when it fails too
    assert store.reads == (1 if fails else 2)  # the warm task once, the cold one once if it came


def test_long_warm_requests_pass_fetches_held_on_a_hung_store(tiny_engine):
    store = HeldStore(tiny_engine.shape)
    warm, cold = store.add(4, seed=1), [store.add(6, seed=2 + i) for i in range(2)]
    store.cold = {task[0] for task in cold}
    long_text = "a long review " * (INLINE_CHARS // 10)  # tokenized in the prep pool, not on the event loop

    async def main():
        batcher, _, _ = make_batcher(tiny_engine, store)
        batcher.start()
        await batcher.classify(job("a", warm, ["warm up"]))
        held = [asyncio.create_task(batcher.classify(job("b", task, ["cold"]))) for task in cold]
        await until(lambda: store.cold_attempts == 2, "both cold fetches to begin")
        answered = await batcher.classify(job("a", warm, [long_text]))
        store.release.set()
        await asyncio.gather(*held)
        await batcher.stop()
        return answered

    assert len(run(main())) == 1


def test_a_request_stops_waiting_on_a_fetch_at_its_deadline(tiny_engine):
    store = HeldStore(tiny_engine.shape)
    cold = store.add(6, seed=2)
    store.cold = {cold[0]}

    async def main():
        batcher, _, cache = make_batcher(tiny_engine, store)
        batcher.start()
        with pytest.raises(DeadlineExceeded, match=r"did not finish within 0\.2 s"):
            await batcher.classify(job("b", cold, ["cold"], timeout_s=0.2))
        store.release.set()  # the fetch it gave up on goes on, and is kept
        await until(lambda: cold[0] in cache, "the fetch to finish")
        answered = await batcher.classify(job("b", cold, ["cold again"]))
        await batcher.stop()
        return answered

    assert len(run(main())) == 1
    assert store.cold_attempts == 1
