"""What a request's inputs become for its task's head: the rows that go to the engine, and how each
input's result is put together from its rows' scores once they are all back.

- sequence: a text or a (text, text_pair), one row; its scores are the result;
- token: a text, one row; a TokenScores (scores per token with their character spans);
- span: a QuestionInput, one row per window of its context (spans.py); a SpanAnswer;
- choice: a ChoiceInput, one row per (text, choice) pair; a ChoiceScores (softmax over its rows).
The rules that turn rows into answers are server/decoding's.
An input of another shape than its task's head takes is refused (422) with the shape it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from server.artifact import HeadKind
from server.decoding import SpanOptions, choice_scores, decode_answer, span_windows
from server.engine import EncodedInput, InputRefused, TextEncoder, TextInput

MAX_CHOICES = 16  # SPEC 1d: 2 to 16 choices
SHAPES = {
    HeadKind.SEQUENCE: 'a text or {"text", "text_pair"}',
    HeadKind.TOKEN: "a text",
    HeadKind.SPAN: '{"question", "context"}',
    HeadKind.CHOICE: '{"text", "choices": [2 to 16 texts]}',
}
TASK_NAMES = {
    HeadKind.SEQUENCE: "sequence-classification",
    HeadKind.TOKEN: "token-classification",
    HeadKind.SPAN: "question-answering (span)",
    HeadKind.CHOICE: "multiple-choice",
}


@dataclass(frozen=True, slots=True)
class QuestionInput:
    question: str
    context: str


@dataclass(frozen=True, slots=True)
class ChoiceInput:
    text: str
    choices: tuple[str, ...]


Input = TextInput | QuestionInput | ChoiceInput


@dataclass(frozen=True, slots=True)
class TokenScores:
    """A token task's result for one input: scores per token and each token's character span."""

    scores: list[list[float]]  # [S][num_labels]
    offsets: list[tuple[int, int]]  # [S]


@dataclass(frozen=True)
class InputRows:
    """One input's rows and what turns their results (row order) into the input's result."""

    rows: list[EncodedInput]
    finish: Callable[[list], object] = field(repr=False)


def shape_of(value: Input) -> str:
    if isinstance(value, QuestionInput):
        return '{"question", "context"}'
    if isinstance(value, ChoiceInput):
        return '{"text", "choices"}'
    return "a text" if isinstance(value, str) else "a text pair"


def check_shapes(inputs: list[Input], head: HeadKind, answered: frozenset[HeadKind]) -> None:
    """Refuses (422) a head the caller's protocol cannot answer, and inputs of another shape than the head takes."""
    if head not in answered:
        wanted = " or ".join(TASK_NAMES[h] for h in HeadKind if h in answered)
        raise InputRefused(f"task: expected a {wanted} task for this protocol, got a {TASK_NAMES[head]} one")
    for index, value in enumerate(inputs):
        fits = {
            HeadKind.SEQUENCE: isinstance(value, str | tuple),
            HeadKind.TOKEN: isinstance(value, str),
            HeadKind.SPAN: isinstance(value, QuestionInput),
            HeadKind.CHOICE: isinstance(value, ChoiceInput),
        }[head]
        if not fits:
            raise InputRefused(
                f"inputs[{index}]: expected {SHAPES[head]} for a {TASK_NAMES[head]} task, got {shape_of(value)}"
            )
        if isinstance(value, ChoiceInput) and not 2 <= len(value.choices) <= MAX_CHOICES:
            raise InputRefused(f"inputs[{index}].choices: expected 2 to {MAX_CHOICES} texts, got {len(value.choices)}")


def count_rows(inputs: list[Input]) -> int:
    """Rows known before tokenizing (a span input's windows are counted once it is encoded)."""
    return sum(len(value.choices) if isinstance(value, ChoiceInput) else 1 for value in inputs)


def expand(
    inputs: list[Input], head: HeadKind, encoder: TextEncoder, fit: int, truncate: bool, span: SpanOptions
) -> list[InputRows]:
    """Each input's rows for the engine, tokenized (the inputs' shapes are checked already)."""
    if head is HeadKind.SPAN:
        max_seq_len, stride = span.window(fit)
        return [_question_rows(encoder, value, max_seq_len, stride, span, index) for index, value in enumerate(inputs)]
    if head is HeadKind.CHOICE:
        pairs = [(value.text, choice) for value in inputs for choice in value.choices]
        encoded = encoder.encode(pairs, fit, truncate)
        out, next_row = [], 0
        for value in inputs:
            out.append(InputRows(encoded[next_row : next_row + len(value.choices)], choice_scores))
            next_row += len(value.choices)
        return out
    token = head is HeadKind.TOKEN
    encoded = encoder.encode(inputs, fit, truncate, offsets=token)
    if token:
        return [InputRows([e], partial(_token_scores, e.offsets)) for e in encoded]
    return [InputRows([e], _only_row) for e in encoded]


def assemble(planned: list[InputRows], row_results: list) -> list:
    """Each input's result from its rows' results (row order, inputs one after another)."""
    out, at = [], 0
    for plan in planned:
        out.append(plan.finish(row_results[at : at + len(plan.rows)]))
        at += len(plan.rows)
    return out


def input_chars(value: Input) -> int:
    """An input's size in characters (what decides where it is tokenized)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, QuestionInput):
        return len(value.question) + len(value.context)
    if isinstance(value, ChoiceInput):
        return (len(value.text) + 8) * len(value.choices) + sum(len(choice) for choice in value.choices)
    return len(value[0]) + len(value[1])


def _question_rows(
    encoder: TextEncoder, value: QuestionInput, max_seq_len: int, stride: int, options: SpanOptions, index: int
) -> InputRows:
    try:
        windows = span_windows(encoder, value.question, value.context, max_seq_len, stride)
    except InputRefused as refused:
        raise InputRefused(f"inputs[{index}]: {refused}") from None
    return InputRows([w.encoded for w in windows], partial(_span_answer, windows, value.context, options))


def _span_answer(windows, context: str, options: SpanOptions, logits: list):
    return decode_answer(windows, logits, context, options)


def _token_scores(offsets, rows: list) -> TokenScores:
    return TokenScores(rows[0], offsets)


def _only_row(rows: list):
    return rows[0]
