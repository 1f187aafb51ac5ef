"""Cold fetches off the batch path (SPEC 6): while a task's artifact is being fetched from a store that
does not answer, requests for resident tasks keep being batched and answered; many requests for the cold
task wait on one fetch; a fetch that fails answers its own requests with the error, never the others."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.batching.test_batcher import WAIT_S, Store, job, make_batcher, run, until


class HeldStore(Store):
    """A store whose reads of one artifact wait until the test lets them go (or fail)."""

    def __init__(self, shape):
        super().__init__(shape)
        self.cold: str | None = None
        self.fetching, self.release = threading.Event(), threading.Event()
        self.fail = False

    def read(self, sha):
        if sha == self.cold:
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
    store.cold, store.fail = cold[0], fails

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
    assert store.reads == (1 if fails else 2)  # the warm task once, the cold one once for its five requests
