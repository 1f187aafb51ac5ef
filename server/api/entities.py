"""Token-classification results (SPEC 2b): per-token scores and character offsets in, entities out.

Pure Python on plain lists (the API layer never touches tensors):
- a word is a maximal run of non-whitespace characters of the input;
- a word's label and score are the argmax and its probability of the word's first sub-token: the
  first token whose character span is not empty and starts inside the word; a word the truncation
  cut off (no such token) has no label, and breaks an entity as `O` does;
- IOB2 labels (`O`, `B-X`, `I-X`) group as seqeval's default mode does: `B-X` starts an entity of
  type X, `I-X` continues an entity of type X and otherwise starts one, `O` ends it;
- any other labels: consecutive words with the same label other than `O` form one entity;
- an entity's score is the mean of its words' scores; start/end are character offsets (end
  exclusive) and text is input[start:end].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\S+")
OUTSIDE = "O"


@dataclass(frozen=True)
class Word:
    start: int
    end: int
    label: str | None  # None: cut off by truncation
    score: float


def words(text: str, offsets: list[tuple[int, int]], scores: list[list[float]], labels: tuple[str, ...] | list[str]) -> list[Word]:
    """Each word of `text` with the label and score of its first sub-token."""
    out, token = [], 0
    for match in _WORD.finditer(text):
        start, end = match.span()
        while token < len(offsets) and (offsets[token][0] == offsets[token][1] or offsets[token][0] < start):
            token += 1  # special tokens (empty spans) and the rest of the previous word
        if token < len(offsets) and offsets[token][0] < end:
            values = scores[token]
            best = max(range(len(values)), key=values.__getitem__)
            out.append(Word(start, end, labels[best], values[best]))
        else:
            out.append(Word(start, end, None, 0.0))
    return out


def is_iob(labels: tuple[str, ...] | list[str]) -> bool:
    return all(label == OUTSIDE or label[:2] in ("B-", "I-") for label in labels)


def group(items: list[Word], iob: bool) -> list[list[Word]]:
    """Words grouped into entities (each a non-empty run of words), in order."""
    entities: list[list[Word]] = []
    current: list[Word] | None = None
    current_type: str | None = None
    for word in items:
        label = word.label
        if label is None or label == OUTSIDE:
            current, current_type = None, None
            continue
        kind = label[2:] if iob else label
        continues = current is not None and kind == current_type and (not iob or label.startswith("I-"))
        if not continues:
            current, current_type = [], kind
            entities.append(current)
        current.append(word)
    return entities


def entity_label(entity: list[Word], iob: bool) -> str:
    label = entity[0].label
    return label[2:] if iob else label


def entities(text: str, offsets: list[tuple[int, int]], scores: list[list[float]], labels: tuple[str, ...] | list[str]) -> list[dict]:
    """The SPEC 2b result of one input: [{"label", "score", "start", "end", "text"}] in order of start."""
    iob = is_iob(labels)
    out = []
    for entity in group(words(text, offsets, scores, labels), iob):
        start, end = entity[0].start, entity[-1].end
        score = sum(w.score for w in entity) / len(entity)
        out.append({"label": entity_label(entity, iob), "score": score, "start": start, "end": end, "text": text[start:end]})
    return out
