"""The invariants the product promises: the engine equals the transformers reference, and a row's
result in a mixed batch equals the same request alone."""

from __future__ import annotations

import pytest
import torch

from server.artifact import ProblemType, artifact_to_bytes, read_artifact
from server.engine import NO_TASK, TokenBatch
from tests.helpers import make_artifact, reference_scores

TOL = 1e-5
LONG = "the quick brown fox jumps over the lazy dog and keeps running " * 60
TEXTS = [
    "good",
    "a gorgeous, witty, seductive movie.",
    ("A man is playing a guitar.", "Someone plays an instrument."),
    "it's a charming and often affecting journey.",
    LONG,
    ("What is the capital of France?", LONG),
    (LONG, "short hypothesis"),
    "unflinchingly bleak and desperate",
    ("one", "two"),
    "the film is strictly routine.",
]
KINDS = [ProblemType.SINGLE_LABEL, ProblemType.MULTI_LABEL, ProblemType.REGRESSION]


def _mixed_tasks(engine, count=10):
    """Tasks with P from 1 to 64, 1 to 7 labels, all three problem types."""
    prefix_lens = [1, 64, 7, 33, 2, 16, 48, 5, 64, 11]
    tasks = []
    for i in range(count):
        kind = KINDS[i % 3]
        labels = 1 if kind is ProblemType.REGRESSION and i % 2 else 1 + (i * 3) % 7
        tasks.append(make_artifact(engine.shape, prefix_lens[i], labels, kind, seed=100 + i))
    return tasks


def _rows(engine, tasks):
    rows, cases = [], []
    for task, text in zip(tasks, TEXTS):
        handle = engine.load(task)
        encoded = engine.encode([text], task.prefix_len, truncate=True)[0]
        rows.append((encoded, handle))
        cases.append((task, text))
    return rows, cases


@pytest.mark.parametrize("backbone", ["tiny", "minilm"])
def test_mixed_batch_matches_reference_and_alone(backbone, request):
    engine = request.getfixturevalue(f"{backbone}_engine")
    folder = request.getfixturevalue(f"{backbone}_backbone_dir" if backbone == "tiny" else "minilm_dir")
    tasks = _mixed_tasks(engine)
    rows, cases = _rows(engine, tasks)
    assert any(encoded.truncated for encoded, _ in rows), "the case list must include over-long inputs"
    batched = engine.score_encoded(rows)
    for row, (task, text), in_batch in zip(rows, cases, batched):
        alone = engine.score_encoded([row])[0]
        reference = reference_scores(folder, task, text)
        assert len(in_batch) == task.num_labels
        assert max(abs(a - b) for a, b in zip(in_batch, alone)) <= TOL
        assert max(abs(a - b) for a, b in zip(in_batch, reference)) <= TOL, (task.prefix_len, text[:30])


def test_row_order_does_not_change_results(tiny_engine):
    tasks = _mixed_tasks(tiny_engine)
    rows, _ = _rows(tiny_engine, tasks)
    forward = tiny_engine.score_encoded(rows)
    backward = tiny_engine.score_encoded(rows[::-1])[::-1]
    for a, b in zip(forward, backward):
        assert max(abs(x - y) for x, y in zip(a, b)) <= TOL


def test_prefix_changes_the_result(tiny_engine):
    """Guards the parity tests against a prefix that is silently ignored."""
    a = make_artifact(tiny_engine.shape, 8, 3, seed=1)
    b = make_artifact(tiny_engine.shape, 8, 3, seed=2)
    b = type(b)(b.key_values, a.classifier_weight, a.classifier_bias, a.problem_type, a.labels)
    encoded = tiny_engine.encode(["a fine film"], 8)[0]
    score_a = tiny_engine.score_encoded([(encoded, tiny_engine.load(a))])[0]
    score_b = tiny_engine.score_encoded([(encoded, tiny_engine.load(b))])[0]
    assert max(abs(x - y) for x, y in zip(score_a, score_b)) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_artifacts_serve_like_float32(tiny_engine, tiny_backbone_dir, dtype):
    artifact = make_artifact(tiny_engine.shape, 12, 4, seed=7, dtype=dtype)
    loaded = read_artifact(artifact_to_bytes(artifact), tiny_engine.shape)
    assert loaded.key_values.dtype == dtype
    texts = ["a fine film", ("is it good?", "yes it is")]
    encoded = tiny_engine.encode(texts, loaded.prefix_len)
    handle = tiny_engine.load(loaded)
    scores = tiny_engine.score_encoded([(e, handle) for e in encoded])
    for text, got in zip(texts, scores):
        expected = reference_scores(tiny_backbone_dir, loaded, text)  # float32 of the same values
        assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-3


def test_bare_backbone_rows_mix_with_prefixed_rows(tiny_engine):
    """Rows without a prefix (the baseline) and with one share a batch without changing either."""
    handle = tiny_engine.load(make_artifact(tiny_engine.shape, 5, 2, seed=3))
    bare, prefixed = tiny_engine.encode(["plain text here"], 0)[0], tiny_engine.encode(["plain text here"], 5)[0]
    together = torch.from_numpy(tiny_engine.pooled(TokenBatch.of([bare, prefixed], [NO_TASK, handle])))
    assert torch.allclose(together[0], torch.from_numpy(tiny_engine.pooled(TokenBatch.of([bare])))[0], atol=TOL)
    assert torch.allclose(together[1], torch.from_numpy(tiny_engine.pooled(TokenBatch.of([prefixed], [handle])))[0], atol=TOL)
