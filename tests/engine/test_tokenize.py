"""Tokenization: input order survives mixing singles and pairs, truncation is exactly the tokenizer's
own (`truncation=True`, `longest_first` for pairs), `truncate=False` names the offending input, and a
row's token budget is max_position_embeddings - P."""

from __future__ import annotations

import json

import pytest

from server.engine import InputTooLong
from tests.conftest import SHARED_DATA

LONG = "the quick brown fox jumps over the lazy dog and keeps on running " * 20  # ~260 tokens
MIXED = [
    "a gorgeous, witty, seductive movie.",
    ("A man is playing a guitar.", "Someone plays an instrument."),
    "good",
    ("one", "two"),
    "",
    ("Is it raining?", ""),
    "unflinchingly bleak and desperate",
]


@pytest.fixture(scope="module")
def encoder(tiny_engine):
    return tiny_engine.encoder


def hf_ids(tokenizer, item, max_length=None):
    """What the backbone's tokenizer gives on its own: the reference for every expectation here.

    Called batched, as training code tokenizes datasets: a lone call with text_pair="" would drop the
    empty pair ([CLS] a [SEP]), while the batched one, like the engine, keeps it ([CLS] a [SEP] [SEP])."""
    pair = ([item],) if isinstance(item, str) else ([item[0]], [item[1]])
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    encoded = tokenizer(*pair, **kwargs)
    return encoded["input_ids"][0], encoded["token_type_ids"][0]


def test_singles_and_pairs_mixed_keep_input_order(encoder):
    encoded = encoder.encode(MIXED, max_tokens=128)
    assert len(encoded) == len(MIXED)
    for item, got in zip(MIXED, encoded):
        assert (got.input_ids.tolist(), got.token_type_ids.tolist()) == hf_ids(encoder.tokenizer, item)
        assert not got.truncated


def test_pairs_carry_segment_ids(encoder):
    got = encoder.encode([("a b", "c d e")], max_tokens=128)[0]
    assert got.token_type_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_empty_call(encoder):
    assert encoder.encode([], max_tokens=10) == []


@pytest.mark.parametrize("max_tokens", [3, 10, 64, 126])
def test_truncation_equals_the_tokenizers_own(encoder, max_tokens):
    items = [
        LONG,
        (LONG, "short hypothesis"),
        ("What is the capital of France?", LONG),
        (LONG, LONG[:200]),  # both long, uneven: longest_first takes from the longer first
        "short enough",
    ]
    encoded = encoder.encode(items, max_tokens=max_tokens)
    for item, got in zip(items, encoded):
        expected = hf_ids(encoder.tokenizer, item, max_tokens)
        assert (got.input_ids.tolist(), got.token_type_ids.tolist()) == expected, (max_tokens, str(item)[:30])
        assert len(got) <= max_tokens
        assert got.truncated == (len(hf_ids(encoder.tokenizer, item)[0]) > max_tokens)


def test_input_exactly_at_the_limit_is_not_cut(encoder):
    full = encoder.encode([LONG], max_tokens=1000)[0]
    at_limit = encoder.encode([LONG], max_tokens=len(full))[0]
    assert at_limit.input_ids.tolist() == full.input_ids.tolist() and not at_limit.truncated
    with pytest.raises(InputTooLong):
        encoder.encode([LONG], max_tokens=len(full) - 1, truncate=False)


def test_truncate_false_names_index_token_count_and_limit(encoder):
    items = ["short", ("fine", "also fine"), (LONG, "x"), LONG]
    full = len(encoder.encode([items[2]], max_tokens=1000)[0])
    with pytest.raises(InputTooLong) as caught:
        encoder.encode(items, max_tokens=50, truncate=False)
    error = caught.value
    assert (error.index, error.num_tokens, error.limit) == (2, full, 50)  # the first over-long one
    assert f"inputs[2]: expected at most 50 tokens for this task, got {full}" in str(error)
    assert "truncate: true" in str(error)


def test_truncate_false_accepts_inputs_that_fit(encoder):
    assert len(encoder.encode(MIXED, max_tokens=128, truncate=False)) == len(MIXED)


def test_pair_that_cannot_be_cut_names_its_own_index(encoder):
    """[CLS] a [SEP] b [SEP] needs 3 tokens: with a budget of 2 the error names the pair, not inputs[0]."""
    items = ["fits", ("a b c", "d e f g")]
    with pytest.raises(InputTooLong) as caught:
        encoder.encode(items, max_tokens=2, truncate=True)
    assert (caught.value.index, caught.value.num_tokens, caught.value.limit) == (1, 10, 2)
    assert "inputs[1]" in str(caught.value) and "cannot be cut below 3" in str(caught.value)


def test_single_at_a_budget_of_two_keeps_only_the_special_tokens(encoder):
    got = encoder.encode(["hello there world"], max_tokens=2)[0]
    cls, sep = encoder.tokenizer.cls_token_id, encoder.tokenizer.sep_token_id
    assert got.input_ids.tolist() == [cls, sep] and got.truncated


@pytest.mark.parametrize("prefix_len", [1, 16, 64, 126])
def test_per_prefix_limit_is_max_positions_minus_p(tiny_engine, prefix_len):
    max_positions = tiny_engine.files.geometry.max_position_embeddings
    assert tiny_engine.shape.max_tokens(prefix_len) == max_positions - prefix_len
    assert len(tiny_engine.encode([LONG], prefix_len)[0]) == max_positions - prefix_len
    if max_positions - prefix_len >= 3:  # a pair needs [CLS] [SEP] [SEP] at the least
        assert len(tiny_engine.encode([(LONG, LONG)], prefix_len)[0]) == max_positions - prefix_len
    else:
        with pytest.raises(InputTooLong, match="cannot be cut below 3"):
            tiny_engine.encode([(LONG, LONG)], prefix_len)
    with pytest.raises(InputTooLong) as caught:
        tiny_engine.encode(["", LONG], prefix_len, truncate=False)  # "" is [CLS] [SEP]: fits
    assert (caught.value.index, caught.value.limit) == (1, max_positions - prefix_len)


@pytest.mark.minilm
@pytest.mark.skipif(not (SHARED_DATA / "mrpc.dev.jsonl").is_file(), reason="the shared data folder is absent")
@pytest.mark.parametrize("max_tokens", [24, 512])
def test_real_texts_encode_as_the_transformers_tokenizer_does(minilm_engine, max_tokens):
    """Every SST-2 dev sentence and MRPC dev pair, cut to 24 tokens (most are cut) or not at all."""
    rows = [json.loads(line) for name in ("sst2.dev.jsonl", "mrpc.dev.jsonl") for line in (SHARED_DATA / name).read_text().splitlines()]
    items = [row["text"] if "text_pair" not in row else (row["text"], row["text_pair"]) for row in rows]
    tokenizer = minilm_engine.encoder.tokenizer
    singles, pairs = [i for i in items if isinstance(i, str)], [i for i in items if not isinstance(i, str)]
    expected = tokenizer(singles, truncation=True, max_length=max_tokens)
    expected_pairs = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_tokens)
    got = minilm_engine.encoder.encode(singles + pairs, max_tokens)
    want = list(zip(expected["input_ids"], expected["token_type_ids"])) + list(
        zip(expected_pairs["input_ids"], expected_pairs["token_type_ids"]))
    assert [(g.input_ids.tolist(), g.token_type_ids.tolist()) for g in got] == want
