"""Multiple choice (SPEC 1d, 2d): an item's (text, choice) rows each give one logit; the item's result
is the softmax over them, in choice order, and the best choice (the first among equals)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChoiceScores:
    choice: int  # index of the best choice
    score: float  # its probability
    scores: list[float]  # every choice's probability, in choice order


def choice_scores(logits: list[list[float]]) -> ChoiceScores:
    """`logits`: the item's rows in choice order, one logit each."""
    values = [row[0] for row in logits]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    scores = [e / total for e in exps]
    best = max(range(len(scores)), key=scores.__getitem__)
    return ChoiceScores(best, scores[best], scores)
