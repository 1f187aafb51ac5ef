"""Pipelining (issue 13): the engine process may launch batch n+1 before it collects batch n's
scores, and the batcher may then have two batches outstanding. On the CPU nothing overlaps (a
launch finishes the work), so the engine only pipelines when told to; these tests force it, and
check that the order of work changes while no row's result does."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pipe

import numpy as np
import pytest
import torch

from server.engine import EngineProcess, TokenBatch, wire
from server.engine.engine import PendingScores
from server.engine.tokenize import EncodedInput
from server.engine.worker import _Ops
from tests.helpers import load_task, make_artifact, score_rows

TEXTS = ["a fine film", ("is it good?", "yes it is"), "the plot is a mess and the actors look bored", "ok", "meh"]


@pytest.fixture(scope="module")
def pipelined(tiny_backbone_dir):
    process = EngineProcess(str(tiny_backbone_dir), pipeline=True)
    yield process
    process.close()


def test_a_pipelined_engine_process_says_so_and_a_cpu_one_does_not(pipelined, tiny_backbone_dir, tiny_engine):
    assert pipelined.batches_in_flight == 2
    assert tiny_engine.batches_in_flight == 1 and not tiny_engine.launches_async  # the CPU default
    plain = EngineProcess(str(tiny_backbone_dir))
    try:
        assert plain.batches_in_flight == 1
    finally:
        plain.close()


def test_batches_in_flight_together_score_as_each_alone(pipelined, tiny_engine):
    tasks = [make_artifact(tiny_engine.shape, p, n, seed=p) for p, n in ((2, 2), (11, 4), (40, 3))]
    remote = [load_task(pipelined, t) for t in tasks]
    local = [load_task(tiny_engine, t) for t in tasks]
    batches = [[(i + j) % len(TEXTS) for j in range(1 + i % 4)] for i in range(24)]  # text indices per batch

    def rows(loaded, batch_index, batch):
        return [
            (tiny_engine.encode([TEXTS[t]], tasks[(batch_index + k) % 3].prefix_len)[0], loaded[(batch_index + k) % 3])
            for k, t in enumerate(batch)
        ]

    expected = [score_rows(tiny_engine, rows(local, i, b)) for i, b in enumerate(batches)]
    with ThreadPoolExecutor(4) as pool:  # several batches outstanding at once: the pipe holds the next
        got = list(pool.map(lambda ib: score_rows(pipelined, rows(remote, *ib)), enumerate(batches)))
    assert got == expected  # float32 on both sides: bit for bit, each batch to its own caller


class _RecordingEngine:
    """Stands in for the Engine in _Ops: records launches and waits, fails where asked."""

    def __init__(self):
        self.events: list[str] = []
        self.shape = None
        self.tasks = self  # the task table: nothing is loaded, releases are no-ops

    def release(self, handles):
        pass

    def launch(self, batch: TokenBatch):
        label = int(batch.ids[0])
        if label == 99:
            raise RuntimeError("this batch cannot run")
        self.events.append(f"launch {label}")
        engine = self

        class Pending(PendingScores):
            def wait(self):
                engine.events.append(f"wait {label}")
                return super().wait()

        return Pending(torch.full((1, 2), float(label)), None)


def _score_message(call_id: int, first_token: int) -> tuple[bytes, bytes]:
    encoded = EncodedInput(np.array([first_token, 5], np.int32), np.zeros(2, np.int8))
    return wire.encode_header({"op": "score", "id": call_id, "payload": True}), wire.encode_batch(TokenBatch.of([encoded]))


def test_the_worker_launches_the_waiting_batch_before_it_collects_the_running_one():
    ours, theirs = Pipe()
    engine = _RecordingEngine()
    for call_id, token in enumerate((7, 8, 99, 9)):  # all four wait in the pipe before the loop starts
        for message in _score_message(call_id, token):
            ours.send_bytes(message)
    ours.send_bytes(wire.encode_header({"op": "stop", "id": 4, "payload": False}))
    ops = _Ops(theirs, engine, pipeline=True)
    server = threading.Thread(target=ops.serve)
    server.start()
    replies = {}
    while len(replies) < 5:
        reply = wire.decode_header(ours.recv_bytes())
        replies[reply["id"]] = (reply, wire.decode_scores(ours.recv_bytes()) if reply["payload"] else None)
    server.join(60)
    # Batch n is collected only after batch n+1 is on its way; a batch that fails to launch is answered
    # at once and leaves the one in flight in flight.
    assert engine.events == ["launch 7", "launch 8", "wait 7", "launch 9", "wait 8", "wait 9"]
    for call_id, token in ((0, 7), (1, 8), (3, 9)):
        assert replies[call_id][0]["ok"] and replies[call_id][1].rows.tolist() == [[float(token)] * 2]
    assert not replies[2][0]["ok"] and "cannot run" in replies[2][0]["error"]
    assert replies[4][0]["ok"]


def test_without_a_waiting_batch_the_running_one_is_collected_at_once():
    ours, theirs = Pipe()
    engine = _RecordingEngine()
    ops = _Ops(theirs, engine, pipeline=True)
    server = threading.Thread(target=ops.serve)
    server.start()
    for message in _score_message(0, 7):
        ours.send_bytes(message)
    assert ours.poll(60), "a lone batch must be answered without a next one to push it out"
    assert wire.decode_header(ours.recv_bytes())["ok"]
    ours.recv_bytes()
    assert engine.events == ["launch 7", "wait 7"]
    ours.send_bytes(wire.encode_header({"op": "stop", "id": 1, "payload": False}))
    server.join(60)
    assert not server.is_alive()
