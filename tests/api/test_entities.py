"""SPEC 2b grouping on hand-made tag sequences: seqeval's default (IOB2, non-strict) cases, labels
without B-/I- prefixes, words from first sub-tokens, truncated words."""

from __future__ import annotations

import pytest

from server.api.entities import Word, entities, group, is_iob, words


def tagged(tags: list[str]) -> list[Word]:
    return [Word(i * 2, i * 2 + 1, tag, 1.0) for i, tag in enumerate(tags)]


def spans(tags: list[str], iob: bool = True) -> list[tuple[str, int, int]]:
    """(type, first word, last word) like seqeval's get_entities."""
    out = []
    for entity in group(tagged(tags), iob):
        kind = entity[0].label[2:] if iob else entity[0].label
        out.append((kind, entity[0].start // 2, entity[-1].start // 2))
    return out


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),  # seqeval's README example
        (["B-MISC", "I-MISC", "I-MISC", "O", "B-PER", "I-PER", "O"], [("MISC", 0, 2), ("PER", 4, 5)]),
        (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),  # I- without B- starts an entity (non-strict)
        (["B-PER", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 1)]),  # I- of another type starts one
        (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),  # B- always starts
        (["O", "I-LOC", "O", "I-LOC"], [("LOC", 1, 1), ("LOC", 3, 3)]),  # O ends
        (["B-LOC", "I-LOC", "B-LOC", "I-LOC"], [("LOC", 0, 1), ("LOC", 2, 3)]),
        (["O", "O"], []),
        ([], []),
    ],
)
def test_iob2_like_seqeval_default(tags, expected):
    assert spans(tags) == expected


def test_a_cut_off_word_ends_an_entity():
    assert spans(["B-PER", None, "I-PER"]) == [("PER", 0, 0), ("PER", 2, 2)]


def test_plain_labels_group_consecutive_equal_words():
    assert spans(["NOUN", "NOUN", "VERB", "O", "NOUN"], iob=False) == [("NOUN", 0, 1), ("VERB", 2, 2), ("NOUN", 4, 4)]


def test_iob_detection():
    assert is_iob(("O", "B-PER", "I-PER")) and not is_iob(("O", "PER")) and not is_iob(("NOUN", "VERB"))


def test_words_take_their_first_sub_token_and_entities_their_mean_score():
    text = "John  Smithson went to Paris"
    # [CLS] John Smith ##son went to Par ##is [SEP], as a WordPiece tokenizer's offsets give them
    offsets = [(0, 0), (0, 4), (6, 11), (11, 14), (15, 19), (20, 22), (23, 26), (26, 28), (0, 0)]
    labels = ("O", "B-PER", "I-PER", "B-LOC")
    one_hot = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3}

    def token(label, p):
        values = [(1 - p) / 3] * 4
        values[one_hot[label]] = p
        return values

    scores = [token("O", 0.9), token("B-PER", 0.8), token("I-PER", 0.6), token("B-LOC", 0.99),  # ##son ignored
              token("O", 0.9), token("O", 0.9), token("B-LOC", 0.7), token("I-PER", 0.9), token("O", 0.9)]
    found = entities(text, offsets, scores, labels)
    assert found == [
        {"label": "PER", "score": pytest.approx(0.7), "start": 0, "end": 14, "text": "John  Smithson"},
        {"label": "LOC", "score": pytest.approx(0.7), "start": 23, "end": 28, "text": "Paris"},
    ]
    assert [w.label for w in words(text, offsets, scores, labels)] == ["B-PER", "I-PER", "O", "O", "B-LOC"]


def test_words_past_the_truncation_have_no_label():
    text = "alpha beta gamma"
    offsets = [(0, 0), (0, 5), (6, 10), (0, 0)]  # gamma was cut off
    scores = [[1.0, 0.0]] * 4
    assert [w.label for w in words(text, offsets, scores, ("O", "B-X"))] == ["O", "O", None]


def test_byte_level_offsets_starting_inside_the_word():
    text = "Hi New York"
    offsets = [(0, 0), (0, 2), (3, 6), (7, 11), (0, 0)]  # RoBERTa with trim_offsets: spaces left out
    scores = [[1, 0, 0], [1, 0, 0], [0, 0.8, 0.2], [0, 0.1, 0.9], [1, 0, 0]]
    assert entities(text, offsets, scores, ("O", "B-LOC", "I-LOC")) == [
        {"label": "LOC", "score": pytest.approx(0.85), "start": 3, "end": 11, "text": "New York"}
    ]


def test_random_tag_sequences_group_as_seqeval_does():
    sequence_labeling = pytest.importorskip("seqeval.metrics.sequence_labeling")
    import random

    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(500):
        sequence = [rng.choice(tags) for _ in range(rng.randint(0, 12))]
        assert spans(sequence) == list(sequence_labeling.get_entities(sequence)), sequence
