"""The engine around the model: batches are padded at most to their longest row and longest prefix,
prefixes are converted to the engine's dtype and device once (at load, into the prefix pool, never
per request), heads live in the head pool in float32, scores follow the problem type, and a
half-precision engine stays close to float32."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from server.artifact import ProblemType
from server.engine import Engine, ScoreFunction, TokenBatch
from tests.helpers import make_artifact

TEXTS = [
    "good",
    "a gorgeous, witty, seductive movie.",
    ("A man is playing a guitar.", "Someone plays an instrument."),
    "it's a charming and often affecting journey, and the cast is uniformly excellent throughout.",
    "unflinchingly bleak and desperate",
    ("one", "two"),
    "the film is strictly routine.",
]
KINDS = list(ProblemType)
# Measured by _max_half_diff below on the tiny backbone (max abs difference from float32 over
# probabilities and raw regression values): float16 5.4e-4, bfloat16 3.3e-3. The bounds leave ~9x margin.
HALF_TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2}


def rows_for(engine, tasks, texts=TEXTS):
    """(encoded input, task handle) rows, one task each, texts in turn."""
    rows = []
    for index, task in enumerate(tasks):
        encoded = engine.encode([texts[index % len(texts)]], task.prefix_len)[0]
        rows.append((encoded, engine.load(task)))
    return rows


def mixed_tasks(shape, seed=0):
    """Seven tasks: 1..7 labels, all three problem types, P from 1 to 100."""
    prefix_lens = [1, 4, 16, 32, 64, 100, 8]
    return [
        make_artifact(shape, prefix_lens[i], i + 1, KINDS[i % 3], seed=seed + i) for i in range(len(prefix_lens))
    ]


@dataclass
class Seen:
    token_slots: list[int] = field(default_factory=list)  # rows x positions the dense layers ran on
    attention: list[tuple[int, int]] = field(default_factory=list)  # (query length, key length) per call


@pytest.fixture
def seen(tiny_engine, monkeypatch):
    """Records what the model computes on, whatever its batch layout (padded [B, S] or packed [T]):
    the token slots entering the first layer's qkv projection, and the query and key lengths of
    every attention call (key length - query length = the prefix slots attended over)."""
    record = Seen()
    hidden = tiny_engine.files.geometry.hidden_size

    def on_qkv(module, args):
        record.token_slots.append(args[0].numel() // hidden)

    real_attention = F.scaled_dot_product_attention

    def spy_attention(q, k, v, *args, **kwargs):
        record.attention.append((q.shape[-2], k.shape[-2]))
        return real_attention(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_attention)
    handle = tiny_engine.model.layers[0].qkv.register_forward_pre_hook(on_qkv)
    yield record
    handle.remove()


# --- collation ------------------------------------------------------------------------------------


def test_batch_is_padded_at_most_to_its_longest_row_and_prefix(tiny_engine, seen):
    shape = tiny_engine.shape
    tasks = [make_artifact(shape, 3, 2, seed=1), make_artifact(shape, 9, 2, seed=2)]
    rows = rows_for(tiny_engine, tasks * 2, ["good", "a gorgeous, witty, seductive movie.", "ok", ("a", "b")])
    tiny_engine.score_encoded(rows)
    longest = max(len(encoded) for encoded, _ in rows)
    assert longest < 20  # far below the 128-position ceiling, so padding to the model maximum would show
    assert len(seen.token_slots) == 1  # one forward pass for the whole batch
    assert sum(len(encoded) for encoded, _ in rows) <= seen.token_slots[0] <= len(rows) * longest
    layers = tiny_engine.files.geometry.num_layers
    assert len(seen.attention) >= layers
    assert all(queries <= longest and keys - queries <= 9 for queries, keys in seen.attention)
    assert any(keys - queries == 9 for queries, keys in seen.attention)  # the longest prefix is attended over


def test_single_row_has_no_padding(tiny_engine, seen):
    encoded, handle = rows_for(tiny_engine, [make_artifact(tiny_engine.shape, 5, 2)], ["good"])[0]
    tiny_engine.score_encoded([(encoded, handle)])
    assert seen.token_slots == [len(encoded)]
    assert set(seen.attention) == {(len(encoded), 5 + len(encoded))}


def test_bare_backbone_batch_attends_over_no_prefix(tiny_engine, seen):
    encoded = tiny_engine.encode(["good", "a longer sentence than that"], 0)
    pooled = tiny_engine.pooled(TokenBatch.of(encoded))
    assert seen.token_slots[0] <= 2 * max(len(e) for e in encoded)
    assert all(keys == queries for queries, keys in seen.attention)
    assert pooled.shape == (2, tiny_engine.files.geometry.hidden_size)


def test_padding_a_short_prefix_does_not_touch_the_loaded_one(tiny_engine):
    short, long = make_artifact(tiny_engine.shape, 2, 2, seed=1), make_artifact(tiny_engine.shape, 50, 2, seed=2)
    rows = rows_for(tiny_engine, [short, long])
    loaded = tiny_engine.task(rows[0][1])
    before = loaded.key_values()
    tiny_engine.score_encoded(rows)
    assert loaded.key_values().shape[3] == 2 and torch.equal(loaded.key_values(), before)
    assert torch.equal(before, short.key_values)


# --- prefixes are converted once, at load ----------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_engine(tiny_engine):
    return Engine(tiny_engine.files, tiny_engine.encoder, dtype=torch.bfloat16)


@pytest.mark.parametrize("artifact_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_loaded_prefix_is_in_engine_dtype_and_device(tiny_engine, bf16_engine, artifact_dtype):
    artifact = make_artifact(tiny_engine.shape, 6, 3, dtype=artifact_dtype)
    for engine in (tiny_engine, bf16_engine):
        loaded = engine.task(engine.load(artifact))
        storage = engine.prefix_pool.storage
        assert storage.dtype == engine.dtype and storage.device == engine.device
        assert torch.equal(loaded.key_values(), artifact.key_values.to(engine.dtype))  # converted once, at load
        heads = engine.head_pool.storage[list(loaded.head.slots)]  # [labels, C + 1]: in float32, on the device
        assert heads.dtype == torch.float32 and heads.device == engine.device
        assert torch.equal(heads[:, :-1], artifact.classifier_weight.float()) and torch.equal(heads[:, -1], artifact.classifier_bias.float())
        kv_bytes = loaded.key_values().numel() * storage.element_size()
        assert loaded.nbytes == kv_bytes + heads.numel() * 4
        assert (loaded.prefix_len, loaded.num_labels, loaded.labels) == (6, 3, artifact.labels)


def test_score_never_converts_prefix_tensors(bf16_engine, monkeypatch):
    rows = rows_for(bf16_engine, mixed_tasks(bf16_engine.shape))
    storage = bf16_engine.prefix_pool.storage
    watched = {id(storage), id(bf16_engine.head_pool.storage)}
    conversions = []
    for method in ("to", "type", "float", "half", "bfloat16", "double", "cpu", "cuda", "clone", "contiguous"):
        real = getattr(torch.Tensor, method)

        def spy(self, *args, _real=real, _method=method, **kwargs):
            if id(self) in watched:
                conversions.append(_method)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, spy)
    bf16_engine.score_encoded(rows)
    bf16_engine.pooled(TokenBatch.of([encoded for encoded, _ in rows], [handle for _, handle in rows]))
    assert conversions == []
    storage.to(torch.float32)  # the spy itself works
    assert conversions == ["to"]


# --- scores ---------------------------------------------------------------------------------------


def _logits(engine, rows):
    pooled = torch.from_numpy(engine.pooled(TokenBatch.of([e for e, _ in rows], [h for _, h in rows])))
    heads = [engine.head_pool.storage[list(engine.task(handle).head.slots)] for _, handle in rows]  # [labels, C + 1]
    return [pooled[i] @ head[:, :-1].T + head[:, -1] for i, head in enumerate(heads)]


@pytest.mark.parametrize("num_labels", [1, 2, 5])
def test_single_label_scores_are_a_softmax(tiny_engine, num_labels):
    tasks = [make_artifact(tiny_engine.shape, 7, num_labels, ProblemType.SINGLE_LABEL, seed=s) for s in range(4)]
    rows = rows_for(tiny_engine, tasks)
    for scores, logits in zip(tiny_engine.score_encoded(rows), _logits(tiny_engine, rows)):
        assert len(scores) == num_labels
        assert abs(sum(scores) - 1.0) <= 1e-6
        assert torch.allclose(torch.tensor(scores), logits.softmax(-1), atol=1e-6)


def test_multi_label_scores_are_sigmoids_in_the_open_unit_interval(tiny_engine):
    tasks = [make_artifact(tiny_engine.shape, 7, 4, ProblemType.MULTI_LABEL, seed=s) for s in range(4)]
    rows = rows_for(tiny_engine, tasks)
    for scores, logits in zip(tiny_engine.score_encoded(rows), _logits(tiny_engine, rows)):
        assert all(0.0 < s < 1.0 for s in scores)
        assert torch.allclose(torch.tensor(scores), logits.sigmoid(), atol=1e-6)
    assert any(abs(sum(s) - 1.0) > 1e-3 for s in tiny_engine.score_encoded(rows))  # independent, not a softmax


def test_regression_scores_are_raw_logits(tiny_engine):
    tasks = [make_artifact(tiny_engine.shape, 7, n, ProblemType.REGRESSION, seed=n, scale=3.0) for n in (1, 3)]
    rows = rows_for(tiny_engine, tasks)
    for scores, logits in zip(tiny_engine.score_encoded(rows), _logits(tiny_engine, rows)):
        assert torch.allclose(torch.tensor(scores), logits, atol=1e-5)
    assert any(not 0.0 <= s <= 1.0 for scores in tiny_engine.score_encoded(rows) for s in scores)  # unbounded


def test_label_counts_one_to_seven_in_one_batch(tiny_engine):
    tasks = mixed_tasks(tiny_engine.shape)
    rows = rows_for(tiny_engine, tasks)
    batched = tiny_engine.score_encoded(rows)
    assert [len(s) for s in batched] == [1, 2, 3, 4, 5, 6, 7]
    assert batched[0] == [1.0]  # a one-label softmax is certain
    for task, scores in zip(tasks, batched):  # batch-equals-alone is test_parity's job
        if task.problem_type is ProblemType.SINGLE_LABEL:
            assert abs(sum(scores) - 1.0) <= 1e-6
        if task.problem_type is ProblemType.MULTI_LABEL:
            assert all(0.0 < s < 1.0 for s in scores)


# --- half-precision engines ------------------------------------------------------------------------


def _max_half_diff(tiny_engine, dtype) -> float:
    half = Engine(tiny_engine.files, tiny_engine.encoder, dtype=dtype)
    worst = 0.0
    for trial in range(3):
        tasks = mixed_tasks(tiny_engine.shape, seed=100 * trial)
        texts = TEXTS[trial:] + TEXTS[:trial]
        reference = tiny_engine.score_encoded(rows_for(tiny_engine, tasks, texts))
        got = half.score_encoded(rows_for(half, tasks, texts))
        worst = max(worst, max(abs(a - b) for r, g in zip(reference, got) for a, b in zip(r, g)))
    return worst


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_engine_is_close_to_float32(tiny_engine, dtype):
    worst = _max_half_diff(tiny_engine, dtype)
    assert 0.0 < worst <= HALF_TOLERANCE[dtype], f"{dtype}: max abs difference {worst:.2e}"


def test_a_rows_score_function_overrides_its_tasks_in_a_mixed_batch(tiny_engine):
    tasks = mixed_tasks(tiny_engine.shape)
    rows = rows_for(tiny_engine, tasks)
    own = tiny_engine.score_encoded(rows)
    raw = tiny_engine.score_encoded(rows, [ScoreFunction.NONE] * len(rows))
    mixed = [ScoreFunction.NONE if i % 2 else None for i in range(len(rows))]
    assert tiny_engine.score_encoded(rows, mixed) == [raw[i] if i % 2 else own[i] for i in range(len(rows))]
    for task, logits, scores in zip(tasks, raw, own):
        expected = {
            ProblemType.SINGLE_LABEL: torch.tensor(logits).softmax(-1),
            ProblemType.MULTI_LABEL: torch.tensor(logits).sigmoid(),
            ProblemType.REGRESSION: torch.tensor(logits),
        }[task.problem_type]
        assert torch.allclose(expected, torch.tensor(scores), atol=1e-6)
    sigmoid = tiny_engine.score_encoded(rows, [ScoreFunction.SIGMOID] * len(rows))
    assert all(torch.allclose(torch.tensor(s), torch.tensor(r).sigmoid(), atol=1e-6) for s, r in zip(sigmoid, raw))
