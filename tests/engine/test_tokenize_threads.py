"""The tokenizer is shared by the batcher's preparation threads: concurrent calls with different
limits must not cut each other's inputs (the fast tokenizer keeps truncation as shared state)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def test_concurrent_encodes_with_different_limits_match_sequential(tiny_engine):
    texts = ["word " * 150, ("premise " * 80, "hypothesis " * 70), "short one"]
    limits = [5, 20, 64, 100, 127]
    expected = {limit: tiny_engine.encoder.encode(texts, limit) for limit in limits}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda limit: (limit, tiny_engine.encoder.encode(texts, limit)), limits * 40))
    def ids(encoded):
        return [(e.input_ids.tolist(), e.token_type_ids.tolist(), e.truncated) for e in encoded]

    for limit, encoded in got:
        assert ids(encoded) == ids(expected[limit])
