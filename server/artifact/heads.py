"""The head kinds an artifact may carry (SPEC 1, 1b, 1d) and the one table of what each holds.

- `sequence`: `classifier.*` [num_labels, hidden] on the pooled first token (the backbone's pooler or
  the artifact's own); one result per input.
- `token`: `classifier.*` [num_labels, hidden] on every token's final hidden state.
- `span` (extractive question answering): `qa_outputs.*` [2, hidden] on every token's final hidden
  state: start and end logits.
- `choice` (multiple choice): `classifier.*` [1, hidden] on the pooled first token of each (text, choice)
  pair; one logit per pair, softmaxed over an item's choices.
The span and choice heads have a fixed number of outputs, so their `labels` and `problem_type` metadata
are optional (the names below when absent); when given they must agree with the head.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProblemType(str, enum.Enum):
    SINGLE_LABEL = "single_label_classification"
    MULTI_LABEL = "multi_label_classification"
    REGRESSION = "regression"


class HeadKind(str, enum.Enum):
    SEQUENCE = "sequence"  # one result per input, from the pooled first token
    TOKEN = "token"  # one result per input token, from every token's final hidden state
    SPAN = "span"  # start and end logits per token: an answer span of the context
    CHOICE = "choice"  # one logit per (text, choice) row, from the pooled first token


@dataclass(frozen=True)
class HeadRule:
    weight: str  # the head's tensor names in the artifact
    bias: str
    pooled: bool  # reads the pooled first token, so the artifact may bring its own pooler (SPEC 1b)
    default_labels: tuple[str, ...] | None = None  # a head of fixed outputs: the names it takes by default
    single_label_only: bool = False  # softmax over its outputs is its only meaning

    @property
    def fixed_outputs(self) -> int | None:
        return len(self.default_labels) if self.default_labels is not None else None


CLASSIFIER = ("classifier.weight", "classifier.bias")
QA_OUTPUTS = ("qa_outputs.weight", "qa_outputs.bias")
HEAD_RULES = {
    HeadKind.SEQUENCE: HeadRule(*CLASSIFIER, pooled=True),
    HeadKind.TOKEN: HeadRule(*CLASSIFIER, pooled=False, single_label_only=True),
    HeadKind.SPAN: HeadRule(*QA_OUTPUTS, pooled=False, default_labels=("start", "end"), single_label_only=True),
    HeadKind.CHOICE: HeadRule(*CLASSIFIER, pooled=True, default_labels=("choice",), single_label_only=True),
}
HEAD_NAMES = ", ".join(repr(kind.value) for kind in HeadKind)
