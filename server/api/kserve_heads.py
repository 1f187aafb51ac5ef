"""KServe v2 tensors of the heads beyond sequence classification (SPEC 2d over SPEC 5): which inputs a
model takes and which outputs it gives, per head, and the conversions both ways.

- span (extractive question answering): inputs `question` and `context` (BYTES, [N] each); outputs
  `answer` (BYTES, [N]), `score` (FP32, [N]), `start` and `end` (INT64, [N]: character offsets into
  the context, end exclusive). Request parameters `max_seq_len`, `doc_stride`, `max_answer_len`
  (integers) and `allow_impossible` (boolean) mean what they mean in /v1/classify.
- choice (multiple choice): inputs `text` (BYTES, [N]) and `choices` (BYTES, [N]: each element a JSON
  array of 2 to 16 strings, a tensor having no ragged rows); outputs `choice` (INT64, [N]: the best
  choice's index), `score` (FP32, [N]: its probability) and `scores` (BYTES, [N]: each a JSON array of
  every choice's probability, in choice order).
"""

from __future__ import annotations

import orjson

from server.api.errors import ApiError
from server.api.kserve_codec import InferRequest, OutputTensor
from server.artifact import HeadKind
from server.batching import ChoiceInput, ChoiceScores, QuestionInput, SpanAnswer, SpanOptions

TEXT_INPUTS = [
    {"name": "text", "datatype": "BYTES", "shape": [-1]},
    {"name": "text_pair", "datatype": "BYTES", "shape": [-1], "optional": True},
]
INPUTS = {
    HeadKind.SPAN: [{"name": "question", "datatype": "BYTES", "shape": [-1]}, {"name": "context", "datatype": "BYTES", "shape": [-1]}],
    HeadKind.CHOICE: [{"name": "text", "datatype": "BYTES", "shape": [-1]}, {"name": "choices", "datatype": "BYTES", "shape": [-1]}],
}
OUTPUTS = {
    HeadKind.SPAN: {"answer": "BYTES", "score": "FP32", "start": "INT64", "end": "INT64"},
    HeadKind.CHOICE: {"choice": "INT64", "score": "FP32", "scores": "BYTES"},
}
SPAN_INTEGERS = ("max_seq_len", "doc_stride", "max_answer_len")


def metadata_io(head: HeadKind) -> tuple[list[dict], list[dict]] | None:
    """(inputs, outputs) of a span or choice model's metadata; None for the other heads."""
    if head not in INPUTS:
        return None
    return INPUTS[head], [{"name": name, "datatype": kind, "shape": [-1]} for name, kind in OUTPUTS[head].items()]


def parsed_inputs(parsed: InferRequest) -> list[QuestionInput] | list[ChoiceInput] | None:
    """The inputs when the request names span or choice tensors; None for text inputs."""
    names = set(parsed.texts)
    if names & {"question", "context"}:
        if names != {"question", "context"}:
            raise ApiError(400, f"inputs: expected 'question' and 'context', got {sorted(names)}")
        questions, contexts = parsed.texts["question"], parsed.texts["context"]
        _same_length("context", contexts, questions)
        return [QuestionInput(q, c) for q, c in zip(questions, contexts)]
    if "choices" in names:
        if names != {"text", "choices"}:
            raise ApiError(400, f"inputs: expected 'text' and 'choices', got {sorted(names)}")
        texts, raw = parsed.texts["text"], parsed.texts["choices"]
        _same_length("choices", raw, texts)
        return [ChoiceInput(text, _choices(element, index)) for index, (text, element) in enumerate(zip(texts, raw))]
    return None


def span_options(parameters: dict) -> SpanOptions:
    values = {}
    for name in SPAN_INTEGERS:
        value = parameters.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ApiError(400, f"parameters.{name}: expected a non-negative integer, got {value!r}")
        values[name] = value
    allow = parameters.get("allow_impossible", False)
    if not isinstance(allow, bool):
        raise ApiError(400, f"parameters.allow_impossible: expected true or false, got {allow!r}")
    if values["max_answer_len"] == 0:
        raise ApiError(400, "parameters.max_answer_len: expected at least 1, got 0")
    return SpanOptions(values["max_seq_len"], values["doc_stride"], values["max_answer_len"] or 15, allow)


def output_tensors(results: list) -> dict[str, OutputTensor] | None:
    """Every output of span or choice results; None for scores (the sequence outputs)."""
    n = len(results)
    if results and isinstance(results[0], SpanAnswer):
        columns = {"answer": [r.answer for r in results], "score": [r.score for r in results],
                   "start": [r.start for r in results], "end": [r.end for r in results]}
        kinds = OUTPUTS[HeadKind.SPAN]
    elif results and isinstance(results[0], ChoiceScores):
        columns = {"choice": [r.choice for r in results], "score": [r.score for r in results],
                   "scores": [orjson.dumps(r.scores).decode() for r in results]}
        kinds = OUTPUTS[HeadKind.CHOICE]
    else:
        return None
    return {name: OutputTensor(name, kinds[name], [n], values) for name, values in columns.items()}


def _same_length(name: str, values: list, reference: list) -> None:
    if len(values) != len(reference):
        raise ApiError(400, f"input {name!r}: expected one element per row ({len(reference)}), got {len(values)}")


def _choices(element: str, index: int) -> tuple[str, ...]:
    try:
        choices = orjson.loads(element)
    except orjson.JSONDecodeError:
        choices = None
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise ApiError(400, f"input 'choices': element {index}: expected a JSON array of strings, got {element[:80]!r}")
    return tuple(choices)
