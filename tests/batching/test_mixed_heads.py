"""Sequence, token, span and choice rows in one forward pass: a question's windows and an item's choices
are rows like any other, and every request's results equal the same request alone."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import pytest

from server.artifact import HeadKind, artifact_to_bytes
from server.batching import ChoiceInput, ChoiceScores, ClassifyJob, QuestionInput, SpanAnswer, SpanOptions, TokenScores
from server.batching.inputs import expand
from server.engine import InputRefused
from server.engine.batch import HEAD_CODES
from tests.batching.test_batcher import make_batcher, queued_rows, until
from tests.helpers import make_artifact

TOL = 1e-5
CONTEXT = "George Washington went to New York with John Smith. The quick brown fox jumps over the lazy dog in Paris. " * 3
EVERY_HEAD = frozenset(HeadKind)


class Store:
    def __init__(self, shape):
        self.shape, self.blobs = shape, {}

    def add(self, **kwargs) -> tuple[str, int]:
        artifact = make_artifact(self.shape, **kwargs)
        data = artifact_to_bytes(artifact)
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha, artifact.prefix_len

    def read(self, sha):
        return self.blobs[sha]


def jobs(store: Store) -> list[ClassifyJob]:
    sequence = store.add(prefix_len=3, num_labels=3, seed=1)
    token = store.add(prefix_len=5, num_labels=4, head=HeadKind.TOKEN, seed=2)
    span = store.add(prefix_len=4, num_labels=2, head=HeadKind.SPAN, labels=("start", "end"), seed=3)
    choice = store.add(prefix_len=6, num_labels=1, head=HeadKind.CHOICE, labels=("choice",), own_pooler=True, seed=4)
    window = SpanOptions(max_seq_len=40, doc_stride=12)

    def job(task, inputs, span=None):
        return ClassifyJob("t", task[0], task[1], inputs, True, 30.0, 10_000, heads=EVERY_HEAD, span=span or SpanOptions())

    return [
        job(sequence, ["good movie", ("is it?", "yes it is")]),
        job(token, ["George Washington went to New York"]),
        job(span, [QuestionInput("Who went to New York?", CONTEXT), QuestionInput("what jumps?", "The fox jumps.")], window),
        job(choice, [ChoiceInput("The fox", ("jumps.", "sleeps.", "runs away.")), ChoiceInput("A dog", ("barks.", "sings."))]),
    ]


def assert_same(together, alone) -> None:
    for a, b in zip(together, alone):
        if isinstance(a, SpanAnswer):
            assert (a.answer, a.start, a.end) == (b.answer, b.start, b.end) and a.score == pytest.approx(b.score, abs=TOL)
        elif isinstance(a, ChoiceScores):
            assert a.choice == b.choice and a.scores == pytest.approx(b.scores, abs=TOL)
        elif isinstance(a, TokenScores):
            assert a.offsets == b.offsets
            assert all(x == pytest.approx(y, abs=TOL) for x, y in zip(a.scores, b.scores))
        else:
            assert a == pytest.approx(b, abs=TOL)


def test_every_head_in_one_forward_pass_equals_each_request_alone(tiny_engine):
    store = Store(tiny_engine.shape)
    requests = jobs(store)
    span_job = requests[2]
    fit = tiny_engine.shape.max_tokens(span_job.prefix_len)
    windows = [len(p.rows) for p in expand(span_job.inputs, HeadKind.SPAN, tiny_engine.encoder, fit, True, span_job.span)]
    expected_rows = 2 + 1 + sum(windows) + 5

    async def main():
        batcher, spy, _ = make_batcher(tiny_engine, store)
        batcher.start()
        spy.hold()  # a blocker's batch holds the engine, so every request's rows queue up together behind it
        blocker = asyncio.ensure_future(batcher.classify(dataclasses.replace(requests[0], inputs=["w"])))
        await until(spy.entered.is_set, "the blocker's batch to reach the (held) engine")
        together = asyncio.gather(*(batcher.classify(j) for j in requests))
        await until(lambda: queued_rows(batcher) == expected_rows, "every request's rows to queue behind the blocker")
        rows_queued = queued_rows(batcher)
        spy.release.set()
        await blocker
        mixed = await together
        mixed_batches = list(spy.batches[1:])
        alone = [await batcher.classify(j) for j in requests]
        await batcher.stop()
        return mixed, alone, mixed_batches, rows_queued

    mixed, alone, batches, rows_queued = asyncio.run(main())
    assert windows[0] > 2 and rows_queued == expected_rows, "the long context must give several windows, each a row"
    heads = {int(code) for batch in batches for code in batch.heads}
    assert heads == set(HEAD_CODES.values()) and len(batches) == 1, "all four heads must share one forward pass"
    assert len(batches[0]) == rows_queued
    for together, by_itself in zip(mixed, alone):
        assert_same(together, by_itself)
    assert isinstance(mixed[2][0], SpanAnswer) and isinstance(mixed[3][0], ChoiceScores)


def test_inputs_of_the_wrong_shape_are_refused_before_queueing(tiny_engine):
    store = Store(tiny_engine.shape)
    sequence, token, span, choice = jobs(store)
    cases = [
        (span, ["a text"], 'inputs[0]: expected {"question", "context"} for a question-answering (span) task, got a text'),
        (choice, [("a", "pair")], 'expected {"text", "choices": [2 to 16 texts]} for a multiple-choice task, got a text pair'),
        (sequence, [QuestionInput("q", "c")], 'expected a text or {"text", "text_pair"} for a sequence-classification task'),
        (token, [ChoiceInput("t", ("a", "b"))], 'inputs[0]: expected a text for a token-classification task, got {"text", "choices"}'),
        (choice, [ChoiceInput("t", ("only one",))], "inputs[0].choices: expected 2 to 16 texts, got 1"),
    ]

    async def main():
        batcher, spy, _ = make_batcher(tiny_engine, store)
        batcher.start()
        for template, inputs, message in cases:
            with pytest.raises(InputRefused) as refused:
                await batcher.classify(ClassifyJob(**{**template.__dict__, "inputs": inputs}))
            assert message in str(refused.value)
        sequence_only = ClassifyJob(**{**span.__dict__, "heads": frozenset({HeadKind.SEQUENCE})})
        with pytest.raises(InputRefused, match="expected a sequence-classification task for this protocol, got a question-answering"):
            await batcher.classify(sequence_only)
        queued = batcher.queued_inputs
        await batcher.stop()
        return spy.batches, queued

    batches, queued = asyncio.run(main())
    assert batches == [] and queued == 0, "a refused request leaves nothing queued or reserved"
