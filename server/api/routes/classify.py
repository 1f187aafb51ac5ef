"""POST /v1/classify: parse the body, run the shared classify path (server/api/inference.py), format
the answer (SPEC section 2; token tasks' entities as SPEC 2b, grouped by server/api/entities.py; span
and choice results as SPEC 2d)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.deps import authenticate, ready_services
from server.api.entities import entities
from server.api.inference import classify_inputs
from server.api.responses import FastJSONResponse
from server.api.schemas import ClassifyRequest, QuestionContext, SpanFields, TextChoices
from server.artifact import HeadKind
from server.batching import ChoiceInput, ChoiceScores, Input, QuestionInput, SpanAnswer, SpanOptions, TokenScores
from server.engine import ScoreFunction
from server.engine.scoring import chosen_labels, top_label
from server.registry.base import VersionRecord

router = APIRouter(prefix="/v1")
EVERY_HEAD = frozenset(HeadKind)


@router.post("/classify")
async def classify(body: ClassifyRequest, request: Request):
    # The same checks as the ReadyServices and CallerDep dependencies, called directly: FastAPI's
    # dependency solving cost ~250 us per request here (cProfile), CPU the forward pass shares.
    services = ready_services(request)
    caller = await authenticate(request, services)
    inputs = [_input(i) for i in body.inputs]
    version, results = await classify_inputs(
        request, services, caller, body.task, inputs, version=body.version, truncate=body.truncate,
        score_function=ScoreFunction.NONE if body.raw_scores else None, heads=EVERY_HEAD, span=span_options(body),
    )
    formatted = [format_any(version, value, text, body.raw_scores) for text, value in zip(inputs, results)]
    return FastJSONResponse({"task": body.task, "version": version.version, "results": formatted})


def span_options(fields: SpanFields) -> SpanOptions:
    return SpanOptions(fields.max_seq_len, fields.doc_stride, fields.max_answer_len, fields.allow_impossible)


def format_any(version: VersionRecord, value, text: Input, raw: bool = False) -> dict:
    """One input's result in the shape of its task's head."""
    if isinstance(value, TokenScores):
        return {"entities": entities(text, value.offsets, value.scores, version.labels)}
    if isinstance(value, SpanAnswer):
        return span_result(value)
    if isinstance(value, ChoiceScores):
        return {"choice": value.choice, "score": value.score, "scores": value.scores}
    return format_result(version, value, raw)


def span_result(answer: SpanAnswer) -> dict:
    return {"answer": answer.answer, "score": answer.score, "start": answer.start, "end": answer.end}


def format_result(version: VersionRecord, scores: list[float], raw: bool = False) -> dict:
    result: dict = {"scores": dict(zip(version.labels, scores))}
    if version.problem_type == "single_label_classification":
        top = top_label(scores)
        result["label"], result["score"] = version.labels[top], scores[top]
    elif version.problem_type == "multi_label_classification":
        result["labels"] = chosen_labels(version.labels, scores, raw)
    return result


def _input(value) -> Input:
    if isinstance(value, str):
        return value
    if isinstance(value, QuestionContext):
        return QuestionInput(value.question, value.context)
    if isinstance(value, TextChoices):
        return ChoiceInput(value.text, tuple(value.choices))
    return value.text if value.text_pair is None else (value.text, value.text_pair)
