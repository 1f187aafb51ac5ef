"""The Hugging Face Inference API (SPEC section 5): `POST /models/{task}` over the shared classify path
(server/api/inference.py), so that `huggingface_hub.InferenceClient(model="http://HOST:PORT/models/TASK",
token=KEY)` works unchanged for text classification and, on span tasks, question answering.

- text classification: `{"inputs": text | {"text", "text_pair"} | [either, ...], "parameters": {"top_k",
  "function_to_apply"}}`; the answer is one list of `{"label", "score"}` per input, highest score first
  (all labels unless `top_k`), inside an outer list even for one input, as that API answers.
  `function_to_apply` (`softmax`, `sigmoid`, `none`) replaces the task's own.
- question answering (a span task, SPEC 2d): `{"inputs": {"question", "context"} | [...], "parameters":
  {"max_seq_len", "doc_stride", "max_answer_len", "handle_impossible_answer", "top_k": 1,
  "align_to_words": true, "max_question_len"}}`; the answer is `{"answer", "score", "start", "end"}`
  (a list of them for a list of inputs). `max_question_len` is the pipeline's for slow tokenizers only
  (a fast tokenizer never cuts the question), so it is accepted and has no effect; one answer per
  question and word-aligned answers are what the server gives, so other `top_k` and `align_to_words`
  values are refused with 422.
Errors are that API's `{"error": "<message>"}`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field, StrictStr

from server.api.deps import authenticate, ready_services
from server.api.errors import ApiError, protocol_route
from server.api.inference import classify_inputs, ranked
from server.api.responses import FastJSONResponse
from server.api.routes.classify import span_result
from server.api.schemas import NAME_PATTERN, QuestionContext, TextPair
from server.artifact import HeadKind
from server.batching import QuestionInput, SpanOptions
from server.engine import ScoreFunction

router = APIRouter(route_class=protocol_route(lambda code, message: {"error": message}))
FUNCTIONS = {"softmax": ScoreFunction.SOFTMAX, "sigmoid": ScoreFunction.SIGMOID, "none": ScoreFunction.NONE}
SPAN_ONLY = frozenset({HeadKind.SPAN})


class Parameters(BaseModel):
    top_k: int | None = Field(None, ge=1)
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None
    # question answering
    max_seq_len: int | None = Field(None, ge=8)
    doc_stride: int | None = Field(None, ge=0)
    max_answer_len: int | None = Field(None, ge=1)
    handle_impossible_answer: bool | None = None
    align_to_words: bool | None = None
    max_question_len: int | None = Field(None, ge=1)


class InferenceRequest(BaseModel):
    inputs: StrictStr | TextPair | QuestionContext | list[StrictStr | TextPair | QuestionContext]
    parameters: Parameters = Field(default_factory=Parameters)


@router.post("/models/{task}")
async def inference(task: Annotated[str, Path(pattern=NAME_PATTERN)], body: InferenceRequest, request: Request):
    services = ready_services(request)
    caller = await authenticate(request, services)
    items = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    if any(isinstance(i, QuestionContext) for i in items):
        answers = await _question_answering(request, services, caller, task, items, body.parameters)
        return FastJSONResponse(answers if isinstance(body.inputs, list) else answers[0])
    inputs = [i if isinstance(i, str) else (i.text if i.text_pair is None else (i.text, i.text_pair)) for i in items]
    function = body.parameters.function_to_apply
    version, scores = await classify_inputs(
        request, services, caller, task, inputs, score_function=FUNCTIONS[function] if function else None
    )
    return FastJSONResponse([ranked(version.labels, row, body.parameters.top_k) for row in scores])


async def _question_answering(request, services, caller, task: str, items: list, parameters: Parameters) -> list[dict]:
    if not all(isinstance(i, QuestionContext) for i in items):
        raise ApiError(422, 'inputs: expected every input as {"question", "context"} for question answering, got a mix')
    if parameters.top_k not in (None, 1):
        raise ApiError(422, f"parameters.top_k: expected 1 (one answer per question), got {parameters.top_k}")
    if parameters.align_to_words is False:
        raise ApiError(422, "parameters.align_to_words: expected true (answers are whole words), got false")
    options = SpanOptions(
        parameters.max_seq_len, parameters.doc_stride, parameters.max_answer_len or 15, bool(parameters.handle_impossible_answer)
    )
    _, answers = await classify_inputs(
        request, services, caller, task, [QuestionInput(i.question, i.context) for i in items], heads=SPAN_ONLY, span=options
    )
    return [span_result(answer) for answer in answers]
